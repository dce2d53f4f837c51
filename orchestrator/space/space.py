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
(``log(1 - beta)``: 0.9, 0.99 and 0.999 are evenly spaced) or ``linear``. Each distribution is a
class of :mod:`orchestrator.space.distributions` that holds every rule depending on it; a ``Knob``
passes those questions to it.

``tier`` (A most important .. D rarely tuned) lets ``search.tiers: [A, B]`` tune only some knobs
and hold the others at their ``default`` (or, without one, at the config's value). ``when`` makes
a knob exist only when other knobs have given values, so no trial carries a knob it ignores.

This module has no Ray import: spaces are sampled by orch's own searcher (``searchers.py``), and
each distribution gives its own Optuna and Ray Tune forms.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.config import models, schema
from orchestrator.config.load import check_hyperparameter, did_you_mean, load_space
from orchestrator.config.schema import TIERS
from orchestrator.errors import ConfigError
from orchestrator.space.distributions import (
    BY_NAME,
    GRID_MAX_INT_VALUES,
    OPTIONS,
    Distribution,
    Fixed,
    Range,
    same,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from orchestrator.config.schema import SweepConfig

DISTRIBUTIONS = tuple(BY_NAME)  # the YAML keywords, in the order errors list them
KNOB_KEYS = (*DISTRIBUTIONS, *OPTIONS, "tier", "default", "when")
NUMERIC = tuple(name for name, cls in BY_NAME.items() if cls.numeric)


# -- knobs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knob:
    """One searched hyperparameter: a distribution, its tier, default and condition.

    Everything that depends on the kind of distribution is the distribution's
    (:mod:`orchestrator.space.distributions`); the knob adds its name, tier, default and
    ``when``, and passes the rest through.
    """

    name: str
    distribution: Distribution
    tier: str | None = None
    default: Any = None
    has_default: bool = False
    when: tuple[tuple[str, tuple], ...] = ()  # ((parent, allowed values), ...)

    @property
    def dist(self) -> str:
        """The distribution's YAML keyword (``loguniform``, ``choice``, ...)."""
        return self.distribution.name

    @property
    def low(self) -> float | None:
        """A numeric knob's lower bound (inclusive); None otherwise."""
        return getattr(self.distribution, "low", None)

    @property
    def high(self) -> float | None:
        """A numeric knob's upper bound (inclusive); None otherwise."""
        return getattr(self.distribution, "high", None)

    @property
    def values(self) -> tuple:
        """A choice's options, a fixed knob's ``(value,)``; ``()`` otherwise."""
        return getattr(self.distribution, "values", ())

    @property
    def log(self) -> bool:
        """Whether an ``int`` knob is sampled on a log scale."""
        return bool(getattr(self.distribution, "log", False))

    @property
    def numeric(self) -> bool:
        return self.distribution.numeric

    @property
    def scale(self) -> str | None:
        """The scale a numeric knob is sampled uniformly on: log, log1m or linear."""
        return self.distribution.scale

    # A numeric knob's scale as a map from values to a line, and back.
    def forward(self, value: float) -> float:
        return self._range.forward(value)

    def inverse(self, u: float) -> float:
        return self._range.inverse(u)

    def interval(self) -> tuple[float, float]:
        """The knob's range on its own scale, low end first."""
        return self._range.interval()

    @property
    def _range(self) -> Range:
        """The distribution of a numeric knob, the one kind with a scale."""
        assert isinstance(self.distribution, Range), f"knob {self.name} is not numeric"
        return self.distribution

    def sample(self, rng: np.random.Generator) -> Any:
        return self.distribution.sample(rng)

    def middle(self) -> Any:
        """The middle of the knob's range on its own scale (the first choice; the nearest power
        of two or integer)."""
        return self.distribution.middle()

    def contains(self, value: Any) -> bool:
        return self.distribution.contains(value)

    def grid_values(self) -> list[Any] | None:
        """Every value of a discrete knob, or None for a continuous one."""
        return self.distribution.grid_values()

    def zoom(self, values: list[Any], margin: float) -> Knob:
        """The knob narrowed to the range ``values`` span (see :meth:`Space.zoom`)."""
        return dataclasses.replace(self, distribution=self.distribution.zoom(values, margin))

    def describe(self) -> str:
        return self.distribution.describe()

    def spec(self) -> dict[str, Any]:
        """The knob as a search-space entry (what :func:`parse_knob` reads back)."""
        out = self.distribution.spec()
        if self.tier is not None:
            out["tier"] = self.tier
        if self.has_default and self.contains(self.default):
            out["default"] = self.default
        if self.when:
            out["when"] = {parent: list(allowed) for parent, allowed in self.when}
        return out

    def bounds(self) -> list[Any]:
        """The knob's range as stored (for the sweeps table): [low, high] or the choices."""
        return self.distribution.bounds()


def parse_knob(name: str, spec: Any, key: str | None = None) -> Knob:
    """One knob spec (a mapping) -> a checked ``Knob``. Errors name ``key`` (default: the name)."""
    key = key or name
    if not isinstance(spec, dict):
        raise ConfigError(f"{key}: expected a mapping such as {{loguniform: [1e-4, 1e-1]}} "
                          f"(got {spec!r})")
    for k in spec:
        if k not in KNOB_KEYS:
            hint = did_you_mean(str(k), KNOB_KEYS)
            raise ConfigError(f"{key}: unknown distribution '{k}'{hint}; "
                              f"valid: {', '.join(DISTRIBUTIONS)}")
    dists = [k for k in spec if k in DISTRIBUTIONS]
    if len(dists) != 1:
        raise ConfigError(f"{key}: give exactly one distribution of {', '.join(DISTRIBUTIONS)} "
                          f"(got {list(spec)!r})")
    tier = spec.get("tier")
    if tier is not None and tier not in TIERS:
        raise ConfigError(f"{key}.tier: must be one of {', '.join(TIERS)} (got {tier!r})")
    cls = BY_NAME[dists[0]]
    options = {k: v for k, v in spec.items() if k in OPTIONS}
    for option, value in options.items():
        cls.check_option(key, option, value)
    when = _parse_when(key, spec.get("when"))
    knob = Knob(name=name, distribution=cls.parse(key, spec[dists[0]], options), tier=tier,
                when=when, default=spec.get("default"), has_default="default" in spec)
    if knob.has_default and not knob.contains(knob.default):
        raise ConfigError(f"{key}.default: {knob.default!r} is outside the knob's range "
                          f"{knob.describe()}")
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
    # Hyperparameters PBT may change between two epochs (the schema's ``mutable`` declarations).
    mutable: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.knobs)

    def __iter__(self) -> Iterator[str]:
        return iter(self.knobs)

    @property
    def searched(self) -> list[str]:
        """Knobs that take more than one value."""
        return [k for k, kb in self.knobs.items() if kb.distribution.searched]

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
            elif not p.distribution.searched and parent not in config:
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
            assert values is not None  # (a grid search has discrete knobs only: check_search)
            nxt: list[dict[str, Any]] = []
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
        return Space(knobs, self.base, self.mutable)

    def ranges(self) -> dict[str, list[Any]]:
        return {name: knob.bounds() for name, knob in self.knobs.items()
                if knob.distribution.searched}

    def describe(self) -> str:
        return ", ".join(f"{n} {k.describe()}" for n, k in self.knobs.items()
                         if k.distribution.searched)

    def zoom(self, top: list[dict[str, Any]], margin: float) -> Space:
        """Narrow each numeric knob to the range the ``top`` configs span, on the knob's own scale.

        The range is widened on both sides by ``margin`` times the knob's full width (so a knob
        where the top trials agree still keeps some room) and clipped to the original bounds.
        Integers and powers of two are rounded outwards. Choices keep all their options.
        """
        knobs = {name: knob.zoom([c[name] for c in top if name in c], margin)
                 for name, knob in self.knobs.items()}
        return Space(knobs, self.base, self.mutable)


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


def full_space(cfg: SweepConfig) -> Space:
    """Every knob of the config's space, checked (no tier selection)."""
    raw = load_space(cfg)
    names = schema.hyperparameter_names(cfg)
    knobs: dict[str, Knob] = {}
    for name, spec in raw.items():
        key = f"search_space.{name}"
        if name not in names:
            raise ConfigError(f"{key}: not a hyperparameter{did_you_mean(str(name), list(names))}; "
                              f"valid: {', '.join(sorted(names))}")
        knob = knobs[name] = parse_knob(name, spec, key)
        for value in knob.bounds() + ([knob.default] if knob.has_default else []):
            check_hyperparameter(f"{key}.{knob.dist}", name, value, _model_to_check(cfg))
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
    return Space(_ordered(knobs), schema.base_hyperparameters(cfg), schema.mutable_names(cfg))


def compile_space(cfg: SweepConfig) -> Space:
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
        if knob.tier is None or knob.tier in tiers or not knob.distribution.searched:
            knobs[name] = knob
        elif knob.has_default:
            knobs[name] = dataclasses.replace(knob, distribution=Fixed(knob.default))
    # A knob conditioned on a dropped knob now depends on the config's value of it.
    return Space(knobs, space.base, space.mutable).possible()


def check_points(cfg: SweepConfig, space: Space) -> list[dict[str, Any]]:
    """``search.points_to_evaluate``, checked against the space: each a mapping of knob -> value.

    A point may name any subset of the searched knobs; the rest are sampled. A value may lie
    outside its knob's range (a known good config from an older, wider space), but must be a valid
    value of the hyperparameter.
    """
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
            check_hyperparameter(f"{key}.{name}", name, value, _model_to_check(cfg))
    return [dict(p) for p in points]


@dataclass
class SearchPlan:
    """What a sweep samples: the space, the points to try first, and how many trials it runs."""

    space: Space
    points: list[dict[str, Any]]
    n_trials: int


def check_search(cfg: SweepConfig) -> SearchPlan:
    """The sweep's space, points and trial count, with every search setting checked against them."""
    space = compile_space(cfg)
    points = check_points(cfg, space)
    q = cfg.search
    if q.algorithm == "grid":
        continuous = [n for n, k in space.knobs.items() if k.grid_values() is None]
        if continuous:
            k = space.knobs[continuous[0]]
            raise ConfigError(f"search.algorithm: grid needs discrete knobs (choice, pow2, fixed, int with "
                              f"at most {GRID_MAX_INT_VALUES} values); search_space.{k.name} is {k.dist} "
                              f"{k.describe()}")
    if q.algorithm == "tpe":
        for name, knob in space.knobs.items():
            knob.distribution.check_optuna(f"search_space.{name}")
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


__all__ = ["Knob", "Space", "SearchPlan", "compile_space", "check_search", "check_points", "stage_sizes"]


def _model_to_check(cfg: Any) -> str | None:
    """The model whose factory checks a knob's values: none for a config read back from the store
    with its model's recorded signature (checked when the sweep ran; its code is not imported)."""
    return None if cfg.model_signature is not None else models.model_id(cfg.model)
