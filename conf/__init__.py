"""orch's example sweep configs (YAML), installed as the data package ``orchestrator.conf``."""
