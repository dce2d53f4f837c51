"""Search spaces: a small YAML language for where a sweep samples.

A space maps each knob (a hyperparameter of ``train:`` or of the model) to one distribution::

    lr:         {loguniform: [1.0e-4, 1.0e-1], tier: A}
    momentum:   {log1m: [0.5, 0.99], tier: B, when: {optimizer: sgd}}   # 1 - momentum log-uniform
    batch_size: {pow2: [16, 256], tier: B}                               # 16, 32, ..., 256
    hidden:     {int: [32, 512], log: true, tier: B}
    dropout:    {uniform: [0.0, 0.5], tier: C, default: 0.0}
    optimizer:  {choice: [sgd, adam], tier: A}
    layers:     {fixed: 2}

Each numeric knob has a *scale* on which it is sampled uniformly and on which coarse-to-fine
zooming measures distances: ``log`` (loguniform, ``int`` with ``log: true``, ``pow2``), ``log1m``
(``log(1 - beta)``: 0.9, 0.99 and 0.999 are evenly spaced) or ``linear``.

``tier`` (A most important .. D rarely tuned) lets ``search.tiers: [A, B]`` tune only some knobs
and hold the others at their ``default`` (or, without one, at the config's value). ``when`` makes
a knob exist only when other knobs have given values, so no trial carries a knob it ignores.

This module has no Ray import: spaces are sampled by orch's own searcher (``searchers.py``), and
translated for Optuna there.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from orchestrator.errors import ConfigError
from orchestrator.names import shown

DISTRIBUTIONS = ("loguniform", "uniform", "int", "pow2", "choice", "fixed", "log1m")
KNOB_KEYS = (*DISTRIBUTIONS, "log", "tier", "default", "when")
TIERS = ("A", "B", "C", "D")
NUMERIC = ("loguniform", "uniform", "int", "pow2", "log1m")
GRID_MAX_INT_VALUES = 64  # an ``int`` knob with more values than this is not a grid axis

# Fields of ``train:`` that describe how a trial runs, not what it learns: never searched or stored.
RUNTIME_FIELDS = ("checkpoint_every", "keep_checkpoints", "threads")


# -- knobs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knob:
    """One searched hyperparameter: a distribution, its tier, default and condition."""

    name: str
    dist: str
    low: float | None = None  # numeric knobs: bounds of the value (inclusive)
    high: float | None = None
    values: tuple = ()  # choice: the options; fixed: (value,)
    log: bool = False  # int: sampled on a log scale
    tier: str | None = None
    default: Any = None
    has_default: bool = False
    when: tuple[tuple[str, tuple], ...] = ()  # ((parent, allowed values), ...)

    @property
    def numeric(self) -> bool:
        return self.dist in NUMERIC

    @property
    def scale(self) -> str | None:
        """The scale a numeric knob is sampled uniformly on: log, log1m or linear."""
        if self.dist in ("loguniform", "pow2") or (self.dist == "int" and self.log):
            return "log"
        if self.dist == "log1m":
            return "log1m"
        return "linear" if self.numeric else None

    # The knob's scale as a map from values to a line, and back.
    def forward(self, value: float) -> float:
        if self.scale == "log":
            return math.log(value)
        if self.scale == "log1m":
            return math.log(1.0 - value)
        return float(value)

    def inverse(self, u: float) -> float:
        if self.scale == "log":
            return math.exp(u)
        if self.scale == "log1m":
            return 1.0 - math.exp(u)
        return u

    def interval(self) -> tuple[float, float]:
        """The knob's range on its own scale, low end first."""
        a, b = self.forward(self.low), self.forward(self.high)
        return (a, b) if a <= b else (b, a)

    def powers(self) -> list[int]:
        return [2**e for e in range(0, 63) if self.low <= 2**e <= self.high]

    def sample(self, rng: np.random.Generator) -> Any:
        if self.dist == "fixed":
            return self.values[0]
        if self.dist == "choice":
            return self.values[int(rng.integers(len(self.values)))]
        if self.dist == "pow2":
            powers = self.powers()
            return powers[int(rng.integers(len(powers)))]
        if self.dist == "int":
            lo, hi = int(self.low), int(self.high)
            if not self.log:
                return int(rng.integers(lo, hi + 1))
            # Log-uniform over [lo, hi + 1), floored: each integer gets the share of its interval.
            return min(hi, int(math.floor(math.exp(rng.uniform(math.log(lo), math.log(hi + 1))))))
        a, b = self.interval()
        return float(self.inverse(rng.uniform(a, b)))

    def middle(self) -> Any:
        """The middle of the knob's range on its own scale (the first choice; the nearest power
        of two or integer)."""
        if not self.numeric:
            return self.values[0]
        a, b = self.interval()
        mid = self.inverse((a + b) / 2.0)
        if self.dist == "pow2":
            return min(self.powers(), key=lambda p: abs(math.log(p) - math.log(mid)))
        if self.dist == "int":
            return int(round(mid))
        return float(mid)

    def contains(self, value: Any) -> bool:
        if self.dist in ("fixed", "choice"):
            return any(same(value, v) for v in self.values)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.dist == "pow2":
            return float(value) in {float(p) for p in self.powers()}
        if self.dist == "int" and float(value) != int(value):
            return False
        return self.low <= value <= self.high

    def grid_values(self) -> list[Any] | None:
        """Every value of a discrete knob, or None for a continuous one."""
        if self.dist in ("fixed", "choice"):
            return list(self.values)
        if self.dist == "pow2":
            return self.powers()
        if self.dist == "int" and self.high - self.low + 1 <= GRID_MAX_INT_VALUES:
            return list(range(int(self.low), int(self.high) + 1))
        return None

    def describe(self) -> str:
        if self.dist == "fixed":
            return f"{self.values[0]!r}"
        if self.dist == "choice":
            return "{" + ", ".join(str(v) for v in self.values) + "}"
        lo, hi = (int(self.low), int(self.high)) if self.dist in ("int", "pow2") else (self.low, self.high)
        scale = {"linear": "", "log": " (log)", "log1m": " (log 1-x)"}[self.scale]
        return f"{_short(lo)}..{_short(hi)}" + (" (powers of 2)" if self.dist == "pow2" else scale)

    def spec(self) -> dict[str, Any]:
        """The knob as a search-space entry (what :func:`parse_knob` reads back)."""
        if self.dist in ("fixed", "choice"):
            out: dict[str, Any] = {self.dist: self.values[0] if self.dist == "fixed" else list(self.values)}
        else:
            out = {self.dist: self.bounds()}
            if self.dist == "int" and self.log:
                out["log"] = True
        if self.tier is not None:
            out["tier"] = self.tier
        if self.has_default and self.contains(self.default):
            out["default"] = self.default
        if self.when:
            out["when"] = {parent: list(allowed) for parent, allowed in self.when}
        return out

    def bounds(self) -> list[Any]:
        """The knob's range as stored (for the sweeps table): [low, high] or the choices."""
        if self.numeric:
            return [int(self.low), int(self.high)] if self.dist in ("int", "pow2") else [self.low, self.high]
        return list(self.values)


def same(a: Any, b: Any) -> bool:
    """Equal, with booleans kept apart from 0 and 1 (``choice: [false, true]`` is not ``[0, 1]``)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _pair(key: str, dist: str, value: Any) -> tuple[float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ConfigError(f"{key}.{dist}: expected [low, high] numbers (got {value!r})")
    lo, hi = float(value[0]), float(value[1])
    if lo >= hi:
        raise ConfigError(f"{key}.{dist}: low must be below high (got {list(value)!r})")
    return lo, hi


def parse_knob(name: str, spec: Any, key: str | None = None) -> Knob:
    """One knob spec (a mapping) -> a checked ``Knob``. Errors name ``key`` (default: the name)."""
    from orchestrator.config import did_you_mean

    key = key or name
    if not isinstance(spec, dict):
        raise ConfigError(f"{key}: expected a mapping such as {{loguniform: [1e-4, 1e-1]}} (got {spec!r})")
    for k in spec:
        if k not in KNOB_KEYS:
            raise ConfigError(f"{key}: unknown distribution '{k}'{did_you_mean(str(k), KNOB_KEYS)}; "
                              f"valid: {', '.join(DISTRIBUTIONS)}")
    dists = [k for k in spec if k in DISTRIBUTIONS]
    if len(dists) != 1:
        raise ConfigError(f"{key}: give exactly one distribution of {', '.join(DISTRIBUTIONS)} (got {list(spec)!r})")
    tier = spec.get("tier")
    if tier is not None and tier not in TIERS:
        raise ConfigError(f"{key}.tier: must be one of {', '.join(TIERS)} (got {tier!r})")
    if "log" in spec and (dists[0] != "int" or not isinstance(spec["log"], bool)):
        raise ConfigError(f"{key}.log: only int knobs take log: true|false (got {spec['log']!r} on {dists[0]})")
    when = _parse_when(key, spec.get("when"))
    common = dict(name=name, tier=tier, when=when, default=spec.get("default"), has_default="default" in spec)
    dist = dists[0]
    value = spec[dist]
    if dist == "fixed":
        knob = Knob(dist=dist, values=(value,), **common)
    elif dist == "choice":
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{key}.choice: expected a non-empty list (got {value!r})")
        knob = Knob(dist=dist, values=tuple(value), **common)
    else:
        lo, hi = _pair(key, dist, value)
        if dist == "loguniform" and lo <= 0:
            raise ConfigError(f"{key}.loguniform: bounds must be positive on a log scale (got {value!r})")
        if dist == "log1m" and not (0 < lo < 1 and 0 < hi < 1):
            raise ConfigError(f"{key}.log1m: bounds must lie in (0, 1) (got {value!r})")
        if dist in ("int", "pow2") and not (lo.is_integer() and hi.is_integer()):
            raise ConfigError(f"{key}.{dist}: bounds must be integers (got {value!r})")
        if dist == "int" and spec.get("log") and lo <= 0:
            raise ConfigError(f"{key}.int: bounds must be positive with log: true (got {value!r})")
        if dist == "pow2" and lo <= 0:
            raise ConfigError(f"{key}.pow2: bounds must be positive integers (got {value!r})")
        if dist == "pow2" and not all(_is_power_of_two(int(v)) for v in (lo, hi)):
            inner = [2 ** k for k in range(int(lo - 1).bit_length(), int(hi).bit_length())]
            hint = f"; the powers of two inside are {inner[0]}..{inner[-1]}: write [{inner[0]}, {inner[-1]}]" \
                if inner else ""
            raise ConfigError(f"{key}.pow2: bounds must be powers of two (got {value!r}){hint}")
        knob = Knob(dist=dist, low=lo, high=hi, log=bool(spec.get("log", False)), **common)
    if knob.has_default and not knob.contains(knob.default):
        raise ConfigError(f"{key}.default: {knob.default!r} is outside the knob's range {knob.describe()}")
    return knob


def _parse_when(key: str, when: Any) -> tuple[tuple[str, tuple], ...]:
    if when is None:
        return ()
    if not isinstance(when, dict) or not when:
        raise ConfigError(f"{key}.when: expected a mapping of knob -> value(s), e.g. {{optimizer: sgd}} (got {when!r})")
    out = []
    for parent, allowed in when.items():
        allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if not allowed:
            raise ConfigError(f"{key}.when.{parent}: expected a value or a non-empty list (got [])")
        out.append((str(parent), allowed))
    return tuple(out)


# -- spaces --------------------------------------------------------------------------------------


@dataclass
class Space:
    """Knobs in sampling order (a knob after the knobs its ``when`` names) and the base values."""

    knobs: dict[str, Knob]
    base: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.knobs)

    def __iter__(self):
        return iter(self.knobs)

    @property
    def searched(self) -> list[str]:
        """Knobs that take more than one value."""
        return [k for k, kb in self.knobs.items() if kb.dist != "fixed"]

    def active(self, knob: Knob, config: dict[str, Any], partial: bool = False) -> bool:
        """Whether ``knob`` exists in a trial whose knobs so far are ``config``.

        A fixed parent has its value; a parent that is not a knob, the config's value. With
        ``partial`` (a point given by hand, naming only some knobs), a searched parent that the
        point does not name may still take an allowed value: the knob is kept.
        """
        for parent, allowed in knob.when:
            p = self.knobs.get(parent)
            if p is None:
                value = self.base.get(parent)
            elif p.dist == "fixed" and parent not in config:
                value = p.values[0] if self.active(p, config, partial) else None
            elif parent in config:
                value = config[parent]
            else:  # the parent is inactive, or not named by a partial point
                if partial and self.active(p, config, partial):
                    continue
                return False
            if not any(same(value, a) for a in allowed):
                return False
        return True

    def sample(self, rng: np.random.Generator, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """One trial's knobs: the ``given`` values, the rest sampled; inactive knobs left out."""
        given = given or {}
        config: dict[str, Any] = {}
        for name, knob in self.knobs.items():
            if not self.active(knob, config):
                continue
            config[name] = given[name] if name in given else knob.sample(rng)
        return config

    def typical(self) -> dict[str, Any]:
        """One representative trial (for checks before a sweep): each knob's ``default``, else the
        config's own value when the knob can take it, else the middle of its range."""
        config: dict[str, Any] = {}
        for name, knob in self.knobs.items():
            if not self.active(knob, config):
                continue
            if knob.has_default:
                config[name] = knob.default
            elif name in self.base and knob.contains(self.base[name]):
                config[name] = self.base[name]
            else:
                config[name] = knob.middle()
        return config

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the knobs' values (inactive knobs left out)."""
        configs: list[dict[str, Any]] = [{}]
        for name, knob in self.knobs.items():
            values = knob.grid_values()
            nxt = []
            for config in configs:
                if self.active(knob, config):
                    nxt.extend({**config, name: v} for v in values)
                else:
                    nxt.append(config)
            configs = nxt
        return configs

    def complete(self, config: dict[str, Any]) -> dict[str, Any]:
        """A point given by hand without the knobs its conditions rule out."""
        out: dict[str, Any] = {}
        for name, knob in self.knobs.items():
            if name in config and self.active(knob, out, partial=True):
                out[name] = config[name]
        return out

    def possible(self) -> Space:
        """Without the knobs whose condition can never hold (momentum when the optimizer is held at
        adam, by a tier or by the config): they would be searched in name only."""
        knobs: dict[str, Knob] = {}
        for name, knob in self.knobs.items():  # parents come first
            ok = True
            for parent, allowed in knob.when:
                p = knobs.get(parent)
                if parent in self.knobs and p is None:
                    ok = False  # its parent can never exist
                elif p is None:
                    ok = any(same(self.base.get(parent), a) for a in allowed)
                else:
                    ok = any(p.contains(a) for a in allowed)
                if not ok:
                    break
            if ok:
                knobs[name] = knob
        return Space(knobs, self.base)

    def ranges(self) -> dict[str, list[Any]]:
        return {name: knob.bounds() for name, knob in self.knobs.items() if knob.dist != "fixed"}

    def describe(self) -> str:
        return ", ".join(f"{n} {k.describe()}" for n, k in self.knobs.items() if k.dist != "fixed")

    def zoom(self, top: list[dict[str, Any]], margin: float) -> Space:
        """Narrow each numeric knob to the range the ``top`` configs span, on the knob's own scale.

        The range is widened on both sides by ``margin`` times the knob's full width (so a knob
        where the top trials agree still keeps some room) and clipped to the original bounds.
        Integers and powers of two are rounded outwards. Choices keep all their options.
        """
        knobs = {}
        for name, knob in self.knobs.items():
            seen = [c[name] for c in top if name in c and knob.contains(c[name])]
            if not knob.numeric or not seen:
                knobs[name] = knob
                continue
            a, b = knob.interval()
            us = [knob.forward(v) for v in seen]
            pad = margin * (b - a)
            lo_u, hi_u = max(a, min(us) - pad), min(b, max(us) + pad)
            lo, hi = sorted((knob.inverse(lo_u), knob.inverse(hi_u)))
            lo, hi = max(lo, knob.low), min(hi, knob.high)
            if knob.dist == "int":
                lo, hi = math.floor(lo + 1e-9), math.ceil(hi - 1e-9)
            elif knob.dist == "pow2":
                powers = knob.powers()
                lo = max(2 ** math.floor(math.log2(lo) + 1e-9), powers[0])
                hi = min(2 ** math.ceil(math.log2(hi) - 1e-9), powers[-1])
            knobs[name] = dataclasses.replace(knob, low=float(lo), high=float(hi))
        return Space(knobs, self.base)


def _ordered(knobs: dict[str, Knob]) -> dict[str, Knob]:
    """Knobs with every ``when`` parent before its children; a cycle is an error."""
    out: dict[str, Knob] = {}
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in out or name not in knobs:
            return
        if name in visiting:
            raise ConfigError(f"search_space.{name}.when: conditions form a cycle through '{name}'")
        visiting.add(name)
        for parent, _ in knobs[name].when:
            visit(parent)
        visiting.discard(name)
        out[name] = knobs[name]

    for name in knobs:
        visit(name)
    return out


# -- from a config -------------------------------------------------------------------------------


def hyperparameter_names(cfg) -> dict[str, str]:
    """Every tunable name -> the config section that holds it ("train", "model" or "data")."""
    from models import registry
    from orchestrator.config import DATA_HYPERPARAMETERS

    names = {f.name: "train" for f in dataclasses.fields(cfg.train) if f.name not in RUNTIME_FIELDS}
    names.update({k: "data" for k in DATA_HYPERPARAMETERS})
    for k in registry.hyperparameters(cfg.model["name"]):
        names[k] = "model"
    return names


def base_hyperparameters(cfg) -> dict[str, Any]:
    """The values every trial starts from: model defaults, the model section, the train section."""
    from models import registry

    hp: dict[str, Any] = dict(registry.hyperparameters(cfg.model["name"]))
    hp.update({k: v for k, v in cfg.model.items() if k != "name"})
    hp.update({k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in RUNTIME_FIELDS})
    from orchestrator.config import DATA_HYPERPARAMETERS

    hp.update({k: getattr(cfg.data, k) for k in DATA_HYPERPARAMETERS})
    return hp


def load_space(cfg) -> dict[str, Any]:
    """The raw space of a config: inline mapping, a YAML file, or nothing."""
    spec = cfg.search_space
    if spec is None:
        return {}
    if isinstance(spec, str):
        from orchestrator.config import resolve_path

        path = resolve_path(cfg, spec)
        if path.is_dir():
            raise ConfigError(f"search_space: {shown(spec)} is a directory; name a YAML file")
        if not path.is_file():
            raise ConfigError(f"search_space: file not found (got {shown(spec)})")
        # Errors name the file and the line, never its contents (it may be any file the user can read).
        try:
            text = Path(path).read_text()
            spec = yaml.safe_load(text) or {}
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"search_space: cannot read {path}: {getattr(err, 'strerror', None) or type(err).__name__}") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"search_space: {path}:{where} is not valid YAML") from None
        if not isinstance(spec, dict):
            raise ConfigError(f"search_space: {path} holds a {type(spec).__name__}, not a mapping of knobs "
                              "(knob: {distribution: ...})")
    if not isinstance(spec, dict):
        raise ConfigError(f"search_space: expected a mapping of knobs or a file path (got {shown(spec)})")
    return spec


def full_space(cfg) -> Space:
    """Every knob of the config's space, checked (no tier selection)."""
    from orchestrator.config import check_hyperparameter, did_you_mean

    raw = load_space(cfg)
    names = hyperparameter_names(cfg)
    knobs: dict[str, Knob] = {}
    for name, spec in raw.items():
        key = f"search_space.{name}"
        if name not in names:
            raise ConfigError(f"{key}: not a hyperparameter{did_you_mean(str(name), list(names))}; "
                              f"valid: {', '.join(sorted(names))}")
        knob = knobs[name] = parse_knob(name, spec, key)
        probes = list(knob.values) if not knob.numeric else [knob.low, knob.high]
        if knob.dist in ("int", "pow2"):
            probes = [int(v) for v in probes]
        for value in probes + ([knob.default] if knob.has_default else []):
            check_hyperparameter(f"{key}.{knob.dist}", name, value, cfg.model["name"])
    for name, knob in knobs.items():
        for parent, allowed in knob.when:
            key = f"search_space.{name}.when.{parent}"
            if parent == name:
                raise ConfigError(f"{key}: a knob cannot depend on itself")
            if parent not in knobs and parent not in names:
                pool = sorted(set(knobs) | set(names))
                raise ConfigError(f"{key}: no knob or hyperparameter '{parent}'{did_you_mean(parent, pool)}")
            if parent in knobs:
                bad = [v for v in allowed if not knobs[parent].contains(v)]
                if bad:
                    raise ConfigError(f"{key}: {bad[0]!r} is not a value of {parent} {knobs[parent].describe()}")
    return Space(_ordered(knobs), base_hyperparameters(cfg))


def compile_space(cfg) -> Space:
    """The space a sweep samples: the config's knobs, with ``search.tiers`` applied.

    A knob whose tier is not selected is held at its ``default`` (a fixed knob), or, without one,
    dropped so that the config's own value applies. Knobs without a tier are always tuned.
    """
    space = full_space(cfg)
    tiers = cfg.search.tiers
    if not tiers:
        return space.possible()
    knobs = {}
    for name, knob in space.knobs.items():
        if knob.tier is None or knob.tier in tiers or knob.dist == "fixed":
            knobs[name] = knob
        elif knob.has_default:
            knobs[name] = dataclasses.replace(knob, dist="fixed", values=(knob.default,), low=None, high=None)
    # A knob conditioned on a dropped knob now depends on the config's value of it.
    return Space(knobs, space.base).possible()


def check_points(cfg, space: Space) -> list[dict[str, Any]]:
    """``search.points_to_evaluate``, checked against the space: each a mapping of knob -> value.

    A point may name any subset of the searched knobs; the rest are sampled. A value may lie
    outside its knob's range (a known good config from an older, wider space), but must be a valid
    value of the hyperparameter.
    """
    from orchestrator.config import check_hyperparameter, did_you_mean

    points = cfg.search.points_to_evaluate
    if points is None:
        return []
    if not isinstance(points, list):
        raise ConfigError(f"search.points_to_evaluate: expected a list of mappings (got {points!r})")
    sampled = space.searched
    for i, point in enumerate(points):
        key = f"search.points_to_evaluate[{i}]"
        if not isinstance(point, dict):
            raise ConfigError(f"{key}: expected a mapping of knob -> value (got {point!r})")
        for name, value in point.items():
            if name not in sampled:
                raise ConfigError(f"{key}.{name}: not a sampled knob{did_you_mean(str(name), sampled)}; "
                                  f"sampled: {', '.join(sampled) or '(none)'}")
            check_hyperparameter(f"{key}.{name}", name, value, cfg.model["name"])
    return [dict(p) for p in points]


@dataclass
class SearchPlan:
    """What a sweep samples: the space, the points to try first, and how many trials it runs."""

    space: Space
    points: list[dict[str, Any]]
    n_trials: int


def check_search(cfg) -> SearchPlan:
    """The sweep's space, points and trial count, with every search setting checked against them."""
    space = compile_space(cfg)
    points = check_points(cfg, space)
    q = cfg.search
    if q.algorithm == "grid":
        continuous = [n for n, k in space.knobs.items() if k.grid_values() is None]
        if continuous:
            k = space.knobs[continuous[0]]
            raise ConfigError(f"search.algorithm: grid needs discrete knobs (choice, pow2, fixed, int with "
                              f"at most {GRID_MAX_INT_VALUES} values); search_space.{k.name} is {k.dist} {k.describe()}")
    if q.algorithm == "tpe":
        for name, knob in space.knobs.items():
            if knob.dist == "choice" and any(isinstance(v, (list, tuple, dict)) for v in knob.values):
                raise ConfigError(f"search_space.{name}.choice: tpe takes choices that are numbers, strings or "
                                  f"booleans, not lists (got {list(knob.values)!r}); use search.algorithm: random")
        # Optuna can only start from values inside its distributions.
        for i, point in enumerate(points):
            for name, value in point.items():
                knob = space.knobs[name]
                if not knob.contains(value):
                    raise ConfigError(f"search.points_to_evaluate[{i}].{name}: tpe needs a value inside "
                                      f"the knob's range {knob.describe()} (got {value!r})")
    if q.stages > 1 and q.algorithm != "random":
        raise ConfigError(f"search.stages: coarse-to-fine stages work with the random searcher "
                          f"(got search.algorithm={q.algorithm!r} with stages={q.stages})")
    if q.stages > 1 and q.num_samples < 2 * q.stages:
        raise ConfigError(f"search.stages: {q.stages} stages need at least {2 * q.stages} samples "
                          f"(got search.num_samples={q.num_samples})")
    first = stage_sizes(q.num_samples, q.stages)[0]
    if q.algorithm != "grid" and len(points) > first:
        raise ConfigError(f"search.points_to_evaluate: {len(points)} points, but the "
                          f"{'first stage' if q.stages > 1 else 'sweep'} has only {first} trials")
    n_trials = len(space.grid()) + len(points) if q.algorithm == "grid" else q.num_samples
    return SearchPlan(space, points, n_trials)


def stage_sizes(num_samples: int, stages: int) -> list[int]:
    """Trials per stage: as even as possible, the first stages taking the remainder."""
    base, extra = divmod(num_samples, stages)
    return [base + (1 if i < extra else 0) for i in range(stages)]


def _arrow_type(annotation: Any, default: Any):
    import pyarrow as pa

    text = annotation if isinstance(annotation, str) else str(annotation)
    if "list" in text or "dict" in text:
        return pa.string()  # stored as JSON text
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
    for f in dataclasses.fields(cfg.data):
        if f.name in ("scale", "target_scale"):
            types[f"config.{f.name}"] = _arrow_type(f.type, f.default)
    params = list(inspect.signature(registry.get(cfg.model["name"])).parameters.values())[2:]
    for p in params:
        types[f"config.{p.name}"] = _arrow_type(p.annotation, p.default)
    return {k: v for k, v in types.items() if v is not None}


__all__ = ["Knob", "Space", "SearchPlan", "compile_space", "check_search", "check_points", "stage_sizes",
           "hyperparameter_names", "base_hyperparameters", "hyperparameter_types"]
