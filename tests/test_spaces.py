"""Search spaces and searchers, tested as statistics: where do the samples go?

Each distribution test has a negative control: the same check applied to the naive way of
sampling (uniform where a log scale belongs) must fail, so the tests can tell the difference.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import chisquare

from orchestrator.config import load as config
from orchestrator.config import schema
from orchestrator.errors import ConfigError
from orchestrator.space import space as spaces
from orchestrator.tune import plan, searchers

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "conf" / "tabular.yaml"
N = 20_000


def load(*overrides: str):
    return plan.load(CONFIG, list(overrides))


def space_of(spec: dict, *overrides: str) -> spaces.Space:
    cfg = load(*overrides)
    cfg.search_space = spec
    return spaces.compile_space(cfg)


def samples(space: spaces.Space, n: int = N, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]


def even(counts, alpha: float = 1e-3) -> bool:
    """Chi-square: are the bins filled evenly?"""
    return chisquare(counts).pvalue > alpha


def decade_counts(values, lo_exp: int, hi_exp: int) -> np.ndarray:
    edges = 10.0 ** np.arange(lo_exp, hi_exp + 1)
    counts, _ = np.histogram(values, bins=edges)
    assert counts.sum() == len(values)  # nothing outside the range
    return counts


# -- distributions --------------------------------------------------------------------------------


def test_loguniform_gives_every_decade_its_share() -> None:
    sp = space_of({"lr": {"loguniform": [1e-5, 1e-1]}})
    lr = np.array([c["lr"] for c in samples(sp)])
    assert even(decade_counts(lr, -5, -1))
    # Negative control: uniform sampling of the same range puts ~90% in the top decade.
    naive = np.random.default_rng(0).uniform(1e-5, 1e-1, N)
    assert not even(decade_counts(naive, -5, -1))


def test_log1m_spreads_one_minus_beta_over_its_decades() -> None:
    sp = space_of({"beta1": {"log1m": [0.9, 0.9999]}})
    beta = np.array([c["beta1"] for c in samples(sp)])
    assert ((beta >= 0.9) & (beta <= 0.9999)).all()
    assert even(decade_counts(1 - beta, -4, -1))  # 0.9-0.99, 0.99-0.999, 0.999-0.9999 alike
    # Negative controls: beta uniform, and beta log-uniform, both crowd 0.9-0.99.
    rng = np.random.default_rng(0)
    assert not even(decade_counts(1 - rng.uniform(0.9, 0.9999, N), -4, -1))
    log_beta = np.exp(rng.uniform(math.log(0.9), math.log(0.9999), N))
    assert not even(decade_counts(1 - log_beta, -4, -1))


def test_pow2_yields_only_powers_of_two_in_range_evenly() -> None:
    sp = space_of({"batch_size": {"pow2": [16, 256]}})
    values = [c["batch_size"] for c in samples(sp)]
    assert set(values) == {16, 32, 64, 128, 256}
    assert all(isinstance(v, int) for v in values)
    assert even([values.count(p) for p in (16, 32, 64, 128, 256)])
    # Bounds that are not powers of two are an error that names the powers inside them.
    with pytest.raises(ConfigError, match=r"search_space.batch_size.pow2: bounds must be powers of two "
                                          r"\(got \[10, 100\]\); the powers of two inside are 16..64: "
                                          r"write \[16, 64\]"):
        space_of({"batch_size": {"pow2": [10, 100]}})
    with pytest.raises(ConfigError, match=r"pow2: bounds must be powers of two \(got \[5, 7\]\)$"):
        space_of({"batch_size": {"pow2": [5, 7]}})


def test_int_log_is_even_per_octave_and_int_is_even_per_value() -> None:
    sp = space_of({"hidden": {"int": [32, 511], "log": True}, "layers": {"int": [1, 4]}})
    drawn = samples(sp)
    hidden = np.array([c["hidden"] for c in drawn])
    assert hidden.dtype.kind == "i" and hidden.min() >= 32 and hidden.max() <= 511
    octaves, _ = np.histogram(hidden, bins=[32, 64, 128, 256, 512])
    assert even(octaves)
    naive, _ = np.histogram(np.random.default_rng(0).integers(32, 512, N), bins=[32, 64, 128, 256, 512])
    assert not even(naive)
    layers = [c["layers"] for c in drawn]
    assert even([layers.count(k) for k in (1, 2, 3, 4)])


def test_choice_and_fixed() -> None:
    sp = space_of({"activation": {"choice": ["relu", "gelu", "tanh"]}, "layers": {"fixed": 3}})
    drawn = samples(sp, 6000)
    acts = [c["activation"] for c in drawn]
    assert even([acts.count(a) for a in ("relu", "gelu", "tanh")])
    assert {c["layers"] for c in drawn} == {3}
    assert sp.searched == ["activation"]


def test_same_seed_same_samples() -> None:
    sp = spaces.compile_space(load())
    assert samples(sp, 50, seed=3) == samples(sp, 50, seed=3)
    assert samples(sp, 50, seed=3) != samples(sp, 50, seed=4)


# -- conditional knobs and tiers --------------------------------------------------------------------


def test_conditional_knobs_appear_exactly_when_their_condition_holds() -> None:
    sp = spaces.compile_space(load("search_space=search_spaces/mlp_any_optimizer.yaml"))
    drawn = samples(sp, 6000)
    opts = [c["optimizer"] for c in drawn]
    assert even([opts.count(o) for o in ("sgd", "adam", "adamw")])
    for c in drawn:
        sgd, adam_family = c["optimizer"] == "sgd", c["optimizer"] in ("adam", "adamw")
        assert ("momentum" in c) == sgd and ("nesterov" in c) == sgd
        assert ("beta1" in c) == adam_family and ("beta2" in c) == adam_family
        assert ("weight_decay" in c) == (c["optimizer"] == "adamw")
        assert {"lr", "batch_size", "hidden", "layers", "dropout"} <= set(c)


def test_condition_on_a_config_value() -> None:
    # mlp_adam.yaml's betas exist for Adam-family optimizers only; with SGD in the config they vanish.
    adam = spaces.compile_space(load())
    sgd = spaces.compile_space(load("train.optimizer=sgd"))
    assert "beta1" in samples(adam, 1)[0]
    assert not any("beta1" in c or "eps" in c for c in samples(sgd, 200))


def test_tiers_tune_only_the_named_tiers_and_hold_the_rest_at_their_default() -> None:
    sp = spaces.compile_space(load("search.tiers=[A]"))
    assert sp.searched == ["lr"]
    drawn = samples(sp, 200)
    assert len({c["lr"] for c in drawn}) == 200
    assert {c["batch_size"] for c in drawn} == {64} and {c["beta1"] for c in drawn} == {0.9}
    sp = spaces.compile_space(load("search.tiers=[A,B]"))
    assert sp.searched == ["lr", "batch_size", "hidden"]
    # A knob with no default and an unselected tier is dropped: the config's own value applies.
    cfg = load("search.tiers=[A]")
    cfg.search_space = {"lr": {"loguniform": [1e-4, 1e-1], "tier": "A"}, "hidden": {"int": [8, 64], "tier": "C"}}
    assert list(spaces.compile_space(cfg)) == ["lr"]


# -- zoom ---------------------------------------------------------------------------------------------


def test_zoom_narrows_each_knob_on_its_own_scale() -> None:
    sp = space_of({
        "lr": {"loguniform": [1e-5, 1e-1]},
        "beta1": {"log1m": [0.8, 0.9999]},
        "batch_size": {"pow2": [16, 1024]},
        "hidden": {"int": [10, 500]},
        "dropout": {"uniform": [0.0, 0.5]},
        "activation": {"choice": ["relu", "gelu"]},
    })
    top = [{"lr": 1e-3, "beta1": 0.99, "batch_size": 64, "hidden": 100, "dropout": 0.2, "activation": "relu"},
           {"lr": 1e-2, "beta1": 0.999, "batch_size": 128, "hidden": 120, "dropout": 0.3, "activation": "relu"}]
    z = sp.zoom(top, margin=0.1).knobs
    # lr: the decade 1e-3..1e-2, widened by 10% of the full 4 decades (0.4 decade) each side.
    assert z["lr"].low == pytest.approx(10 ** -3.4) and z["lr"].high == pytest.approx(10 ** -1.6)
    # beta1: on log(1 - beta): 1 - beta in 1e-3..1e-2, widened by 10% of log(0.2 / 1e-4).
    pad = 0.1 * math.log(0.2 / 1e-4)
    assert 1 - z["beta1"].high == pytest.approx(1e-3 * math.exp(-pad))
    assert 1 - z["beta1"].low == pytest.approx(1e-2 * math.exp(pad))
    # Powers of two stay powers of two, rounded outwards; ints stay ints.
    assert (z["batch_size"].low, z["batch_size"].high) == (32, 256)
    assert (z["hidden"].low, z["hidden"].high) == (51, 169)
    assert z["dropout"].low == pytest.approx(0.15) and z["dropout"].high == pytest.approx(0.35)
    assert z["activation"] == sp.knobs["activation"]  # choices keep every option
    # Every zoomed sample lies inside the zoomed ranges, which lie inside the original ones.
    for c in samples(spaces.Space(z), 2000):
        assert z["lr"].low <= c["lr"] <= z["lr"].high and 32 <= c["batch_size"] <= 256
    # Clipped to the original bounds.
    edge = sp.zoom([{"lr": 1e-5, "dropout": 0.5}], margin=0.2).knobs
    assert edge["lr"].low == pytest.approx(1e-5) and edge["dropout"].high == pytest.approx(0.5)


def test_zoom_ignores_values_outside_the_knobs_domain_and_keeps_powers_in_range() -> None:
    sp = space_of({"weight_decay": {"loguniform": [1e-5, 1e-1]}, "batch_size": {"pow2": [32, 256]}})
    # A point given by hand (weight_decay 0, batch size 48) may be among the best: it must not break the zoom.
    z = sp.zoom([{"weight_decay": 0.0, "batch_size": 48}, {"weight_decay": 1e-3, "batch_size": 32},
                 {"weight_decay": 2e-3, "batch_size": 256}], margin=0.1).knobs
    assert 1e-5 < z["weight_decay"].low < 1e-3 < 2e-3 < z["weight_decay"].high < 1e-1
    assert (z["batch_size"].low, z["batch_size"].high) == (32, 256)


def test_knobs_that_can_never_exist_are_not_searched() -> None:
    # Tier B only: the optimizer is held at adam, so momentum (when: sgd) can never apply.
    sp = spaces.compile_space(load("search_space=search_spaces/mlp_any_optimizer.yaml", "search.tiers=[B]"))
    assert sp.searched == ["batch_size", "hidden"]
    # A point's knob under a fixed parent is kept when the parent's value allows it.
    sp = spaces.compile_space(load("search_space=search_spaces/mlp_any_optimizer.yaml", "search.tiers=[B,D]"))
    assert sp.complete({"beta1": 0.95}) == {"beta1": 0.95}
    full = spaces.compile_space(load("search_space=search_spaces/mlp_any_optimizer.yaml"))
    assert full.complete({"optimizer": "sgd", "beta1": 0.95, "momentum": 0.9}) == {"optimizer": "sgd", "momentum": 0.9}


def test_booleans_are_not_numbers() -> None:
    knob = spaces.parse_knob("nesterov", {"choice": [False, True]})
    assert knob.contains(True) and not knob.contains(1) and not knob.contains(0)
    with pytest.raises(ConfigError, match="nesterov.default"):
        spaces.parse_knob("nesterov", {"choice": [False, True], "default": 0})


# -- grid ---------------------------------------------------------------------------------------------


def test_grid_enumerates_every_combination_respecting_conditions() -> None:
    sp = space_of({"optimizer": {"choice": ["sgd", "adam"]},
                   "momentum": {"choice": [0.5, 0.9], "when": {"optimizer": "sgd"}},
                   "batch_size": {"pow2": [32, 128]}})
    grid = sp.grid()
    assert len(grid) == (2 + 1) * 3
    assert len({tuple(sorted(c.items())) for c in grid}) == len(grid)
    assert all(("momentum" in c) == (c["optimizer"] == "sgd") for c in grid)


# -- the searcher ---------------------------------------------------------------------------------


def make_searcher(sp, n=10, stages=2, **kw):
    return searchers.SpaceSearcher(sp, metric="val_loss", mode="min", num_samples=n, seed=0,
                                   stages=stages, announce=False, **kw)


def test_stages_wait_for_the_first_stage_then_sample_the_zoomed_space(tmp_path: Path) -> None:
    sp = space_of({"lr": {"loguniform": [1e-5, 1e-1]}, "dropout": {"uniform": [0.0, 0.5]}})
    s = make_searcher(sp, n=40, stages=2, top_k=3, stages_path=str(tmp_path / "stages.json"))
    first = {f"t{i}": s.suggest(f"t{i}") for i in range(20)}
    assert all(c["_stage"] == 1 for c in first.values())
    assert s.suggest("early") is None  # stage 2 waits for stage 1 to finish
    for tid, c in first.items():  # the best trials have lr near 1e-3
        # Tune hands searchers the flattened last result: rank on the trial's best, not its last epoch.
        s.on_trial_complete(tid, {"best/val_loss": abs(math.log10(c["lr"]) + 3), "val_loss": 10 - c["lr"]})
    second = [s.suggest(f"u{i}") for i in range(20)]
    assert all(c["_stage"] == 2 for c in second)
    best3 = sorted(first.values(), key=lambda c: abs(math.log10(c["lr"]) + 3))[:3]
    lo, hi = min(c["lr"] for c in best3), max(c["lr"] for c in best3)
    pad = 0.1 * 4  # decades
    assert all(lo / 10**pad * 0.999 <= c["lr"] <= hi * 10**pad * 1.001 for c in second)
    assert s.suggest("done") == searchers.Searcher.FINISHED
    log = searchers.read_stages(tmp_path)
    assert [st["stage"] for st in log] == [1, 2] and log[0]["ranges"]["lr"] == [1e-5, 1e-1]
    assert log[1]["ranges"]["lr"][0] == pytest.approx(lo / 10**pad)


def test_searcher_saves_and_restores_mid_sweep(tmp_path: Path) -> None:
    sp = spaces.compile_space(load())
    a = make_searcher(sp, n=20, stages=1, points=[{"lr": 0.01}])
    first = [a.suggest(f"t{i}") for i in range(5)]
    assert first[0]["lr"] == 0.01
    a.save(str(tmp_path / "s.pkl"))
    rest_a = [a.suggest(f"t{i}") for i in range(5, 10)]
    b = make_searcher(sp, n=20, stages=1, points=[{"lr": 0.01}])
    b.restore(str(tmp_path / "s.pkl"))
    assert [b.suggest(f"t{i}") for i in range(5, 10)] == rest_a


# -- Optuna (tpe) ---------------------------------------------------------------------------------


def test_optuna_define_by_run_keeps_scales_and_conditions() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sp = spaces.compile_space(load("search_space=search_spaces/mlp_any_optimizer.yaml"))
    define = searchers.OptunaDefine(sp)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = []
    for _ in range(3000):
        trial = study.ask()
        drawn.append(define(trial))
        study.tell(trial, 0.0)
    for c in drawn:
        assert ("momentum" in c) == (c["optimizer"] == "sgd")
        assert ("beta1" in c) == (c["optimizer"] in ("adam", "adamw"))
        assert c["batch_size"] in (16, 32, 64, 128, 256)
    # Optuna samples 1 - momentum log-uniformly: its decades (0.5-0.9 is log10(5) of one) fill evenly.
    one_minus = np.array([1 - c["momentum"] for c in drawn if "momentum" in c])
    counts = decade_counts(one_minus, -3, 0)
    share = np.array([1, 1, math.log10(5)]) / (2 + math.log10(5))
    assert chisquare(counts, share * counts.sum()).pvalue > 1e-3
    lr = np.array([c["lr"] for c in drawn])
    assert lr.min() >= 1e-4 and lr.max() <= 0.3


def test_optuna_points_are_encoded_on_optunas_scale() -> None:
    sp = spaces.compile_space(load("search_space=search_spaces/mlp_any_optimizer.yaml"))
    point = searchers._optuna_point(sp, {"optimizer": "adam", "beta1": 0.99, "batch_size": 64, "momentum": 0.9})
    assert point["beta1__1m"] == pytest.approx(0.01) and point["batch_size__log2"] == 6
    assert "momentum" not in point and "momentum__1m" not in point  # not an Adam knob


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, overrides, words", [
    ({"momentum": {"log1m": [0.5, 0.9], "when": {"optimiser": "sgd"}}}, [],
     ["search_space.momentum.when.optimiser", "did you mean 'optimizer'"]),
    ({"lr": {"loguniform": [1e-3, 1e-1], "default": 0.5}}, [], ["search_space.lr.default", "0.5", "outside"]),
    ({"batch_size": {"pow2": [16, 64], "default": 48}}, [], ["search_space.batch_size.default", "48"]),
    ({"optimizer": {"choice": ["sgd", "adamm"]}}, [],
     ["search_space.optimizer.choice", "adamm", "did you mean 'adam'"]),
    ({"momentum": {"uniform": [0.5, 1.5]}}, [], ["search_space.momentum.uniform", "1.5"]),
    ({"lr": {"loguniform": [0.1, 0.01]}}, [], ["search_space.lr.loguniform", "low must be below high"]),
    ({"lr": {"loguniform": [0.0, 0.01]}}, [], ["search_space.lr.loguniform", "positive"]),
    ({"lr": {"logunifrom": [1e-4, 0.01]}}, [], ["search_space.lr", "unknown distribution 'logunifrom'", "loguniform"]),
    ({"optimizer": {"choice": ["sgd", "adam"]}, "momentum": {"log1m": [0.5, 0.9], "when": {"optimizer": "rmsprop"}}},
     [], ["search_space.momentum.when.optimizer", "'rmsprop' is not a value of optimizer"]),
    ({"lr": {"loguniform": [1e-4, 0.1], "when": {"momentum": 0.9}},
      "momentum": {"choice": [0.9], "when": {"lr": 0.01}}}, [], ["search_space.", "cycle"]),
    ({"lr": {"loguniform": [1e-4, 0.1], "tier": "E"}}, [], ["search_space.lr.tier", "'E'"]),
    ({"lr": {"loguniform": [1e-4, 0.1]}}, ["search.algorithm=grid"], ["search.algorithm", "grid", "search_space.lr"]),
    ({"lr": {"loguniform": [1e-4, 0.1]}}, ["search.algorithm=tpe", "search.stages=2"], ["search.stages", "random"]),
    ({"lr": {"loguniform": [1e-4, 0.1]}}, ["search.tiers=[A,X]"], ["search.tiers", "'X'"]),
    ({"lr": {"loguniform": [1e-4, 0.1]}}, ["search.zoom_margin=0"], ["search.zoom_margin", "0"]),
    ({"lr": {"loguniform": [1e-4, 0.1]}}, ["search.points_to_evaluate=[{lr: -1}]"],
     ["search.points_to_evaluate[0].lr", "-1"]),
    ({"lr": {"loguniform": [1e-4, 0.1]}}, ["search.algorithm=tpe", "search.points_to_evaluate=[{lr: 0.5}]"],
     ["search.points_to_evaluate[0].lr", "tpe", "0.5"]),
    ({"lr": {"loguniform": [1e-4, 0.1]}}, ["search.num_samples=4", "search.stages=2",
                                           "search.points_to_evaluate=[{lr: 0.01}, {lr: 0.02}, {lr: 0.03}]"],
     ["search.points_to_evaluate", "3 points", "first stage has only 2"]),
])
def test_bad_specs_name_the_knob(tmp_path: Path, spec, overrides, words) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": str(CONFIG), "search_space": spec}))
    with pytest.raises(ConfigError) as err:
        plan.load(path, overrides)
    message = str(err.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message


@pytest.mark.parametrize("name", ["mlp_adam", "mlp_sgd", "mlp_any_optimizer"])
def test_every_shipped_space_samples_with_random_and_tpe(name: str) -> None:
    import optuna

    cfg = load(f"search_space=search_spaces/{name}.yaml")
    plan = spaces.check_search(cfg)
    space = plan.space
    names = schema.hyperparameter_names(cfg)
    for c in samples(space, 200):
        assert set(c) <= set(names)
        for knob, value in c.items():
            config.check_hyperparameter(knob, knob, value)  # every sampled value is a valid setting
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    define = searchers.OptunaDefine(space)
    for i in range(15):
        trial = study.ask()
        c = define(trial)
        assert all(space.knobs[k].contains(v) for k, v in c.items())
        study.tell(trial, float(i % 4))
