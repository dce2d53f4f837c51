"""``orch report``: what a sweep learned, as one self-contained HTML page and PNG files.

Built from the results store alone (the sweep's row, its trials, every epoch, PBT's exploits, the
study's other sweeps):

- learning curves of every trial, trials stopped early faded, ASHA's rungs (or PBT's exploits) marked;
- the objective against each knob on the knob's own scale (log, or ``1 - beta`` on a log axis),
  the best trials highlighted;
- parallel coordinates of the best trials;
- hyperparameter importance (permutation importance of a random-forest surrogate fitted to the
  trials), beside the tier each knob was given, with a line where the two disagree;
- the study's best objective per sweep over time, with each sweep's reason (re-tunes);
- a summary: best config, its validation and test metrics, trials by status, compute spent and
  compute saved by early stopping.

The page embeds its images (base64) and needs no network. It is written under the store
(``<store>/reports/<study>/<sweep_id>/``, in object storage too: each file one upload), or under
``--out``, a local directory.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from orchestrator.config import load as config_mod
from orchestrator.config.schema import TIERS, asha_rungs, grace_period_of
from orchestrator.errors import UserError
from orchestrator.names import check_name
from orchestrator.space import space as spaces
from orchestrator.space.distributions import Axis
from orchestrator.store import fs
from orchestrator.store import trials as trial_rules
from orchestrator.store.fs import AnyPath, ObjectPath
from orchestrator.store.tables import Store
from orchestrator.store.trials import TrialStatus

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from orchestrator.config.schema import SweepConfig

REPORT_DIR = "reports"
TIER_ORDER = {tier: i for i, tier in enumerate(TIERS)}
TOP_FRACTION = 0.1  # "best trials": this share of the usable trials (at least 3)
PARALLEL_TOP = 20
MIN_TRIALS_FOR_IMPORTANCE = 8


@dataclass
class Importance:
    knob: str
    tier: str | None
    importance: float  # share of the total (sums to 1 over the knobs)
    rank: int


@dataclass
class Report:
    study: str
    sweep_id: str
    html: AnyPath  # a local Path, or an ObjectPath in a store in object storage
    pngs: dict[str, AnyPath] = field(default_factory=dict)
    importance: list[Importance] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    surrogate_r2: float | None = None


@dataclass
class _Sweep:
    """Everything the plots read, from the store."""

    study: str
    row: pd.Series
    cfg: Any
    space: spaces.Space
    trials: pd.DataFrame
    metrics: pd.DataFrame
    exploits: pd.DataFrame
    sweeps: pd.DataFrame
    metric: str
    mode: str

    @property
    def sweep_id(self) -> str:
        return str(self.row["sweep_id"])

    @property
    def sign(self) -> int:
        return 1 if self.mode == "min" else -1

    @property
    def objective(self) -> str:
        return f"best_{self.metric}"

    def usable(self) -> pd.DataFrame:
        """Trials with a finite objective that did not collapse to a constant output."""
        return trial_rules.usable(self.trials, self.objective)

    def ranked(self) -> pd.DataFrame:
        return trial_rules.ranked(self.usable(), self.objective, self.mode)

    def best_ids(self) -> set[str]:
        r = self.ranked()
        n = max(3, int(math.ceil(TOP_FRACTION * len(r))))
        return set(r["trial_id"].head(n))


# -- loading --------------------------------------------------------------------------------------


def load(store_root: AnyPath, study: str, sweep_id: str | None = None) -> _Sweep:
    store = Store(store_root)
    if not store.files("sweeps", study):
        studies = sorted(p.name.split("=", 1)[1] for p in store.partitions("sweeps"))
        known = f"; studies in {store_root}: {', '.join(studies)}" if studies else f"; {store_root} holds no sweeps"
        raise UserError(f"no finished sweep of study '{study}'{known}")
    sweeps = store.sweeps(study).sort_values("started_at")
    if sweep_id:
        match = sweeps[sweeps["sweep_id"] == sweep_id]
        if not len(match):
            raise UserError(f"--sweep: study '{study}' has no finished sweep '{sweep_id}' "
                            f"(newest: {', '.join(sweeps['sweep_id'].tail(3))})")
        row = match.iloc[-1]
    else:
        row = sweeps.iloc[-1]
    cfg = config_mod.from_yaml(row["config_yaml"])
    space = spaces.compile_space(cfg)
    trials = store.trials(study, sweep_id=row["sweep_id"])
    metrics = store.metrics(study, sweep_id=row["sweep_id"])
    exploits = (store.read("exploits", study, sweep_id=row["sweep_id"]) if store.files("exploits", study)
                else pd.DataFrame())
    return _Sweep(study, row, cfg, space, trials, metrics, exploits, sweeps, str(row["metric"]), str(row["mode"]))


# -- plots ------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 110, "axes.spines.top": False,
                         "axes.spines.right": False, "font.size": 9})
    return plt


def _limits(values: np.ndarray) -> tuple[float, float] | None:
    """y limits that keep the interesting range in view (diverged trials would flatten it)."""
    v = values[np.isfinite(values)]
    if not len(v):
        return None
    lo, hi = np.percentile(v, 0.5), np.percentile(v, 97)
    pad = 0.05 * (hi - lo or abs(hi) or 1.0)
    return lo - pad, hi + pad


def rungs(cfg: SweepConfig) -> list[int]:
    """The epochs at which ASHA (or HyperBand) compares trials."""
    s = cfg.scheduler
    if s.name not in ("asha", "hyperband"):
        return []
    return [r for r in asha_rungs(s.max_epochs, grace_period_of(s), s.reduction_factor) if r < s.max_epochs]


def plot_curves(sw: _Sweep, path: AnyPath) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    m = sw.metrics
    status = dict(zip(sw.trials["trial_id"], sw.trials["status"], strict=True))
    best = sw.best_ids()
    top = sw.ranked()["trial_id"].head(1).tolist()
    shown = np.array([])
    if len(m) and sw.metric in m.columns:
        m = m.sort_values(["trial_id", "generation", "epoch"] if "generation" in m.columns else ["trial_id", "epoch"])
        for tid, g in m.groupby("trial_id", sort=False):
            y = pd.to_numeric(g[sw.metric], errors="coerce").to_numpy(float)
            x = g["epoch"].to_numpy()
            st = status.get(tid, TrialStatus.COMPLETED)
            if tid in top:
                continue  # drawn last, on top
            if st == TrialStatus.STOPPED_EARLY:
                ax.plot(x, y, color="0.55", alpha=0.25, lw=0.8)
            elif st == TrialStatus.DIVERGED:
                ax.plot(x, y, color="#c0392b", alpha=0.35, lw=0.8, ls="--")
            elif tid in best:
                ax.plot(x, y, color="#2471a3", alpha=0.9, lw=1.3)
            else:
                ax.plot(x, y, color="#5dade2", alpha=0.55, lw=0.9)
            shown = np.concatenate([shown, y])
        for tid in top:
            g = m[m["trial_id"] == tid]
            y = pd.to_numeric(g[sw.metric], errors="coerce").to_numpy(float)
            ax.plot(g["epoch"], y, color="#d35400", lw=2.2, label=f"best trial {tid}")
            shown = np.concatenate([shown, y])
    for i, r in enumerate(rungs(sw.cfg)):
        ax.axvline(r, color="0.3", ls=":", lw=1, label="ASHA rungs" if i == 0 else None)
    if len(sw.exploits) and len(m):
        pts = sw.exploits.merge(m[["trial_id", "epoch", sw.metric]], on=["trial_id", "epoch"], how="left")
        ax.scatter(pts["epoch"], pts[sw.metric], marker="x", color="#8e44ad", s=22, zorder=5, label="PBT exploits")
    lim = _limits(shown)
    if lim:
        ax.set_ylim(*lim)
    ax.plot([], [], color="0.55", alpha=0.5, label="stopped early")
    ax.plot([], [], color="#2471a3", label=f"best {len(best)} trials")
    if (sw.trials["status"] == TrialStatus.DIVERGED).any():
        ax.plot([], [], color="#c0392b", ls="--", label="diverged")
    ax.set_xlabel("epoch")
    ax.set_ylabel(sw.metric)
    ax.set_title(f"Learning curves: {len(sw.trials)} trials of sweep {sw.sweep_id}")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _save(fig: Any, path: AnyPath) -> None:
    """Save a figure as PNG: a local file, or one upload to object storage."""
    if isinstance(path, ObjectPath):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        path.write_bytes(buffer.getvalue())
    else:
        fig.savefig(path)


def _knob_axis(knob: spaces.Knob, values: pd.Series) -> tuple[np.ndarray, str, bool]:
    """x values, axis label and whether the axis is logarithmic, for ``knob`` on its own scale."""
    axis = knob.distribution.axis()
    v = pd.to_numeric(values, errors="coerce").to_numpy(float)
    return axis.transform(v), axis.label(knob.name), axis.scale == "log"


def plot_knobs(sw: _Sweep, path: AnyPath) -> list[str]:
    """Objective against every searched knob; returns the knobs drawn."""
    plt = _plt()
    knobs = [sw.space.knobs[k] for k in sw.space.searched]
    t = sw.trials[sw.trials["status"] != TrialStatus.ERROR] if len(sw.trials) else sw.trials
    y_all = pd.to_numeric(t.get(sw.objective, pd.Series(dtype=float)), errors="coerce").to_numpy(float)
    best = sw.best_ids()
    cols = 3
    rows = max(1, math.ceil(len(knobs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(10, 2.9 * rows), squeeze=False)
    lim = _limits(y_all)
    for ax, knob in zip(list(axes.flat)[:len(knobs)], knobs, strict=True):
        data = _config(t, knob)
        is_best = t["trial_id"].isin(best).to_numpy()
        early = (t["status"] == TrialStatus.STOPPED_EARLY).to_numpy()
        axis = knob.distribution.axis()
        if axis.scale != "category":
            x, label, log = _knob_axis(knob, data)
            if log:
                _log_axis(ax, axis)
        else:
            cats = list(axis.categories)
            pos = {c: i for i, c in enumerate(cats)}
            x = np.array([pos.get(str(v), np.nan) for v in data], dtype=float)
            x = x + np.random.default_rng(0).uniform(-0.15, 0.15, len(x))
            ax.set_xticks(range(len(cats)), [c if len(c) <= 12 else c[:11] + "…" for c in cats], rotation=20)
            label = knob.name
        ax.scatter(x[early], y_all[early], s=10, color="0.6", alpha=0.45, label="stopped early")
        rest = ~early & ~is_best
        ax.scatter(x[rest], y_all[rest], s=12, color="#5dade2", alpha=0.8, label="ran on")
        ax.scatter(x[is_best], y_all[is_best], s=26, color="#d35400", edgecolor="k", lw=0.4, zorder=4,
                   label=f"best {len(best)}")
        ax.set_xlabel(f"{label}" + (f"  (tier {knob.tier})" if knob.tier else ""))
        ax.set_ylabel(sw.objective)
        if lim:
            ax.set_ylim(*lim)
    for ax in list(axes.flat)[len(knobs):]:
        ax.axis("off")
    if knobs:
        axes.flat[0].legend(fontsize=7, frameon=False, loc="best")
    fig.suptitle(f"{sw.objective} against each knob, on the scale it was sampled on")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return [k.name for k in knobs]


def _log_axis(ax: Axes, axis: Axis) -> None:
    """A log x axis as ``axis`` asks: its base, fixed ticks (powers of two) or ticks at 1, 2 and 5
    times each power (whole numbers), plain labels where it says so."""
    from matplotlib.ticker import FixedLocator, LogLocator, NullFormatter, ScalarFormatter

    ax.set_xscale("log", base=axis.base)
    if axis.ticks:
        ax.xaxis.set_major_locator(FixedLocator(list(axis.ticks)))
    elif axis.subs:
        ax.xaxis.set_major_locator(LogLocator(base=axis.base, subs=axis.subs))
    if axis.plain:
        ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _config(trials: pd.DataFrame, knob: spaces.Knob) -> pd.Series:
    """The trials' values of ``knob`` (all missing where no trial carries it)."""
    return trials.get(f"config.{knob.name}", pd.Series([None] * len(trials), index=trials.index))


def _on_scale(knob: spaces.Knob, values: pd.Series) -> np.ndarray:
    """Values on the scale the knob was sampled on: ``forward`` of a numeric knob, the position of a
    choice; NaN where a trial has no (valid) value."""
    if knob.numeric:
        v = pd.to_numeric(values, errors="coerce").to_numpy(float)
        return np.array([knob.forward(x) if np.isfinite(x) and knob.contains(x) else np.nan for x in v])
    cats = [str(c) for c in knob.values]
    return np.array([cats.index(str(v)) if str(v) in cats else np.nan for v in values], dtype=float)


def _normalised(knob: spaces.Knob, values: pd.Series) -> np.ndarray:
    """:func:`_on_scale`, mapped onto [0, 1] over the knob's whole range."""
    u = _on_scale(knob, values)
    if knob.numeric:
        lo, hi = knob.interval()
        return (u - lo) / ((hi - lo) or 1.0)
    return u / max(1, len(knob.values) - 1)


def plot_parallel(sw: _Sweep, path: AnyPath) -> int:
    """Parallel coordinates of the best trials; returns how many are drawn."""
    plt = _plt()
    top = sw.ranked().head(PARALLEL_TOP)
    knobs = [sw.space.knobs[k] for k in sw.space.searched]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * (len(knobs) + 1)), 4.2))
    if len(top) and knobs:
        cols = [_normalised(k, _config(top, k)) for k in knobs]
        y = top[sw.objective].to_numpy(float)
        span = (y.max() - y.min()) or 1.0
        cols.append((y - y.min()) / span)
        grid = np.vstack(cols).T
        cmap = plt.get_cmap("viridis_r" if sw.mode == "min" else "viridis")
        order = np.argsort(-y * sw.sign)  # the best drawn last
        for i in order:
            colour = cmap((y[i] - y.min()) / span if sw.mode == "max" else 1 - (y[i] - y.min()) / span)
            ax.plot(range(grid.shape[1]), grid[i], color=colour, alpha=0.85, lw=1.4 if i == order[-1] else 0.9)
        axes_of = [k.distribution.axis() for k in knobs]
        labels = [a.short_label(k.name) for a, k in zip(axes_of, knobs, strict=True)]
        labels.append(sw.objective)
        ax.set_xticks(range(len(labels)), labels, rotation=20)
        for j, axis in enumerate(axes_of):
            lo, hi = axis.ends  # what the column shows at 0 and at 1
            ax.annotate(_short(lo), (j, 0), xytext=(3, -10), textcoords="offset points", fontsize=7, color="0.3")
            ax.annotate(_short(hi), (j, 1), xytext=(3, 4), textcoords="offset points", fontsize=7, color="0.3")
        ax.annotate(_short(y.min()), (len(knobs), 0), xytext=(3, -10), textcoords="offset points", fontsize=7)
        ax.annotate(_short(y.max()), (len(knobs), 1), xytext=(3, 4), textcoords="offset points", fontsize=7)
        for j in range(len(labels)):
            ax.axvline(j, color="0.8", lw=0.8, zorder=0)
    ax.set_yticks([])
    ax.set_ylim(-0.08, 1.08)
    ax.set_title(f"The best {len(top)} trials, each knob on its own scale (low at the bottom)")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return len(top)


def _short(v: Any) -> str:
    if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
        return f"{float(v):.3g}"
    return str(v)[:10]


def importance(sw: _Sweep) -> tuple[list[Importance], float | None]:
    """Permutation importance of each searched knob for the objective, from a random forest
    fitted to the sweep's trials (knobs on their own scales). Also its out-of-bag R^2."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance

    knobs = [sw.space.knobs[k] for k in sw.space.searched]
    t = sw.usable()
    if len(t) < MIN_TRIALS_FOR_IMPORTANCE or not knobs:
        return [Importance(k.name, k.tier, float("nan"), 0) for k in knobs], None
    cols = []
    for k in knobs:
        u = _on_scale(k, _config(t, k))
        fill = np.nanmedian(u) if np.isfinite(u).any() else 0.0
        cols.append(np.where(np.isfinite(u), u, fill))
    x = np.vstack(cols).T
    y = t[sw.objective].to_numpy(float)
    forest = RandomForestRegressor(n_estimators=100, min_samples_leaf=2, oob_score=True, random_state=0, n_jobs=1)
    forest.fit(x, y)
    perm = permutation_importance(forest, x, y, n_repeats=5, random_state=0, n_jobs=1)
    raw = np.clip(perm.importances_mean, 0, None)
    share = raw / raw.sum() if raw.sum() > 0 else np.full(len(raw), 1.0 / len(raw))
    order = np.argsort(-share)
    rank = {int(i): r + 1 for r, i in enumerate(order)}
    return ([Importance(k.name, k.tier, float(share[i]), rank[i]) for i, k in enumerate(knobs)],
            float(forest.oob_score_))


MIN_SURROGATE_R2 = 0.3  # below this the surrogate explains too little to argue with the tiers
MAX_SUGGESTIONS = 3


def _tier_rank(item: Importance) -> int:
    """Where ``item``'s tier stands, A first (a knob without a tier after every tier)."""
    return TIER_ORDER.get(item.tier or "", len(TIER_ORDER))


def tier_suggestions(items: list[Importance], r2: float | None) -> list[str]:
    """One line per knob whose measured importance clearly disagrees with its tier (the strongest
    few), when the surrogate explains enough of the objective to say so."""
    if r2 is None or r2 < MIN_SURROGATE_R2:
        return []
    measured = [i for i in items if i.tier in TIER_ORDER and math.isfinite(i.importance)]
    out = []
    for a in sorted(measured, key=lambda i: i.rank):
        # a mattered more than a knob of a higher tier, by a clear margin
        beaten = [b for b in measured if _tier_rank(b) < _tier_rank(a)
                  and a.importance > max(2 * b.importance, b.importance + 0.05)]
        if beaten:
            b = min(beaten, key=lambda i: (_tier_rank(i), i.importance))
            out.append(f"{a.knob} mattered more than its tier {a.tier}: {a.importance:.0%} of the importance, "
                       f"above {b.knob} (tier {b.tier}, {b.importance:.0%}); consider tier "
                       f"{b.tier} for {a.knob}")
    for b in sorted(measured, key=lambda i: i.rank):
        if b.tier == "A" and b.importance < 0.05 and len(measured) > 2:
            out.append(f"{b.knob} (tier A) mattered little in this sweep ({b.importance:.0%} of the importance): "
                       "its range may already be narrow enough")
    return out[:MAX_SUGGESTIONS]


def plot_importance(items: list[Importance], r2: float | None, path: AnyPath) -> None:
    plt = _plt()
    items = sorted([i for i in items if math.isfinite(i.importance)], key=lambda i: i.importance)
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(3, len(items)) + 1))
    colours = {"A": "#1f618d", "B": "#2e86c1", "C": "#85c1e9", "D": "#d6eaf8", None: "0.7"}
    ax.barh([f"{i.knob} ({i.tier or '-'})" for i in items], [i.importance for i in items],
            color=[colours.get(i.tier, "0.7") for i in items], edgecolor="0.3", lw=0.5)
    ax.set_xlabel("share of the importance (permutation importance of a random-forest surrogate)")
    fit = f"; surrogate out-of-bag R\u00b2 {r2:.2f}" if r2 is not None else ""
    ax.set_title(f"Hyperparameter importance (tier in brackets){fit}")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_history(sw: _Sweep, path: AnyPath) -> None:
    plt = _plt()
    s = sw.sweeps.copy()
    s["t"] = pd.to_datetime(s["started_at"], utc=True)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    promoted = s["promoted"].fillna(False).astype(bool) if "promoted" in s.columns else pd.Series(True, index=s.index)
    ax.plot(s["t"], s["best_value"], color="0.7", lw=1, zorder=1)
    ax.scatter(s.loc[~promoted, "t"], s.loc[~promoted, "best_value"], facecolor="white", edgecolor="#2471a3",
               s=40, zorder=3, label="kept the study's best")
    ax.scatter(s.loc[promoted, "t"], s.loc[promoted, "best_value"], color="#2471a3", s=40, zorder=3,
               label="became the study's best")
    for _, r in s.iterrows():
        ax.annotate(str(r.get("reason") or "manual"), (r["t"], r["best_value"]), xytext=(4, 6),
                    textcoords="offset points", fontsize=8, rotation=20)
    here = s[s["sweep_id"] == sw.sweep_id]
    ax.scatter(here["t"], here["best_value"], marker="*", s=160, color="#d35400", zorder=4, label="this sweep")
    ax.set_ylabel(f"best {sw.metric}")
    ax.set_title(f"Study {sw.study}: best {sw.metric} of each sweep, with why it ran")
    ax.legend(fontsize=8, frameon=False)
    fig.autofmt_xdate()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


# -- summary --------------------------------------------------------------------------------------


def summary(sw: _Sweep) -> dict[str, Any]:
    t = sw.trials
    counts = t["status"].value_counts().to_dict() if len(t) else {}
    if "collapsed" in t.columns:
        counts["collapsed"] = int(t["collapsed"].fillna(False).astype(bool).sum())
    spent = float(pd.to_numeric(t.get("train_time_s"), errors="coerce").fillna(0).sum()) if len(t) else 0.0
    max_epochs = int(sw.cfg.scheduler.max_epochs)
    saved = 0.0
    early = t[t["status"] == TrialStatus.STOPPED_EARLY] if len(t) else t
    for _, r in early.iterrows():
        epochs, secs = r.get("epochs") or 0, r.get("train_time_s") or 0.0
        if epochs and secs and epochs < max_epochs:
            saved += (max_epochs - epochs) * secs / epochs
    ranked = sw.ranked()
    best = ranked.iloc[0] if len(ranked) else None
    config = {}
    scores: dict[str, Any] = {}
    if best is not None:
        config = {k: best.get(f"config.{k}") for k in sw.space.searched}
        scores = {c: best[c] for c in best.index
                  if (c.startswith("best_") or c.startswith("test_")) and pd.notna(best[c])
                  and not isinstance(best[c], (bool, np.bool_)) and not c.endswith("collapsed")}
    return {"counts": counts, "spent_s": spent, "saved_s": saved, "best": best, "config": config, "scores": scores,
            "epochs_trained": int(pd.to_numeric(t.get("epochs"), errors="coerce").fillna(0).sum()) if len(t) else 0}


# -- the page -------------------------------------------------------------------------------------


def build(store_root: str | AnyPath, study: str, sweep_id: str | None = None,
          out: str | AnyPath | None = None) -> Report:
    """Write the report of ``sweep_id`` (default: the study's newest) under ``out``; return it."""
    if sweep_id is not None:
        check_name(sweep_id, "--sweep")
    root = fs.as_path(store_root)
    sw = load(root, study, sweep_id)
    # The sweep id comes from the store's own rows: checked again before it becomes a path.
    out = fs.as_path(out) if out else Store(root).path(REPORT_DIR, check_name(study, "study"),
                                                        check_name(sw.sweep_id, "sweep id"))
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(study, sw.sweep_id, out / "report.html")
    rep.pngs["curves"] = out / "learning_curves.png"
    plot_curves(sw, rep.pngs["curves"])
    rep.pngs["knobs"] = out / "knobs.png"
    plot_knobs(sw, rep.pngs["knobs"])
    rep.pngs["parallel"] = out / "parallel_coordinates.png"
    plot_parallel(sw, rep.pngs["parallel"])
    rep.importance, rep.surrogate_r2 = importance(sw)
    rep.suggestions = tier_suggestions(rep.importance, rep.surrogate_r2)
    if any(math.isfinite(i.importance) for i in rep.importance):
        rep.pngs["importance"] = out / "importance.png"
        plot_importance(rep.importance, rep.surrogate_r2, rep.pngs["importance"])
    if len(sw.sweeps) > 1:
        rep.pngs["history"] = out / "study_history.png"
        plot_history(sw, rep.pngs["history"])
    page = _page(sw, rep, summary(sw))
    if isinstance(rep.html, ObjectPath):
        rep.html.write_text(page)  # one upload: whole or not at all
        return rep
    tmp = rep.html.with_name(f".{rep.html.name}.tmp")
    tmp.write_text(page)
    tmp.replace(rep.html)
    return rep


def _img(path: AnyPath, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    if isinstance(v, (datetime, pd.Timestamp)):
        return pd.Timestamp(v).strftime("%Y-%m-%d %H:%M UTC")
    return html.escape(str(v))


def _duration(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


def _table(rows: list[tuple], header: tuple | None = None, cls: str = "") -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}">{head}{body}</table>'


def _page(sw: _Sweep, rep: Report, s: dict[str, Any]) -> str:
    row = sw.row
    e = html.escape
    counts = s["counts"]
    order = (TrialStatus.COMPLETED, TrialStatus.STOPPED_EARLY, TrialStatus.DIVERGED, "collapsed", TrialStatus.ERROR)
    statuses = [(str(k), counts.get(str(k), 0)) for k in order]
    total = len(sw.trials)
    best = s["best"]
    best_rows = [(e(k), _fmt(v)) for k, v in s["config"].items()]
    score_rows = [(e(k), _fmt(v)) for k, v in sorted(s["scores"].items())]
    imp_rows = [(e(i.knob), e(i.tier or "-"), f"{i.importance:.1%}" if math.isfinite(i.importance) else "n/a",
                 str(i.rank) if i.rank else "-") for i in sorted(rep.importance, key=lambda i: (i.rank or 99, i.knob))]
    full = 100 * s["saved_s"] / (s["spent_s"] + s["saved_s"]) if s["spent_s"] + s["saved_s"] > 0 else 0.0
    sections = [
        f"<h1>{e(sw.study)} <span>sweep {e(sw.sweep_id)}</span></h1>",
        f'<p class="meta">{e(str(row.get("scheduler")))} scheduler, {e(str(row.get("searcher")))} search, '
        f'{total} trials, objective {e(sw.metric)} ({e(sw.mode)}), reason {e(str(row.get("reason") or "manual"))}, '
        f'started {_fmt(row.get("started_at"))}, data {e(str(row.get("data_fingerprint") or "")[:12])}</p>',
        '<section class="summary"><div>',
        "<h2>Best trial</h2>",
        (f"<p>{e(str(best['trial_id']))}: {e(sw.objective)} <b>{_fmt(best[sw.objective])}</b></p>"
         if best is not None else "<p>No usable trial.</p>"),
        _table(best_rows, ("knob", "value")) if best_rows else "",
        "</div><div><h2>Its scores</h2>",
        _table(score_rows, ("metric", "value")) if score_rows else "<p>-</p>",
        "</div><div><h2>Trials</h2>",
        _table([(k.replace("_", " "), str(n)) for k, n in statuses] + [("total", str(total))], ("status", "trials")),
        "<h2>Compute</h2>",
        _table([("trained", f"{_duration(s['spent_s'])}, {s['epochs_trained']} epochs"),
                ("saved by early stopping", f"{_duration(s['saved_s'])} ({full:.0f}% of running every trial "
                                           f"to {sw.cfg.scheduler.max_epochs} epochs)")]),
        "</div></section>",
        "<h2>Learning curves</h2>", _img(rep.pngs["curves"], "learning curves"),
        "<h2>The objective against each knob</h2>", _img(rep.pngs["knobs"], "objective against each knob"),
        "<h2>Parallel coordinates of the best trials</h2>", _img(rep.pngs["parallel"], "parallel coordinates"),
        "<h2>Hyperparameter importance</h2>",
    ]
    if "importance" in rep.pngs:
        fit = (f" The surrogate's out-of-bag R\u00b2 is {rep.surrogate_r2:.2f}"
               f"{': read the order with care' if rep.surrogate_r2 is not None and rep.surrogate_r2 < 0.3 else ''}."
               if rep.surrogate_r2 is not None else "")
        sections += [_img(rep.pngs["importance"], "hyperparameter importance"),
                     f'<p class="note">Permutation importance of a random forest fitted to the {len(sw.usable())} '
                     f'usable trials (knobs on the scales they were sampled on).{fit}</p>']
    else:
        sections.append(f'<p class="note">Too few usable trials to measure importance '
                        f"(fewer than {MIN_TRIALS_FOR_IMPORTANCE}).</p>")
    sections.append(_table(imp_rows, ("knob", "tier", "importance", "rank"), cls="importance"))
    if rep.suggestions:
        sections.append("<ul class=\"suggest\">" + "".join(f"<li>{e(x)}</li>" for x in rep.suggestions) + "</ul>")
    if "history" in rep.pngs:
        hist = [(e(str(r["sweep_id"])), _fmt(r["started_at"]), e(str(r.get("reason") or "manual")),
                 _fmt(r["best_value"]), "yes" if bool(r.get("promoted")) else "")
                for _, r in sw.sweeps.iloc[::-1].iterrows()]
        sections += ["<h2>Study history</h2>", _img(rep.pngs["history"], "study history"),
                     _table(hist, ("sweep", "started", "reason", f"best {sw.metric}", "became best"))]
    body = "\n".join(sections)
    version = e(str(row.get("orch_version") or ""))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>orch report: {e(sw.study)} {e(sw.sweep_id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }}
h1 span {{ font-weight: normal; color: #777; font-size: 0.6em; }}
h2 {{ border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }}
.meta, .note {{ color: #555; }}
img {{ max-width: 100%; display: block; margin: .5em 0; }}
table {{ border-collapse: collapse; margin: .4em 0; font-size: .9em; }}
td, th {{ border: 1px solid #ddd; padding: .25em .6em; text-align: left; }}
.summary {{ display: grid; grid-template-columns: repeat(3, max-content); gap: 0 3em; }}
.suggest li {{ color: #8a4b00; }}
</style></head>
<body>
{body}
<p class="note">Written by orch {version} from the results store; {json.dumps(len(rep.pngs))} plots.</p>
<script>
window.addEventListener("load", function () {{
  var imgs = Array.from(document.images);
  var broken = imgs.filter(function (i) {{ return !(i.complete && i.naturalWidth > 0); }}).length;
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-broken-images", String(broken));
}});
</script>
</body></html>
"""
