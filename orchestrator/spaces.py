"""Search spaces: a small YAML language compiled to Ray Tune domains.

A space maps each knob (a hyperparameter of ``train:`` or of the model) to one distribution::

    lr:         {loguniform: [1.0e-4, 1.0e-1]}
    beta1:      {log1m: [0.8, 0.999]}      # 1 - beta sampled log-uniformly
    batch_size: {pow2: [16, 256]}
    hidden:     {int: [32, 512], log: true}
    dropout:    {uniform: [0.0, 0.5]}
    activation: {choice: [relu, gelu]}
    layers:     {fixed: 2}

A knob may also carry ``tier`` (A-D) and ``default``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ray import tune
from ray.tune.search import sample

from orchestrator.errors import ConfigError

DISTRIBUTIONS = ("loguniform", "uniform", "int", "pow2", "choice", "fixed", "log1m")
KNOB_KEYS = (*DISTRIBUTIONS, "log", "tier", "default")
TIERS = ("A", "B", "C", "D")


class _Log1mSampler(sample.BaseSampler):
    """Samples beta with ``1 - beta`` log-uniform in ``[1 - upper, 1 - lower]``."""

    def sample(self, domain, config=None, size=1, random_state=None):
        if not isinstance(random_state, sample._BackwardsCompatibleNumpyRng):
            random_state = sample._BackwardsCompatibleNumpyRng(random_state)
        lo, hi = math.log(1 - domain.upper), math.log(1 - domain.lower)
        items = 1.0 - np.exp(random_state.uniform(lo, hi, size=size))
        return items if len(items) > 1 else domain.cast(items[0])

    def __str__(self) -> str:
        return "Log1m"


def log1m(lower: float, upper: float) -> sample.Float:
    """A float domain on (0, 1) whose ``1 - value`` is log-uniform."""
    domain = sample.Float(lower, upper)
    domain.set_sampler(_Log1mSampler())
    return domain


# Fields of ``train:`` that describe how a trial runs, not what it learns: never searched or stored.
RUNTIME_FIELDS = ("checkpoint_every", "threads")


def hyperparameter_names(cfg) -> dict[str, str]:
    """Every tunable name -> the config section that holds it ("train" or "model")."""
    from models import registry

    names = {f.name: "train" for f in dataclasses.fields(cfg.train) if f.name not in RUNTIME_FIELDS}
    for k in registry.hyperparameters(cfg.model["name"]):
        names[k] = "model"
    return names


def base_hyperparameters(cfg) -> dict[str, Any]:
    """The values every trial starts from: model defaults, the model section, the train section."""
    from models import registry

    hp: dict[str, Any] = dict(registry.hyperparameters(cfg.model["name"]))
    hp.update({k: v for k, v in cfg.model.items() if k != "name"})
    hp.update({k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in RUNTIME_FIELDS})
    return hp


def load_space(cfg) -> dict[str, Any]:
    """The raw space of a config: inline mapping, a YAML file, or nothing."""
    spec = cfg.search_space
    if spec is None:
        return {}
    if isinstance(spec, str):
        from orchestrator.config import resolve_path

        path = resolve_path(cfg, spec)
        if not path.is_file():
            raise ConfigError(f"search_space: file not found (got {spec!r})")
        try:
            spec = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"search_space: invalid YAML in {spec}: {str(err).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"search_space: expected a mapping of knobs or a file path (got {spec!r})")
    return spec


def _pair(key: str, dist: str, value: Any) -> tuple[float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ConfigError(f"{key}.{dist}: expected [low, high] numbers (got {value!r})")
    lo, hi = float(value[0]), float(value[1])
    if lo >= hi:
        raise ConfigError(f"{key}.{dist}: low must be below high (got {list(value)!r})")
    return lo, hi


def compile_knob(key: str, spec: Any) -> Any:
    """One knob spec -> a Ray Tune domain (or a plain value for ``fixed``)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{key}: expected a mapping such as {{loguniform: [1e-4, 1e-1]}} (got {spec!r})")
    from orchestrator.config import did_you_mean

    for k in spec:
        if k not in KNOB_KEYS:
            raise ConfigError(f"{key}: unknown distribution '{k}'{did_you_mean(str(k), KNOB_KEYS)}; valid: {', '.join(DISTRIBUTIONS)}")
    dists = [k for k in spec if k in DISTRIBUTIONS]
    if len(dists) != 1:
        raise ConfigError(f"{key}: give exactly one distribution of {', '.join(DISTRIBUTIONS)} (got {list(spec)!r})")
    if "tier" in spec and spec["tier"] not in TIERS:
        raise ConfigError(f"{key}.tier: must be one of {', '.join(TIERS)} (got {spec['tier']!r})")
    dist = dists[0]
    value = spec[dist]
    if dist == "fixed":
        return value
    if dist == "choice":
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{key}.choice: expected a non-empty list (got {value!r})")
        return tune.choice(value)
    lo, hi = _pair(key, dist, value)
    if dist == "uniform":
        return tune.uniform(lo, hi)
    if dist == "loguniform":
        if lo <= 0:
            raise ConfigError(f"{key}.loguniform: bounds must be positive on a log scale (got {value!r})")
        return tune.loguniform(lo, hi)
    if dist == "log1m":
        if not (0 < lo < 1 and 0 < hi < 1):
            raise ConfigError(f"{key}.log1m: bounds must lie in (0, 1) (got {value!r})")
        return log1m(lo, hi)
    if dist == "int":
        if lo != int(lo) or hi != int(hi):
            raise ConfigError(f"{key}.int: bounds must be integers (got {value!r})")
        if spec.get("log"):
            if lo <= 0:
                raise ConfigError(f"{key}.int: bounds must be positive with log: true (got {value!r})")
            return tune.lograndint(int(lo), int(hi) + 1)
        return tune.randint(int(lo), int(hi) + 1)
    # pow2
    if lo <= 0 or not float(lo).is_integer() or not float(hi).is_integer():
        raise ConfigError(f"{key}.pow2: bounds must be positive integers (got {value!r})")
    powers = [2**e for e in range(0, 31) if lo <= 2**e <= hi]
    if not powers:
        raise ConfigError(f"{key}.pow2: no power of two lies in {value!r}")
    return tune.choice(powers)


def compile_space(cfg) -> dict[str, Any]:
    """The config's search space as a Ray Tune ``param_space`` (knob -> domain or fixed value)."""
    from orchestrator.config import did_you_mean

    raw = load_space(cfg)
    names = hyperparameter_names(cfg)
    space: dict[str, Any] = {}
    for knob, spec in raw.items():
        key = f"search_space.{knob}"
        if knob not in names:
            raise ConfigError(
                f"{key}: not a hyperparameter{did_you_mean(str(knob), list(names))}; "
                f"valid: {', '.join(sorted(names))}"
            )
        space[knob] = compile_knob(key, spec)
    return space


def check_points(cfg, space: dict[str, Any]) -> list[dict[str, Any]]:
    """``search.points_to_evaluate``, checked against the space: each a mapping of sampled knobs."""
    points = cfg.search.points_to_evaluate
    if points is None:
        return []
    if not isinstance(points, list):
        raise ConfigError(f"search.points_to_evaluate: expected a list of mappings (got {points!r})")
    sampled = [k for k, v in space.items() if isinstance(v, sample.Domain)]
    from orchestrator.config import did_you_mean

    for i, point in enumerate(points):
        key = f"search.points_to_evaluate[{i}]"
        if not isinstance(point, dict):
            raise ConfigError(f"{key}: expected a mapping of knob -> value (got {point!r})")
        for knob in point:
            if knob not in sampled:
                raise ConfigError(f"{key}.{knob}: not a sampled knob{did_you_mean(str(knob), sampled)}; "
                                  f"sampled: {', '.join(sampled) or '(none)'}")
    return [dict(p) for p in points]


def _arrow_type(annotation: Any, default: Any):
    import pyarrow as pa

    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    for word, typ in (("bool", pa.bool_()), ("float", pa.float64()), ("int", pa.int64()), ("str", pa.string())):
        if word in text:
            return typ
    if isinstance(default, bool):
        return pa.bool_()
    if isinstance(default, (int, float)):
        return pa.float64() if isinstance(default, float) else pa.int64()
    return None


def hyperparameter_types(cfg) -> dict[str, Any]:
    """Store column -> Arrow type for every ``config.<name>`` column (stable across sweeps)."""
    import inspect

    from models import registry

    types: dict[str, Any] = {}
    for f in dataclasses.fields(cfg.train):
        if f.name in RUNTIME_FIELDS:
            continue
        types[f"config.{f.name}"] = _arrow_type(f.type, f.default)
    params = list(inspect.signature(registry.get(cfg.model["name"])).parameters.values())[2:]
    for p in params:
        types[f"config.{p.name}"] = _arrow_type(p.annotation, p.default)
    return {k: v for k, v in types.items() if v is not None}
