"""Search algorithms: a name -> factory table.

A factory takes the sweep config and ``points_to_evaluate`` (known good configs to try first)
and returns a Ray Tune ``Searcher`` or ``SearchAlgorithm``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.search import BasicVariantGenerator


def _random(cfg, points_to_evaluate: list[dict[str, Any]] | None = None):
    return BasicVariantGenerator(
        points_to_evaluate=points_to_evaluate or None,
        max_concurrent=cfg.search.max_concurrent or 0,
        random_state=cfg.search.seed,
    )


SEARCHERS: dict[str, Callable[..., Any]] = {
    "random": _random,
}


def names() -> list[str]:
    return list(SEARCHERS)


def create(cfg, points_to_evaluate: list[dict[str, Any]] | None = None):
    return SEARCHERS[cfg.search.algorithm](cfg, points_to_evaluate)
