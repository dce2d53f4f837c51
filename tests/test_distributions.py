"""Every distribution class against the one contract of ``Distribution``.

One suite runs over a case of every class (a test fails when a class has no case): samples are
members, the unit interval round-trips, grids hold members, zooming keeps inside the range and
keeps the values it zooms on, PBT's moves stay members, and the Optuna and Ray Tune forms sample
members. Then the parsing errors, word for word, and the law of each distribution's samples where
the other test files do not check it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chisquare

from orchestrator.errors import ConfigError
from orchestrator.space import distributions as D
from orchestrator.space import space as spaces

# One or more specs per class: name -> the knob's YAML mapping.
CASES: dict[str, dict] = {
    "loguniform": {"loguniform": [1e-5, 1e-1]},
    "uniform": {"uniform": [0.0, 0.5]},
    "int": {"int": [1, 12]},
    "int_wide": {"int": [1, 1000]},  # too many values for a grid
    "int_log": {"int": [8, 512], "log": True},
    "pow2": {"pow2": [16, 1024]},
    "choice": {"choice": ["sgd", "adam", "adamw"]},
    "choice_bool": {"choice": [False, True]},
    "choice_one": {"choice": [0.9]},
    "fixed": {"fixed": 3},
    "log1m": {"log1m": [0.5, 0.9999]},
    "qloguniform": {"qloguniform": [1e-3, 1.0], "q": 1e-3},
    "qloguniform_coarse": {"qloguniform": [0.5, 8], "q": 0.5},  # 16 values
}
FACTORS = (0.5, 0.8, 1.2, 2.0)


def dist_of(case: str) -> D.Distribution:
    return spaces.parse_knob("x", CASES[case]).distribution


def draws(dist: D.Distribution, n: int = 300, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [dist.sample(rng) for _ in range(n)]


def equal(dist: D.Distribution, a, b) -> bool:
    """Equal members: the same choice, or numbers equal up to float rounding."""
    if dist.numeric:
        return a == pytest.approx(b, rel=1e-9, abs=1e-12)
    return D.same(a, b)


def test_every_distribution_has_a_case() -> None:
    assert {type(dist_of(c)) for c in CASES} == set(D.BY_NAME.values())
    assert all(cls.name == name for name, cls in D.BY_NAME.items())
    assert tuple(D.BY_NAME) == spaces.DISTRIBUTIONS


# -- the contract, for every class -------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_samples_are_members_and_the_spec_reads_back(case: str) -> None:
    dist = dist_of(case)
    assert all(dist.contains(v) for v in draws(dist))
    assert dist.contains(dist.middle()) and dist.contains(dist.resample(np.random.default_rng(1)))
    assert spaces.parse_knob("x", dist.spec()).distribution == dist
    assert isinstance(dist.describe(), str) and dist.bounds()


@pytest.mark.parametrize("case", CASES)
def test_the_unit_interval_round_trips(case: str) -> None:
    dist = dist_of(case)
    for v in draws(dist, 200):
        u = dist.to_unit(v)
        assert 0.0 <= u <= 1.0
        assert equal(dist, dist.from_unit(u), v)
    for u in np.linspace(0.0, 1.0, 21):
        v = dist.from_unit(float(u))
        assert dist.contains(v), (u, v)
    if dist.numeric:  # the ends of the range are the ends of the interval
        assert {dist.to_unit(dist.low), dist.to_unit(dist.high)} == {0.0, 1.0}


@pytest.mark.parametrize("case", CASES)
def test_grid_values_are_every_member_or_none(case: str) -> None:
    dist = dist_of(case)
    grid = dist.grid_values()
    if grid is None:
        assert dist.numeric  # only ranges with too many values have no grid
        return
    assert grid and all(dist.contains(v) for v in grid)
    assert len({repr(v) for v in grid}) == len(grid)
    assert all(any(D.same(v, g) for g in grid) for v in draws(dist, 100))


@pytest.mark.parametrize("margin", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("case", CASES)
def test_zoom_stays_inside_and_keeps_the_values_it_zooms_on(case: str, margin: float) -> None:
    dist = dist_of(case)
    centre = dist.middle()
    top = [centre, *draws(dist, 2, seed=5)]
    zoomed = dist.zoom(top, margin)
    assert type(zoomed) is type(dist)
    assert all(zoomed.contains(v) for v in top)
    # Every member of the zoomed distribution is a member of the original.
    assert all(dist.contains(v) for v in draws(zoomed, 200))
    assert all(dist.contains(zoomed.from_unit(u)) for u in (0.0, 0.5, 1.0))
    if dist.numeric:
        assert dist.low <= zoomed.low <= zoomed.high <= dist.high
    # Values that are not members are ignored.
    assert dist.zoom(["not a member", None], margin) == dist


@pytest.mark.parametrize("case", CASES)
def test_perturb_and_nearest_give_members(case: str) -> None:
    dist = dist_of(case)
    rng = np.random.default_rng(0)
    for v in [*draws(dist, 50), *(dist.from_unit(u) for u in (0.0, 1.0))]:
        for factor in FACTORS:
            moved = dist.perturb(v, factor, rng)
            assert dist.contains(moved), (v, factor, moved)
        assert equal(dist, dist.nearest(v), v)
    if dist.numeric:
        for x in (dist.low - 1.0, dist.high + 1.0, (dist.low + dist.high) / 2):
            assert dist.contains(dist.nearest(x))


@pytest.mark.parametrize("case", CASES)
def test_the_optuna_form_samples_members_and_takes_points(case: str) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dist = dist_of(case)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(100):
        trial = study.ask()
        assert dist.contains(dist.suggest(trial, "x"))
        study.tell(trial, 0.0)
    param, od = dist.optuna_name("x"), dist.optuna_distribution()
    assert (param is None) == (od is None)
    if od is None:
        return
    # A point to evaluate lands inside Optuna's distribution and comes back as itself.
    for v in draws(dist, 20, seed=3):
        assert od._contains(od.to_internal_repr(dist.to_optuna(v)))
        study.enqueue_trial({param: dist.to_optuna(v)})
        trial = study.ask()
        assert equal(dist, dist.suggest(trial, "x"), v)
        study.tell(trial, 0.0)


@pytest.mark.parametrize("case", CASES)
def test_the_tune_form_samples_members(case: str) -> None:
    dist = dist_of(case)
    domain = dist.tune_domain()
    rng = np.random.default_rng(0)
    values = [domain.sample(random_state=rng) for _ in range(200)]
    assert all(dist.contains(v) for v in values), [v for v in values if not dist.contains(v)][:3]


@pytest.mark.parametrize("case", CASES)
def test_the_report_axis_shows_the_ends_of_the_unit_interval(case: str) -> None:
    dist = dist_of(case)
    axis = dist.axis()
    assert axis.scale in ("log", "linear", "category") and "x" in axis.label("x")
    ends = (dist.from_unit(0.0), dist.from_unit(1.0))
    if axis.scale == "category":
        assert all(D.same(a, b) for a, b in zip(axis.ends, ends, strict=True))
        assert axis.categories == tuple(str(v) for v in dist.bounds())
    else:
        assert axis.transform(np.array(ends)) == pytest.approx(np.array(axis.ends, dtype=float))
        assert axis.scale == ("linear" if dist.scale == "linear" else "log")


# -- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ({"loguniform": [0, 0.1]},
     "k.loguniform: bounds must be positive on a log scale (got [0, 0.1])"),
    ({"loguniform": [0.1]}, "k.loguniform: expected [low, high] numbers (got [0.1])"),
    ({"uniform": [1.0, 0.5]}, "k.uniform: low must be below high (got [1.0, 0.5])"),
    ({"uniform": [True, 2]}, "k.uniform: expected [low, high] numbers (got [True, 2])"),
    ({"log1m": [0.5, 1.0]}, "k.log1m: bounds must lie in (0, 1) (got [0.5, 1.0])"),
    ({"int": [1.5, 4]}, "k.int: bounds must be integers (got [1.5, 4])"),
    ({"int": [0, 4], "log": True}, "k.int: bounds must be positive with log: true (got [0, 4])"),
    ({"int": [1, 4], "log": "yes"}, "k.log: only int knobs take log: true|false (got 'yes' on int)"),
    ({"uniform": [0, 1], "log": True}, "k.log: only int knobs take log: true|false (got True on uniform)"),
    ({"pow2": [0, 4]}, "k.pow2: bounds must be positive integers (got [0, 4])"),
    ({"pow2": [10, 100]}, "k.pow2: bounds must be powers of two (got [10, 100]); the powers of two "
                          "inside are 16..64: write [16, 64]"),
    ({"choice": []}, "k.choice: expected a non-empty list (got [])"),
    ({"choice": "sgd"}, "k.choice: expected a non-empty list (got 'sgd')"),
    ({"logunifrom": [1e-4, 1e-2]}, "k: unknown distribution 'logunifrom' (did you mean 'loguniform'?); "
                                   f"valid: {', '.join(D.BY_NAME)}"),
    ({"uniform": [0, 1], "choice": [1]}, "k: give exactly one distribution of "
                                         f"{', '.join(D.BY_NAME)} (got ['uniform', 'choice'])"),
    ({"uniform": [0, 1], "default": 2}, "k.default: 2 is outside the knob's range 0..1"),
    ({"qloguniform": [0.001, 1.0]},
     "k.qloguniform: needs a step q, e.g. {qloguniform: [0.001, 1.0], q: 0.001}"),
    ({"qloguniform": [0.0, 1.0], "q": 0.1},
     "k.qloguniform: bounds must be positive on a log scale (got [0.0, 1.0])"),
    ({"qloguniform": [0.15, 1.0], "q": 0.1},
     "k.qloguniform: bounds must be multiples of q=0.1 (got [0.15, 1.0])"),
    ({"qloguniform": [0.1, 1.0], "q": -0.1}, "k.q: expected a positive step (got -0.1)"),
    ({"loguniform": [0.1, 1.0], "q": 0.1},
     "k.q: only qloguniform knobs take q: a positive step (got 0.1 on loguniform)"),
])
def test_parse_errors_are_one_line_and_name_the_key(spec: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        spaces.parse_knob("x", spec, "k")
    assert str(err.value) == message


def test_the_table_maps_keywords_to_classes() -> None:
    assert spaces.KNOB_KEYS[:len(D.BY_NAME)] == tuple(D.BY_NAME)
    assert set(D.OPTIONS) <= set(spaces.KNOB_KEYS)
    for name, cls in D.BY_NAME.items():
        assert issubclass(cls, D.Distribution) and cls.name == name
        assert spaces.NUMERIC.count(name) == int(cls.numeric)


# -- laws not checked elsewhere -----------------------------------------------------------------------


def test_log1m_tune_form_spreads_one_minus_beta_over_its_decades() -> None:
    from ray import tune

    dist = dist_of("log1m")  # [0.5, 0.9999]: 1 - beta in 1e-4..0.5
    beta = np.array(dist.tune_domain().sample(size=20_000, random_state=np.random.default_rng(0)))
    assert all(dist.contains(b) for b in beta)
    decades = [1e-4, 1e-3, 1e-2, 1e-1]
    assert chisquare(np.histogram(1 - beta, bins=decades)[0]).pvalue > 1e-3
    # Negative control: Tune's uniform over the same range crowds 0.9-0.5.
    naive = np.array(tune.uniform(0.5, 0.9999).sample(size=20_000, random_state=0))
    assert chisquare(np.histogram(1 - naive, bins=decades)[0]).pvalue < 1e-3


def test_qloguniform_is_log_uniform_rounded_to_its_step() -> None:
    lo, hi, q, n = 1e-3, 1.0, 1e-3, 20_000
    dist = dist_of("qloguniform")
    values = np.array(draws(dist, n))
    steps = values / q
    assert np.allclose(steps, np.round(steps), rtol=0, atol=1e-9)  # multiples of q ...
    assert all(v == round(v, 3) for v in values)  # ... written as such (0.007)
    # The law: the multiple k q has the log-uniform mass of [(k - 1/2) q, (k + 1/2) q] in [lo, hi].
    k = np.arange(1, 1001)
    mass = (np.log(np.minimum(hi, (k + 0.5) * q)) - np.log(np.maximum(lo, (k - 0.5) * q)))
    edges = np.geomspace(lo, hi, 7)  # half-decades
    expected = np.histogram(np.round(k * q, 3), bins=edges, weights=mass / math.log(hi / lo))[0]
    assert expected.sum() == pytest.approx(1.0)

    def fits(sample) -> bool:
        counts = np.histogram(sample, bins=edges)[0]
        return chisquare(counts, expected * counts.sum()).pvalue > 1e-3

    assert fits(values)
    tune_values = dist.tune_domain().sample(size=n, random_state=np.random.default_rng(1))
    assert fits(np.array(tune_values))  # Ray's qloguniform: the same law
    # Negative controls: uniform over the multiples crowds the top decade; log-uniform multipliers
    # over [1, 1000] without the half-step at the ends (Optuna's law, not Ray's) overweigh 0.001.
    rng = np.random.default_rng(0)
    assert not fits(rng.integers(1, 1001, n) * q)
    assert not fits(np.round(np.exp(rng.uniform(math.log(0.5), math.log(1000.5), n))) * q)
