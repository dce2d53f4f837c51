"""orch's search spaces (YAML), installed as the data package ``orchestrator.search_spaces``.

A config names one by file (``search_space: search_spaces/mlp_adam.yaml``) or by name (``search_space: mlp_adam``).
"""
