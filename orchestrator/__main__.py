"""``python -m orchestrator``: the ``orch`` command line."""

from orchestrator.cli import run

run()
