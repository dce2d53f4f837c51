"""`orch lr-find`: the learning-rate range test, its suggested lr range, and the space it writes.

The command runs as a user would (the console script in a subprocess) once on the default config;
the reading of a loss curve is checked on synthetic curves, in process.
"""

from __future__ import annotations

import csv
import math
import re
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from orchestrator.space import space as spaces
from orchestrator.train import lrfind
from orchestrator.tune import plan
from tests.conftest import CONFIG, ROOT, SMALL, cli, imported_modules, orch, store_rows

SPACE = ROOT / "search_spaces" / "mlp_adam.yaml"
SUGGESTED = re.compile(r"^Suggested lr range: loguniform \[(\S+), (\S+)\]$", re.M)
YAML_LINE = re.compile(r"^lr: \{loguniform: \[(\S+), (\S+)\], tier: A\}$", re.M)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`orch lr-find conf/tabular.yaml --out DIR --write FILE`, once for the tests of this module."""
    d = tmp_path_factory.mktemp("lr-find")
    p = orch("lr-find", CONFIG, "--out", d / "out", "--write", d / "space.yaml")
    assert p.returncode == 0, p.stderr
    return d, p


def suggested(stdout: str) -> tuple[float, float]:
    m = SUGGESTED.search(stdout)
    assert m, stdout
    return float(m.group(1)), float(m.group(2))


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], np.array(rows[1:], dtype=np.float64)


def test_digits_reaches_divergence_and_writes_the_plot_and_the_csv(digits) -> None:
    d, p = digits
    low, high = suggested(p.stdout)
    assert 0 < low < high
    assert YAML_LINE.search(p.stdout), p.stdout
    png, table = d / "out" / "tabular-digits-lr-find.png", d / "out" / "tabular-digits-lr-find.csv"
    assert str(png) in p.stdout and str(table) in p.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000

    header, rows = read_csv(table)
    assert header == ["step", "lr", "loss", "smoothed"]
    assert list(rows[:, 0]) == list(range(1, len(rows) + 1))
    lrs, losses, smoothed = rows[:, 1], rows[:, 2], rows[:, 3]
    assert lrs[0] == pytest.approx(1e-7) and np.all(np.diff(lrs) > 0) and lrs[-1] < 10
    # Stopped because it diverged: the losses rise at the end, past 4x the lowest smoothed loss.
    assert smoothed[-1] > 4 * smoothed.min()
    assert losses[-3:].mean() > 4 * losses.min()
    assert "did not" not in p.stdout and "Diverged at:" in p.stdout


def test_the_range_ends_at_half_the_divergence_lr_and_spans_two_decades(digits) -> None:
    d, p = digits
    low, high = suggested(p.stdout)
    _, rows = read_csv(d / "out" / "tabular-digits-lr-find.csv")
    printed = re.search(r"^Diverged at: +lr (\S+) .* at step (\d+)\)", p.stdout, re.M)
    assert printed, p.stdout
    divergence_lr, step = float(printed.group(1)), int(printed.group(2))
    assert rows[step - 1, 1] == pytest.approx(divergence_lr, rel=0.05)  # the step's lr, 2 digits
    assert step <= len(rows)  # the run stops at or after it (the stopping rule lags)
    assert high < divergence_lr
    assert high == pytest.approx(divergence_lr / 2, rel=0.05)  # 2 significant digits
    assert low == pytest.approx(high / 100, rel=0.05)
    # The running median of the CSV is what was read: over 4x its minimum (or back above its start) there.
    smoothed = rows[:, 3]
    assert smoothed[step - 1] > min(4 * smoothed[:step - 1].min(), smoothed[0])


def test_write_gives_a_space_the_config_accepts_with_the_other_knobs_kept(digits) -> None:
    d, p = digits
    low, high = suggested(p.stdout)
    written = d / "space.yaml"
    assert f"Wrote {written}" in p.stdout
    text = written.read_text()
    assert text.startswith("# lr range found by `orch lr-find") and "conf/tabular.yaml" in text.splitlines()[0]

    cfg = plan.load(CONFIG, [f"search_space={written}"])
    knob = spaces.compile_space(cfg).knobs["lr"]
    assert (knob.dist, knob.low, knob.high, knob.tier) == ("loguniform", low, high, "A")
    new, old = yaml.safe_load(text), yaml.safe_load(SPACE.read_text())
    assert list(new) == list(old)  # lr replaced in place, every knob in its order
    assert {k: v for k, v in new.items() if k != "lr"} == {k: v for k, v in old.items() if k != "lr"}
    assert not list(d.glob(".space.yaml.*"))  # no temporary file left


def test_write_over_an_existing_space_keeps_its_knobs_comments_and_lr_keys(tmp_path: Path) -> None:
    cfg = plan.load(CONFIG)
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent("""\
        # An SGD space.
        optimizer: {fixed: sgd}
        momentum:  {log1m: [0.5, 0.999], tier: B, default: 0.9}
        lr:        {loguniform: [1.0e-3, 1.0], tier: B, default: 0.01, when: {optimizer: sgd}}
        """))
    spec, kept = lrfind.write_space(path, cfg, 0.002, 0.2, "conf/sgd.yaml")
    assert kept == 2
    assert spec == {"loguniform": [0.002, 0.2], "tier": "B", "default": 0.01, "when": {"optimizer": "sgd"}}
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# lr range found by `orch lr-find conf/sgd.yaml` on ")
    assert lines[1] == "# An SGD space."
    assert list(yaml.safe_load(path.read_text())) == ["optimizer", "momentum", "lr"]

    # Again, with a range that leaves the old default out: the default goes, one header stays.
    spec, _ = lrfind.write_space(path, cfg, 5.0e-05, 0.005, "conf/sgd.yaml")
    assert spec == {"loguniform": [5.0e-05, 0.005], "tier": "B", "when": {"optimizer": "sgd"}}
    text = path.read_text()
    assert text.count("# lr range found by") == 1
    assert yaml.safe_load(text)["lr"]["loguniform"] == [5.0e-05, 0.005]  # floats, not strings
    cfg = plan.load(CONFIG, [f"search_space={path}", "train.optimizer=sgd"])
    assert spaces.compile_space(cfg).knobs["lr"].high == 0.005


@pytest.mark.parametrize("args, fragments", [
    (["--min-lr", "0"], ["--min-lr", "positive"]),
    (["--max-lr", "-1"], ["--max-lr", "positive"]),
    (["--min-lr", "1", "--max-lr", "0.1"], ["--min-lr", "below --max-lr"]),
    (["--min-lr", "0.1", "--max-lr", "0.1"], ["--min-lr", "below --max-lr"]),
    (["--steps", "3"], ["--steps", "at least"]),
])
def test_bad_options_are_one_line_user_errors_and_write_nothing(tmp_path: Path, args, fragments) -> None:
    out, space = tmp_path / "out", tmp_path / "space.yaml"
    p = orch("lr-find", CONFIG, *SMALL, *args, "--out", out, "--write", space, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("orch: error: "), p.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert not out.exists() and not space.exists()


def test_a_config_error_is_a_user_error_too(tmp_path: Path) -> None:
    p = orch("lr-find", CONFIG, "train.lr_schedul=cosine", "--out", tmp_path / "out", timeout=120)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr
    assert "did you mean 'train.lr_schedule'" in p.stderr
    assert not (tmp_path / "out").exists()


def test_default_out_is_the_stores_lr_find_directory(tmp_path: Path) -> None:
    run = cli("lr-find", CONFIG, *SMALL, "--steps", "30",
              env={"ORCH_STORE": str(tmp_path / "store")})
    assert run.code == 0, run.stdout + run.stderr + run.detail
    assert (tmp_path / "store" / "lr_find" / "test-iris-lr-find.png").is_file()
    assert (tmp_path / "store" / "lr_find" / "test-iris-lr-find.csv").is_file()


# -- reading a curve -----------------------------------------------------------------------------


def curve() -> tuple[np.ndarray, np.ndarray]:
    """Flat at 1 below lr 1e-2, down to 0.5 at 0.1, then up steeply (256x a decade)."""
    lrs = np.logspace(-7, 1, 200)
    down = 1.0 - 0.5 * np.clip(np.log10(lrs / 1e-2), 0, 1)
    losses = np.where(lrs <= 0.1, down, 0.5 * (lrs / 0.1) ** 8)
    return lrs, losses


def test_suggest_on_a_synthetic_curve_finds_divergence_just_past_its_minimum() -> None:
    lrs, losses = curve()
    found = lrfind.suggest(lrs, losses)
    assert found.diverged
    assert 0.1 < found.divergence_lr < 0.15  # a centred median does not lag
    assert 0.05 < found.min_loss_lr < 0.2
    assert 1e-2 <= found.steepest_lr <= 0.1
    assert found.high == lrfind.round_sig(found.divergence_lr / 2) < found.divergence_lr
    assert found.low == lrfind.round_sig(found.high / 100)
    assert yaml.safe_load(lrfind.number(found.low)) == found.low  # a YAML float


def test_suggest_without_divergence_uses_the_last_lr() -> None:
    lrs = np.logspace(-5, 0, 50)
    found = lrfind.suggest(lrs, np.linspace(2.0, 1.0, 50))
    assert not found.diverged and found.divergence_lr == lrs[-1]
    assert found.high == 0.5 and found.low == 0.005


def test_a_non_finite_loss_is_divergence() -> None:
    lrs, losses = np.logspace(-5, 0, 50), np.ones(50)
    losses[30] = math.nan
    found = lrfind.suggest(lrs, losses)
    assert found.diverged and found.divergence_step == 30 and found.divergence_lr == lrs[30]


def test_numbers_read_back_as_floats() -> None:
    for x in (5e-05, 4.8e-05, 0.0065, 0.65, 1.0, 3.0, 1.5e-10):
        text = lrfind.number(x)
        assert isinstance(yaml.safe_load(text), float) and yaml.safe_load(text) == lrfind.round_sig(x)


def test_starting_point_takes_defaults_fixed_values_and_midpoints_on_each_scale(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(textwrap.dedent("""\
        lr:           {loguniform: [1.0e-4, 1.0e-1]}
        hidden:       {int: [200, 800], log: true}
        layers:       {int: [1, 4], default: 3}
        batch_size:   {pow2: [128, 512]}
        dropout:      {uniform: [0.1, 0.5]}
        beta1:        {log1m: [0.9, 0.999]}
        weight_decay: {loguniform: [1.0e-6, 1.0e-2]}
        momentum:     {log1m: [0.5, 0.99], when: {optimizer: sgd}}
        activation:   {choice: [tanh, gelu]}
        shrink:       {fixed: 0.5}
        """))
    hp, chosen = lrfind.starting_point(plan.load(CONFIG, [f"search_space={space}"]))
    # A default wins; else the config's own value when the knob can take it (beta1 0.9); else the
    # middle on the knob's scale.
    assert chosen == {"hidden": 400, "layers": 3, "batch_size": 256, "dropout": pytest.approx(0.3),
                      "beta1": 0.9, "weight_decay": pytest.approx(1e-4), "activation": "tanh", "shrink": 0.5}
    assert hp["optimizer"] == "adam" and hp["hidden"] == 400 and "lr" not in chosen


def test_lr_find_imports_no_ray(tmp_path: Path) -> None:
    p = orch("lr-find", CONFIG, *SMALL, "--steps", "30", "--out", tmp_path,
             env={"PYTHONPROFILEIMPORTTIME": "1"}, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Suggested lr range" in p.stdout
    modules = imported_modules(p.stderr)
    assert {"orchestrator.cli", "torch"} <= modules  # (every import is listed)
    assert sorted(m for m in modules if m == "ray" or m.startswith("ray.")) == []


@pytest.mark.slow
def test_on_digits_the_suggestion_brackets_the_sweeps_best_learning_rates(tmp_path: Path) -> None:
    """The range test's suggestion against a real sweep of the same config: the best trials' lrs lie inside."""
    store = tmp_path / "store"
    p = orch("lr-find", CONFIG, "--out", tmp_path / "out")
    low, high = suggested(p.stdout)
    s = orch("sweep", CONFIG, "ray.num_cpus=2", "search.num_samples=80", "--store", store, timeout=600)
    assert s.returncode == 0, s.stderr
    trials = store_rows(store, "trials")
    trials = trials[~trials["collapsed"].astype(bool) & (trials["status"] != "diverged")]
    best = trials.sort_values("best_val_loss").head(5)["config.lr"]
    assert ((best >= low) & (best <= high)).all(), (low, high, sorted(best))
