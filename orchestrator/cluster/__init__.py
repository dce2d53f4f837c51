"""Ray clusters: ``ray start`` for orch's node scripts, and sweeps as Ray Jobs (``orch submit``,
``orch status``).
"""
