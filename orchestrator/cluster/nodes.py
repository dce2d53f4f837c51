"""``ray start`` for orch's nodes: the command the node scripts under ``deploy/`` run
(``python -m orchestrator.cluster.nodes ray-start ...``), with loopback addresses kept as given."""

from __future__ import annotations

import sys

from orchestrator.tune.connect import keep_loopback


def ray_start(argv: list[str]) -> None:
    """``ray start ARGV`` with loopback addresses kept as given (see the module's docstring).

    When the node stops (SIGTERM, Ctrl-C), the ``ray_current_cluster`` file it wrote goes with it
    if it still names its cluster: a later ``ray.init()`` on this machine would wait on a dead one.
    """
    keep_loopback()
    from ray.scripts.scripts import main as ray_main

    from orchestrator.tune import ray_adapter

    sys.argv = ["ray", "start", *argv]
    with ray_adapter.forgetting_address_file():
        ray_main()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "ray-start":
        sys.stderr.write("usage: python -m orchestrator.cluster.nodes ray-start [ray start arguments]\n")
        sys.exit(2)
    ray_start(argv[1:])


if __name__ == "__main__":
    main()
