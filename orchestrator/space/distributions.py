"""Distributions: where a knob's values come from, and every rule that depends on it.

Each YAML keyword of a search space (``loguniform``, ``log1m``, ``choice``, ...) is one subclass of
:class:`Distribution`, found through the ``BY_NAME`` table. The subclass parses and checks its
YAML form, samples, tells members from other values, lists its grid, maps its values onto the
unit interval on its own scale, narrows itself for coarse-to-fine stages, moves a value for PBT,
and gives its Optuna parameter, its Ray Tune domain and the axis a report draws it on. Knobs,
the searchers, PBT and the report ask the distribution rather than test its name, so a new
distribution is one class here and one entry in the table.

Optuna and Ray are imported only inside the methods that need them.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

import numpy as np

from orchestrator.errors import ConfigError

GRID_MAX_INT_VALUES = 64  # an ``int`` knob with more values than this is not a grid axis
ENCODED = "__"  # Optuna-side names of knobs sampled on a transformed scale: <knob>__1m, ...


def same(a: Any, b: Any) -> bool:
    """Equal, with booleans kept apart from 0 and 1 (``choice: [false, true]`` is not
    ``[0, 1]``)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def is_number(value: Any) -> bool:
    """An int or a float, not a boolean."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# -- the report's axis -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """How a report draws a knob's values.

    Attributes:
        scale: ``"log"``, ``"linear"`` or ``"category"``.
        ends: what the axis shows at the low and the high end of the knob's range (on the unit
            interval of :meth:`Distribution.to_unit`: at 0 and at 1).
        one_minus: the axis shows ``1 - value`` (how close to 1 an averaging weight is).
        base: the base of a log axis.
        ticks: fixed tick positions (none: the plotting library's).
        subs: on a log axis, ticks at these multiples of each power of ``base``.
        plain: tick labels as plain numbers rather than powers.
        categories: a categorical axis's labels, in order.
    """

    scale: str
    ends: tuple[Any, Any]
    one_minus: bool = False
    base: float = 10
    ticks: tuple[float, ...] = ()
    subs: tuple[float, ...] = ()
    plain: bool = False
    categories: tuple[str, ...] = ()

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Values as the axis shows them."""
        values = np.asarray(values, dtype=float)
        return 1.0 - values if self.one_minus else values

    def label(self, name: str) -> str:
        """The axis label of knob ``name``."""
        return f"1 - {name}" if self.one_minus else name

    def short_label(self, name: str) -> str:
        """A compact label (for a column of parallel coordinates)."""
        return f"1-{name}" if self.one_minus else name


# -- scales ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """A line a numeric knob is sampled uniformly on.

    Attributes:
        name: ``"linear"``, ``"log"`` or ``"log1m"``.
        forward: value -> position on the line.
        inverse: position -> value.
        move: ``(value, factor, width of the range) -> value`` moved by ``factor`` on this scale
            (PBT's explore).
        note: what ``describe`` appends to a range.
    """

    name: str
    forward: Callable[[float], float]
    inverse: Callable[[float], float]
    move: Callable[[float, float, float], float]
    note: str


def _log1m(v: float) -> float:
    return math.log(1.0 - v)


def _exp1m(u: float) -> float:
    return 1.0 - math.exp(u)


LINEAR = Scale("linear", float, float, lambda v, f, width: v + (f - 1.0) * width, "")
LOG = Scale("log", math.log, math.exp, lambda v, f, width: v * f, " (log)")
LOG1M = Scale("log1m", _log1m, _exp1m, lambda v, f, width: 1.0 - (1.0 - v) * f, " (log 1-x)")


# -- the contract ----------------------------------------------------------------------------------


class Distribution(ABC):
    """One kind of knob: its YAML form and every rule that depends on it.

    A subclass is a frozen dataclass named by ``name``, its YAML keyword (``{name: value}``, plus
    the extra keys it lists in ``options``). Its contract, checked for every subclass by
    ``tests/test_distributions.py``:

    * :meth:`parse` turns the YAML value into an instance, or raises a one-line ``ConfigError``
      that starts with the knob's key; :meth:`check_option` does the same for an extra key.
    * :meth:`sample` and :meth:`resample` return members: values :meth:`contains` accepts.
    * :meth:`to_unit` maps a member onto [0, 1] on the distribution's own scale (0 at one end of
      the range, 1 at the other); :meth:`from_unit` maps any point of [0, 1] to a member, and
      ``from_unit(to_unit(v))`` gives ``v`` back (up to float rounding).
    * :meth:`grid_values` lists every member, or is None when there are too many to enumerate.
    * :meth:`zoom` returns a distribution of the same kind whose members are members of this one
      and that keeps every member it was given; :meth:`nearest` maps any number to a member.
    * :meth:`perturb` moves a member by a factor on the distribution's scale and returns a member.
    * :meth:`suggest` asks an Optuna trial for a member through :meth:`optuna_distribution`;
      :meth:`to_optuna` encodes a member as Optuna's value of it (a point to evaluate).
    * :meth:`tune_domain` is a Ray Tune domain that samples members.
    * :meth:`axis` says how a report draws the knob.
    """

    name: ClassVar[str]
    options: ClassVar[dict[str, str]] = {}  # extra YAML keys -> the values they take (for errors)
    numeric: ClassVar[bool] = False  # values are numbers ordered on a scale
    searched: ClassVar[bool] = True  # takes more than one value (``fixed`` does not)
    continuous: ClassVar[bool] = False  # any real value in [low, high]: PB2 may propose one
    optuna_suffix: ClassVar[str] = ""  # Optuna samples an encoding of the value: <knob>__<suffix>

    # -- YAML --------------------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def parse(cls, key: str, value: Any, options: dict[str, Any]) -> Distribution:
        """The distribution of ``{name: value, **options}``, checked.

        Args:
            key: the knob's key in error messages (``search_space.lr``).
            value: the value under the distribution's keyword.
            options: the spec's extra keys (already checked by :meth:`check_option`).

        Raises:
            ConfigError: one line naming ``key`` and the value.
        """

    @classmethod
    def check_option(cls, key: str, option: str, value: Any) -> None:
        """Check an extra key of the knob's spec (``log``, ...) that some distribution takes.

        Raises:
            ConfigError: this distribution does not take ``option``, or not that value.
        """
        if option not in cls.options:
            raise option_error(key, option, value, cls.name)

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """The YAML form (what :meth:`parse` reads back): ``{name: value, **options}``."""

    @abstractmethod
    def bounds(self) -> list[Any]:
        """The range as stored and checked: ``[low, high]`` or the choices."""

    @abstractmethod
    def describe(self) -> str:
        """The range in a line of text (``0.0001..0.1 (log)``)."""

    # -- values ------------------------------------------------------------------------------------

    @property
    def scale(self) -> str | None:
        """The name of the scale a numeric distribution is sampled uniformly on (else None)."""
        return None

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> Any:
        """One value, drawn with ``rng``."""

    @abstractmethod
    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a member."""

    @abstractmethod
    def middle(self) -> Any:
        """A representative member: the middle of the range on its scale, or the first choice."""

    def grid_values(self) -> list[Any] | None:
        """Every member, or None when the distribution is not a grid axis."""
        return None

    def nearest(self, value: Any) -> Any:
        """The member closest to ``value`` (``value`` itself when it is one)."""
        return value if self.contains(value) else self.middle()

    # -- the unit interval -------------------------------------------------------------------------

    @abstractmethod
    def to_unit(self, value: Any) -> float:
        """A member's position on [0, 1], on the distribution's own scale."""

    @abstractmethod
    def from_unit(self, u: float) -> Any:
        """The member at position ``u`` of [0, 1]."""

    def zoom(self, values: list[Any], margin: float) -> Distribution:
        """Narrowed to the range ``values`` span on the distribution's scale (coarse to fine).

        The range is widened on both sides by ``margin`` times the full width and clipped to the
        distribution's own range. Values that are not members are ignored; a distribution
        without an order (choices) is returned whole.
        """
        return self

    # -- PBT ---------------------------------------------------------------------------------------

    def perturb(self, value: Any, factor: float, rng: np.random.Generator) -> Any:
        """``value`` moved by ``factor`` (PBT's explore; above 1: up), kept a member."""
        return value

    def resample(self, rng: np.random.Generator) -> Any:
        """A fresh value for PBT's resampling."""
        return self.sample(rng)

    # -- Optuna and Ray Tune -----------------------------------------------------------------------

    def optuna_name(self, name: str) -> str | None:
        """Optuna's name of knob ``name``'s parameter (None: Optuna samples nothing)."""
        return f"{name}{ENCODED}{self.optuna_suffix}" if self.optuna_suffix else name

    @abstractmethod
    def optuna_distribution(self) -> Any:
        """The ``optuna.distributions`` object Optuna samples (None: nothing to sample)."""

    def to_optuna(self, value: Any) -> Any:
        """A member as Optuna's value of the parameter."""
        return value

    def from_optuna(self, value: Any) -> Any:
        """Optuna's value of the parameter as a member."""
        return value

    def suggest(self, trial: Any, name: str) -> Any:
        """A member for knob ``name``, sampled by an Optuna trial (define-by-run)."""
        dist, optuna_name = self.optuna_distribution(), self.optuna_name(name)
        if dist is None or optuna_name is None:
            return self.middle()
        return self.from_optuna(_ask(trial, optuna_name, dist))

    def check_optuna(self, key: str) -> None:
        """Raise a one-line ``ConfigError`` naming ``key`` if Optuna cannot sample this."""
        return None

    @abstractmethod
    def tune_domain(self) -> Any:
        """A Ray Tune domain over the same values."""

    # -- the report --------------------------------------------------------------------------------

    @abstractmethod
    def axis(self) -> Axis:
        """How a report draws the knob."""


def option_error(key: str, option: str, value: Any, dist: str) -> ConfigError:
    """The error for an extra key given to a distribution that does not take it (or that value)."""
    owners = [cls for cls in BY_NAME.values() if option in cls.options]
    who = " or ".join(cls.name for cls in owners)
    return ConfigError(f"{key}.{option}: only {who} knobs take {option}: "
                       f"{owners[0].options[option]} (got {value!r} on {dist})")


def _ask(trial: Any, name: str, dist: Any) -> Any:
    """Ask an Optuna trial for parameter ``name`` of ``dist`` through its public API."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def _pair(key: str, dist: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(map(is_number, value)):
        raise ConfigError(f"{key}.{dist}: expected [low, high] numbers (got {value!r})")
    lo, hi = float(value[0]), float(value[1])
    if lo >= hi:
        raise ConfigError(f"{key}.{dist}: low must be below high (got {list(value)!r})")
    return lo, hi


# -- numeric ranges --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range(Distribution):
    """A numeric range ``[low, high]`` (inclusive) sampled uniformly on a :class:`Scale`.

    Subclasses choose the scale, check their bounds, and round a value to a member (``_snap``)
    and a zoomed range outwards to members (``_outward``).
    """

    low: float
    high: float

    numeric = True

    @classmethod
    def parse(cls, key: str, value: Any, options: dict[str, Any]) -> Range:
        lo, hi = _pair(key, cls.name, value)
        cls._check_bounds(key, lo, hi, value, options)
        return cls(lo, hi, **cls._fields(options))

    @classmethod
    def _check_bounds(cls, key: str, lo: float, hi: float, value: Any,
                      options: dict[str, Any]) -> None:
        """Raise a ``ConfigError`` for bounds this distribution cannot take."""

    @classmethod
    def _fields(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The dataclass fields the options give (beyond ``low`` and ``high``)."""
        return {}

    # The scale.
    @property
    def line(self) -> Scale:
        """The scale the range is sampled uniformly on."""
        return LINEAR

    @property
    def scale(self) -> str:
        return self.line.name

    def forward(self, value: float) -> float:
        """A value's position on the scale."""
        return self.line.forward(value)

    def inverse(self, u: float) -> float:
        """The value at position ``u`` of the scale."""
        return self.line.inverse(u)

    def interval(self) -> tuple[float, float]:
        """The range on the scale, low end first."""
        a, b = self.forward(self.low), self.forward(self.high)
        return (a, b) if a <= b else (b, a)

    def _snap(self, x: float) -> Any:
        """A number inside the range, rounded to a member."""
        return float(x)

    def _clip(self, x: float) -> float:
        return min(max(float(x), self.low), self.high)

    # Values.
    def sample(self, rng: np.random.Generator) -> Any:
        a, b = self.interval()
        return self._clip(self.inverse(rng.uniform(a, b)))

    def contains(self, value: Any) -> bool:
        return is_number(value) and self.low <= value <= self.high

    def middle(self) -> Any:
        a, b = self.interval()
        return self._snap(self.inverse((a + b) / 2.0))

    def nearest(self, value: Any) -> Any:
        return self._snap(self._clip(value))

    def bounds(self) -> list[Any]:
        return [self.low, self.high]

    def spec(self) -> dict[str, Any]:
        return {self.name: self.bounds()}

    def describe(self) -> str:
        lo, hi = self.bounds()
        return f"{_short(lo)}..{_short(hi)}{self.line.note}"

    # The unit interval.
    def to_unit(self, value: Any) -> float:
        a, b = self.interval()
        return (self.forward(value) - a) / ((b - a) or 1.0)

    def from_unit(self, u: float) -> Any:
        a, b = self.interval()
        return self._snap(self._clip(self.inverse(a + float(u) * (b - a))))

    def zoom(self, values: list[Any], margin: float) -> Range:
        seen = [v for v in values if self.contains(v)]
        if not seen:
            return self
        a, b = self.interval()
        us = [self.forward(v) for v in seen]
        pad = margin * (b - a)
        lo_u, hi_u = max(a, min(us) - pad), min(b, max(us) + pad)
        lo, hi = sorted((self.inverse(lo_u), self.inverse(hi_u)))
        lo, hi = self._outward(max(lo, self.low), min(hi, self.high))
        return dataclasses.replace(self, low=float(lo), high=float(hi))

    def _outward(self, lo: float, hi: float) -> tuple[float, float]:
        """A zoomed range rounded outwards to members."""
        return lo, hi

    # PBT.
    def perturb(self, value: Any, factor: float, rng: np.random.Generator) -> Any:
        return float(self._clip(self.line.move(value, factor, self.high - self.low)))

    # The report.
    def axis(self) -> Axis:
        return Axis("linear", (self.from_unit(0.0), self.from_unit(1.0)))


@dataclass(frozen=True)
class LogUniform(Range):
    """Log-uniform over ``[low, high]``: every decade gets its share (learning rates)."""

    name = "loguniform"
    continuous = True

    @classmethod
    def _check_bounds(cls, key: str, lo: float, hi: float, value: Any,
                      options: dict[str, Any]) -> None:
        if lo <= 0:
            raise ConfigError(f"{key}.loguniform: bounds must be positive on a log scale "
                              f"(got {value!r})")

    @property
    def line(self) -> Scale:
        return LOG

    def optuna_distribution(self) -> Any:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=True)

    def tune_domain(self) -> Any:
        from ray import tune

        return tune.loguniform(self.low, self.high)

    def axis(self) -> Axis:
        return Axis("log", (self.low, self.high))


@dataclass(frozen=True)
class Uniform(Range):
    """Uniform over ``[low, high]`` (dropout)."""

    name = "uniform"
    continuous = True

    def optuna_distribution(self) -> Any:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high)

    def tune_domain(self) -> Any:
        from ray import tune

        return tune.uniform(self.low, self.high)


@dataclass(frozen=True)
class Int(Range):
    """Integers in ``[low, high]``, uniform or, with ``log: true``, log-uniform (widths).

    On a log scale each integer gets the share of ``[k, k + 1)`` of a log-uniform draw over
    ``[low, high + 1)``: as likely per octave as a power of two.
    """

    log: bool = False

    name = "int"
    options = {"log": "true|false"}

    @classmethod
    def check_option(cls, key: str, option: str, value: Any) -> None:
        if option != "log" or not isinstance(value, bool):
            raise option_error(key, option, value, cls.name)

    @classmethod
    def _check_bounds(cls, key: str, lo: float, hi: float, value: Any,
                      options: dict[str, Any]) -> None:
        if not (lo.is_integer() and hi.is_integer()):
            raise ConfigError(f"{key}.int: bounds must be integers (got {value!r})")
        if options.get("log") and lo <= 0:
            raise ConfigError(f"{key}.int: bounds must be positive with log: true (got {value!r})")

    @classmethod
    def _fields(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"log": bool(options.get("log", False))}

    @property
    def line(self) -> Scale:
        return LOG if self.log else LINEAR

    def _snap(self, x: float) -> int:
        return int(round(x))

    def sample(self, rng: np.random.Generator) -> int:
        lo, hi = int(self.low), int(self.high)
        if not self.log:
            return int(rng.integers(lo, hi + 1))
        return min(hi, int(math.floor(math.exp(rng.uniform(math.log(lo), math.log(hi + 1))))))

    def contains(self, value: Any) -> bool:
        return (is_number(value) and math.isfinite(value) and float(value) == int(value)
                and self.low <= value <= self.high)

    def grid_values(self) -> list[int] | None:
        if self.high - self.low + 1 > GRID_MAX_INT_VALUES:
            return None
        return list(range(int(self.low), int(self.high) + 1))

    def bounds(self) -> list[Any]:
        return [int(self.low), int(self.high)]

    def spec(self) -> dict[str, Any]:
        return {"int": self.bounds(), "log": True} if self.log else {"int": self.bounds()}

    def _outward(self, lo: float, hi: float) -> tuple[float, float]:
        return math.floor(lo + 1e-9), math.ceil(hi - 1e-9)

    def perturb(self, value: Any, factor: float, rng: np.random.Generator) -> int:
        new = self._clip(self.line.move(value, factor, self.high - self.low))
        rounded = int(round(new))
        step = 1 if factor > 1 else -1
        if rounded == value and self.low <= value + step <= self.high:
            rounded = int(value) + step  # an int always moves
        return rounded

    def optuna_distribution(self) -> Any:
        from optuna.distributions import IntDistribution

        return IntDistribution(int(self.low), int(self.high), log=self.log)

    def tune_domain(self) -> Any:
        from ray import tune

        make = tune.lograndint if self.log else tune.randint
        return make(int(self.low), int(self.high) + 1)

    def axis(self) -> Axis:
        if not self.log:
            return super().axis()
        return Axis("log", (int(self.low), int(self.high)), subs=(1.0, 2.0, 5.0), plain=True)


@dataclass(frozen=True)
class Pow2(Range):
    """Powers of two in ``[low, high]`` (both powers of two), each equally likely (batch sizes)."""

    name = "pow2"
    optuna_suffix = "log2"  # Optuna samples the exponent

    @classmethod
    def _check_bounds(cls, key: str, lo: float, hi: float, value: Any,
                      options: dict[str, Any]) -> None:
        if not (lo.is_integer() and hi.is_integer()):
            raise ConfigError(f"{key}.pow2: bounds must be integers (got {value!r})")
        if lo <= 0:
            raise ConfigError(f"{key}.pow2: bounds must be positive integers (got {value!r})")
        if not all(_is_power_of_two(int(v)) for v in (lo, hi)):
            inner = [2 ** k for k in range(int(lo - 1).bit_length(), int(hi).bit_length())]
            hint = (f"; the powers of two inside are {inner[0]}..{inner[-1]}: "
                    f"write [{inner[0]}, {inner[-1]}]") if inner else ""
            raise ConfigError(f"{key}.pow2: bounds must be powers of two (got {value!r}){hint}")

    @property
    def line(self) -> Scale:
        return LOG

    def powers(self) -> list[int]:
        """Every member, smallest first."""
        return [2**e for e in range(0, 63) if self.low <= 2**e <= self.high]

    def _snap(self, x: float) -> int:
        return min(self.powers(), key=lambda p: abs(math.log(p) - math.log(x)))

    def sample(self, rng: np.random.Generator) -> int:
        powers = self.powers()
        return powers[int(rng.integers(len(powers)))]

    def contains(self, value: Any) -> bool:
        return is_number(value) and float(value) in {float(p) for p in self.powers()}

    def grid_values(self) -> list[int]:
        return self.powers()

    def bounds(self) -> list[Any]:
        return [int(self.low), int(self.high)]

    def describe(self) -> str:
        return f"{int(self.low)}..{int(self.high)} (powers of 2)"

    def nearest(self, value: Any) -> int:
        return self._snap(max(self._clip(value), 1.0))

    def _outward(self, lo: float, hi: float) -> tuple[float, float]:
        powers = self.powers()
        return (max(2 ** math.floor(math.log2(lo) + 1e-9), powers[0]),
                min(2 ** math.ceil(math.log2(hi) - 1e-9), powers[-1]))

    def perturb(self, value: Any, factor: float, rng: np.random.Generator) -> int:
        powers = self.powers()
        here = math.log(max(value, 1))
        i = min(range(len(powers)), key=lambda j: abs(math.log(powers[j]) - here))
        return powers[min(max(i + (1 if factor > 1 else -1), 0), len(powers) - 1)]

    def optuna_distribution(self) -> Any:
        from optuna.distributions import IntDistribution

        exps = [int(math.log2(p)) for p in self.powers()]
        return IntDistribution(exps[0], exps[-1])

    def to_optuna(self, value: Any) -> int:
        return int(round(math.log2(value)))

    def from_optuna(self, value: Any) -> int:
        return 2 ** int(value)

    def tune_domain(self) -> Any:
        from ray import tune

        return tune.choice(self.powers())

    def axis(self) -> Axis:
        powers = self.powers()
        return Axis("log", (powers[0], powers[-1]), base=2, ticks=tuple(powers), plain=True)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class Log1m(Range):
    """An averaging weight ``beta`` in ``(0, 1)`` with ``1 - beta`` log-uniform (momentum,
    Adam's betas): 0.9-0.99, 0.99-0.999 and 0.999-0.9999 are equally likely."""

    name = "log1m"
    continuous = True
    optuna_suffix = "1m"  # Optuna samples 1 - beta

    @classmethod
    def _check_bounds(cls, key: str, lo: float, hi: float, value: Any,
                      options: dict[str, Any]) -> None:
        if not (0 < lo < 1 and 0 < hi < 1):
            raise ConfigError(f"{key}.log1m: bounds must lie in (0, 1) (got {value!r})")

    @property
    def line(self) -> Scale:
        return LOG1M

    def optuna_distribution(self) -> Any:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(1.0 - self.high, 1.0 - self.low, log=True)

    def to_optuna(self, value: Any) -> float:
        return 1.0 - value

    def from_optuna(self, value: Any) -> float:
        return 1.0 - value

    def tune_domain(self) -> Any:
        from ray.tune.search.sample import Float

        domain = Float(self.low, self.high)
        domain.set_sampler(_OneMinusLogUniform())
        return domain

    def axis(self) -> Axis:
        return Axis("log", (1.0 - self.high, 1.0 - self.low), one_minus=True)


class _OneMinusLogUniform:
    """A Ray Tune sampler for a ``Float`` domain: ``1 - x``, ``x`` log-uniform over
    ``[1 - upper, 1 - lower]``."""

    def sample(self, domain: Any, config: Any = None, size: int = 1,
               random_state: Any = None) -> Any:
        lo, hi = math.log(1.0 - domain.upper), math.log(1.0 - domain.lower)
        rng = random_state if random_state is not None else np.random.default_rng()
        items = np.clip(1.0 - np.exp(rng.uniform(lo, hi, size=size)), domain.lower, domain.upper)
        return list(items) if len(items) > 1 else domain.cast(items[0])

    def __str__(self) -> str:
        return "OneMinusLogUniform"


@dataclass(frozen=True)
class QLogUniform(Range):
    """Log-uniform over ``[low, high]``, rounded to a multiple of ``q``, as
    ``ray.tune.qloguniform(low, high, q)``: ``{qloguniform: [0.001, 1.0], q: 0.001}``.

    Both bounds must be positive multiples of ``q`` (as Ray requires), so rounding never leaves
    the range. A member is a multiple of ``q`` up to float rounding; orch writes ``k * q`` with the
    decimals of ``q`` (0.007, not 0.007000000000000001).

    Optuna forbids a log scale together with a step, so TPE samples the integer multiplier
    ``k = value / q`` on a log scale (``IntDistribution(low / q, high / q, log=True)``, the
    parameter ``<knob>__q``): it models exactly the values the trials ran. Optuna gives each
    multiplier the log-width of ``[k - 1/2, k + 1/2]``; orch's own sampler and Ray clip that
    interval to the range, so only the two end multiples weigh differently.
    """

    q: float

    name = "qloguniform"
    options = {"q": "a positive step"}
    optuna_suffix = "q"  # Optuna samples the multiplier of q

    @classmethod
    def check_option(cls, key: str, option: str, value: Any) -> None:
        if option != "q":
            raise option_error(key, option, value, cls.name)
        if not (is_number(value) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{key}.q: expected a positive step (got {value!r})")

    @classmethod
    def _check_bounds(cls, key: str, lo: float, hi: float, value: Any,
                      options: dict[str, Any]) -> None:
        q = options.get("q")
        if q is None:
            raise ConfigError(f"{key}.qloguniform: needs a step q, e.g. "
                              "{qloguniform: [0.001, 1.0], q: 0.001}")
        if lo <= 0:
            raise ConfigError(f"{key}.qloguniform: bounds must be positive on a log scale "
                              f"(got {value!r})")
        if not (_on_step(lo, q) and _on_step(hi, q)):
            raise ConfigError(f"{key}.qloguniform: bounds must be multiples of q={q} "
                              f"(got {value!r})")

    @classmethod
    def _fields(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"q": float(options["q"])}

    @property
    def line(self) -> Scale:
        return LOG

    def _steps(self) -> tuple[int, int]:
        """The multipliers of ``q`` at the ends of the range."""
        return round(self.low / self.q), round(self.high / self.q)

    def _multiple(self, k: int) -> float:
        k_lo, k_hi = self._steps()
        return float(round(min(max(k, k_lo), k_hi) * self.q, _decimals(self.q)))

    def _snap(self, x: float) -> float:
        return self._multiple(round(x / self.q))

    def sample(self, rng: np.random.Generator) -> float:
        a, b = self.interval()
        return self._snap(math.exp(rng.uniform(a, b)))

    def contains(self, value: Any) -> bool:
        if not (is_number(value) and math.isfinite(value)):
            return False
        slack = 1e-9 * self.q  # Ray's k * q may overshoot a bound by a rounding error
        return self.low - slack <= value <= self.high + slack and _on_step(value, self.q)

    def spec(self) -> dict[str, Any]:
        return {"qloguniform": self.bounds(), "q": self.q}

    def describe(self) -> str:
        return f"{_short(self.low)}..{_short(self.high)} (log, step {_short(self.q)})"

    def _outward(self, lo: float, hi: float) -> tuple[float, float]:
        return (self._multiple(math.floor(lo / self.q + 1e-9)),
                self._multiple(math.ceil(hi / self.q - 1e-9)))

    def perturb(self, value: Any, factor: float, rng: np.random.Generator) -> float:
        k = round(value / self.q)
        moved = round(self._clip(value * factor) / self.q)
        step = 1 if factor > 1 else -1
        k_lo, k_hi = self._steps()
        if moved == k and k_lo <= k + step <= k_hi:
            moved = k + step  # always at least one step, as an int moves
        return self._multiple(moved)

    def optuna_distribution(self) -> Any:
        from optuna.distributions import IntDistribution

        return IntDistribution(*self._steps(), log=True)

    def to_optuna(self, value: Any) -> int:
        return round(value / self.q)

    def from_optuna(self, value: Any) -> float:
        return self._multiple(int(value))

    def tune_domain(self) -> Any:
        from ray import tune

        return tune.qloguniform(self.low, self.high, self.q)

    def axis(self) -> Axis:
        return Axis("log", (self.low, self.high))


def _on_step(value: float, q: float) -> bool:
    """Whether ``value`` is a multiple of ``q`` (up to float rounding)."""
    return math.isclose(value / q, round(value / q), rel_tol=1e-9, abs_tol=1e-9)


def _decimals(q: float) -> int:
    """The decimals ``q`` is written with (0.001: 3), for writing its multiples."""
    exponent = Decimal(repr(q)).as_tuple().exponent
    assert isinstance(exponent, int)  # (a finite step: "n", "N" and "F" are NaN's and infinity's)
    return max(0, -exponent)


# -- categories ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice(Distribution):
    """One of a list of values, each equally likely (optimizers, activations)."""

    values: tuple

    name = "choice"

    @classmethod
    def parse(cls, key: str, value: Any, options: dict[str, Any]) -> Choice:
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{key}.choice: expected a non-empty list (got {value!r})")
        return cls(tuple(value))

    def spec(self) -> dict[str, Any]:
        return {"choice": list(self.values)}

    def bounds(self) -> list[Any]:
        return list(self.values)

    def describe(self) -> str:
        return "{" + ", ".join(str(v) for v in self.values) + "}"

    def sample(self, rng: np.random.Generator) -> Any:
        return self.values[int(rng.integers(len(self.values)))]

    def contains(self, value: Any) -> bool:
        return any(same(value, v) for v in self.values)

    def middle(self) -> Any:
        return self.values[0]

    def grid_values(self) -> list[Any]:
        return list(self.values)

    def _index(self, value: Any) -> int | None:
        return next((i for i, v in enumerate(self.values) if same(value, v)), None)

    def to_unit(self, value: Any) -> float:
        index = self._index(value)
        assert index is not None  # (``value`` is a member)
        return index / max(1, len(self.values) - 1)

    def from_unit(self, u: float) -> Any:
        last = len(self.values) - 1
        return self.values[min(max(int(round(float(u) * last)), 0), last)]

    def perturb(self, value: Any, factor: float, rng: np.random.Generator) -> Any:
        """A neighbour in the list (the next one for a factor above 1); a value that is not a
        choice is drawn afresh."""
        i = next((j for j, v in enumerate(self.values) if v == value), None)
        if i is None:
            return self.sample(rng)
        step = 1 if factor > 1 else -1
        return self.values[min(max(i + step, 0), len(self.values) - 1)]

    def optuna_distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self.values)

    def check_optuna(self, key: str) -> None:
        if any(isinstance(v, (list, tuple, dict)) for v in self.values):
            raise ConfigError(f"{key}.choice: tpe takes choices that are numbers, strings or "
                              f"booleans, not lists (got {list(self.values)!r}); "
                              "use search.algorithm: random")

    def tune_domain(self) -> Any:
        from ray import tune

        return tune.choice(list(self.values))

    def axis(self) -> Axis:
        return Axis("category", (self.values[0], self.values[-1]),
                    categories=tuple(str(v) for v in self.values))


@dataclass(frozen=True)
class Fixed(Distribution):
    """One value, never searched (a knob held by ``search.tiers``, or ``{fixed: 2}``)."""

    value: Any

    name = "fixed"
    searched = False

    @classmethod
    def parse(cls, key: str, value: Any, options: dict[str, Any]) -> Fixed:
        return cls(value)

    @property
    def values(self) -> tuple:
        """The one value, as a tuple."""
        return (self.value,)

    def spec(self) -> dict[str, Any]:
        return {"fixed": self.value}

    def bounds(self) -> list[Any]:
        return [self.value]

    def describe(self) -> str:
        return f"{self.value!r}"

    def sample(self, rng: np.random.Generator) -> Any:
        return self.value

    def contains(self, value: Any) -> bool:
        return same(value, self.value)

    def middle(self) -> Any:
        return self.value

    def grid_values(self) -> list[Any]:
        return [self.value]

    def to_unit(self, value: Any) -> float:
        return 0.0

    def from_unit(self, u: float) -> Any:
        return self.value

    def optuna_name(self, name: str) -> str | None:
        return None

    def optuna_distribution(self) -> Any:
        return None

    def tune_domain(self) -> Any:
        from ray import tune

        return tune.choice([self.value])

    def axis(self) -> Axis:
        return Axis("category", (self.value, self.value), categories=(str(self.value),))


# -- the table -------------------------------------------------------------------------------------

# YAML keyword -> class, in the order errors list them.
BY_NAME: dict[str, type[Distribution]] = {
    cls.name: cls
    for cls in (LogUniform, Uniform, Int, Pow2, Choice, Fixed, Log1m, QLogUniform)
}
# Every extra key some distribution takes, in the table's order.
OPTIONS: tuple[str, ...] = tuple(dict.fromkeys(o for cls in BY_NAME.values() for o in cls.options))


__all__ = [
    "Distribution", "Range", "Axis", "Scale", "BY_NAME", "OPTIONS", "ENCODED",
    "GRID_MAX_INT_VALUES",
    "LogUniform", "Uniform", "Int", "Pow2", "Log1m", "QLogUniform", "Choice", "Fixed",
    "same", "is_number", "option_error",
]
