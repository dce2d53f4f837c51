"""orch report: the page and plots of a real small sweep, the importance it measures, and the page
rendered in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.report import page as report_mod
from orchestrator.space import space as spaces
from orchestrator.tune import plan
from tests.conftest import CONFIG, orch, store_rows

STUDY = "test-report"
SMALL = [f"study={STUDY}", "ray.num_cpus=2"]
KNOBS = ["lr", "batch_size", "hidden", "layers", "dropout", "beta1", "beta2", "eps"]  # search_spaces/mlp_adam.yaml


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, str, str]:
    """A store with two sweeps of the study; the second wrote its report itself (stdout returned)."""
    store = tmp_path_factory.mktemp("report") / "store"
    first = orch("sweep", CONFIG, *SMALL, "search.num_samples=4", "scheduler.max_epochs=2", "--store", store)
    assert first.returncode == 0, first.stderr
    second = orch("sweep", CONFIG, *SMALL, "search.num_samples=14", "scheduler.max_epochs=4",
                  "scheduler.grace_period=1", "search.seed=3", "--store", store, env={"ORCH_NO_REPORT": "0"})
    assert second.returncode == 0, second.stderr
    sweep_id = re.search(r"Sweep (\S+) of", second.stdout).group(1)
    return store, sweep_id, second.stdout


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.table_classes: list[str] = []
        self._cell: list[str] | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "table":
            self.tables.append([])
            self.table_classes.append(a.get("class", ""))
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


@pytest.mark.slow
def test_sweep_writes_its_report_and_the_page_holds_every_plot(swept) -> None:
    store, sweep_id, stdout = swept
    m = re.search(r"^Report: (.+report\.html)$", stdout, re.M)
    assert m, stdout
    page_path = Path(m.group(1))
    assert page_path == store / "reports" / STUDY / sweep_id / "report.html"
    out = page_path.parent
    pngs = {p.name: p.stat().st_size for p in out.glob("*.png")}
    assert set(pngs) == {"learning_curves.png", "knobs.png", "parallel_coordinates.png", "importance.png",
                         "study_history.png"}
    assert min(pngs.values()) > 15_000, pngs  # real plots, not empty canvases

    page = _Page()
    page.feed(page_path.read_text())
    # Every plot is embedded in the page (it opens offline): the same PNG bytes.
    import base64

    embedded = sorted(len(base64.b64decode(src.split(",", 1)[1])) for src in page.images)
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert embedded == sorted(pngs.values())
    text = " ".join(page.text)
    for knob in KNOBS:
        assert knob in text, knob
    # The importance table lists every sampled knob once, with its tier.
    importance = page.tables[page.table_classes.index("importance")]
    assert importance[0] == ["knob", "tier", "importance", "rank"]
    rows = {r[0]: r for r in importance[1:]}
    assert set(rows) == set(KNOBS)
    assert rows["lr"][1] == "A" and rows["eps"][1] == "D"
    shares = [float(r[2].rstrip("%")) for r in rows.values()]
    assert abs(sum(shares) - 100) < 1 and sorted(int(r[3]) for r in rows.values()) == list(range(1, len(KNOBS) + 1))
    # The summary counts the trials the store holds, by status.
    trials = store_rows(store, "trials")
    trials = trials[trials["sweep_id"] == sweep_id]
    status = next(t for t in page.tables if t and t[0] == ["status", "trials"])
    counted = {r[0]: int(r[1]) for r in status[1:]}
    assert counted["total"] == len(trials) == 14
    assert counted["stopped early"] == (trials["status"] == "stopped_early").sum()
    assert "saved by early stopping" in text
    # The study's history names both sweeps.
    assert text.count(sweep_id) >= 2 and len({s for s in store_rows(store, "sweeps")["sweep_id"]}) == 2


@pytest.mark.slow
def test_report_command_for_an_older_sweep_and_its_errors(swept, tmp_path: Path) -> None:
    store, sweep_id, _ = swept
    first = sorted(set(store_rows(store, "sweeps")["sweep_id"]) - {sweep_id})[0]
    res = orch("report", STUDY, "--store", store, "--sweep", first, "--out", tmp_path / "r")
    assert res.returncode == 0, res.stderr
    assert f"Report of sweep {first} of {STUDY}: {tmp_path / 'r' / 'report.html'}" in res.stdout
    # 4 trials: too few to measure importance, and the page says so instead of plotting noise.
    assert not (tmp_path / "r" / "importance.png").exists()
    assert "Too few usable trials" in (tmp_path / "r" / "report.html").read_text()

    bad = orch("report", "no-such-study", "--store", store)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert bad.stderr.startswith("orch: error: no finished sweep of study 'no-such-study'") and STUDY in bad.stderr
    bad = orch("report", STUDY, "--store", store, "--sweep", "20990101-000000-beef")
    assert bad.returncode == 2 and "--sweep" in bad.stderr and "Traceback" not in bad.stderr


def _fake_sweep(n: int, seed: int = 0):
    """A sweep of ``n`` trials whose objective depends on lr (strongly) and dropout (weakly) only."""
    cfg = plan.load(CONFIG)
    space = spaces.compile_space(cfg)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        c = space.sample(rng)
        y = (np.log10(c["lr"]) + 2.5) ** 2 + 0.3 * c["dropout"] + rng.normal(0, 0.01)
        rows.append({"trial_id": f"t{i}", "status": "completed", "best_val_loss": y, "collapsed": False,
                     **{f"config.{k}": v for k, v in c.items()}})
    row = pd.Series({"sweep_id": "s", "metric": "val_loss", "mode": "min"})
    return report_mod._Sweep("x", row, cfg, space, pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame(),
                             pd.DataFrame(), "val_loss", "min")


def test_importance_finds_the_knob_the_objective_depends_on() -> None:
    items, r2 = report_mod.importance(_fake_sweep(120))
    ranked = sorted(items, key=lambda i: i.rank)
    assert ranked[0].knob == "lr" and ranked[0].importance > 0.6
    assert ranked[1].knob == "dropout"
    assert r2 is not None and r2 > 0.7


def test_tier_suggestions_speak_only_where_the_order_disagrees_and_the_surrogate_fits() -> None:
    Imp = report_mod.Importance
    agree = [Imp("lr", "A", 0.6, 1), Imp("batch_size", "B", 0.3, 2), Imp("dropout", "C", 0.1, 3)]
    assert report_mod.tier_suggestions(agree, 0.8) == []
    disagree = [Imp("lr", "A", 0.1, 2), Imp("batch_size", "C", 0.85, 1), Imp("dropout", "C", 0.05, 3)]
    lines = report_mod.tier_suggestions(disagree, 0.8)
    assert lines[0].startswith("batch_size mattered more than its tier C") and "lr (tier A" in lines[0]
    assert report_mod.tier_suggestions(disagree, 0.1) == []  # the surrogate explains too little
    assert report_mod.tier_suggestions(disagree, None) == []


def test_asha_rungs_are_the_epochs_it_compares_at() -> None:
    cfg = plan.load(CONFIG, ["scheduler.grace_period=2", "scheduler.reduction_factor=3",
                                   "scheduler.max_epochs=30"])
    assert report_mod.rungs(cfg) == [2, 6, 18]
    assert report_mod.rungs(plan.load(CONFIG, ["scheduler.name=fifo"])) == []


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian's chromium package) on this machine")
@pytest.mark.slow
def test_report_renders_in_headless_chromium(swept, tmp_path: Path) -> None:
    store, sweep_id, _ = swept
    page = store / "reports" / STUDY / sweep_id / "report.html"
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
              "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The page's own check, run after load: every image decoded.
    assert re.search(r'data-images="5"', dom.stdout), dom.stdout[-500:]
    assert 'data-broken-images="0"' in dom.stdout
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    shot = tmp_path / "report.png"
    res = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1200)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # plots, not a blank or error page
