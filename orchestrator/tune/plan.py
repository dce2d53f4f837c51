"""A sweep's config, checked across stages: config, data, model and search space together.

``load(path, overrides)`` is what every command that runs or checks a sweep calls: the config's
own checks (:func:`orchestrator.config.load.load`) and then those that need the search space
(knob names and values against the schema and the model, points to evaluate, the searcher's
needs). Importing this module imports neither torch nor Ray.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import load as config
from orchestrator.config.schema import SweepConfig
from orchestrator.space import space as spaces


def check(cfg: SweepConfig) -> spaces.SearchPlan:
    """Check ``cfg`` across stages; return its search plan (space, points, number of trials).

    Raises:
        ConfigError: naming the first bad key (a knob, a point, a search setting).
    """
    config.validate(cfg)
    return spaces.check_search(cfg)


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Load a sweep config (base configs, the file, ``key=value`` overrides) and check it whole.

    Raises:
        ConfigError: on any unknown key, wrong type, out-of-range value, missing file or a search
            space that does not fit the config.
    """
    return load_with_search(path, overrides)[0]


def load_with_search(path: str | Path, overrides: list[str] | tuple[str, ...] = ()
                     ) -> tuple[SweepConfig, spaces.SearchPlan]:
    """:func:`load`, and the search plan its check compiled (space, points, number of trials)."""
    cfg = config.load(path, overrides)
    return cfg, spaces.check_search(cfg)
