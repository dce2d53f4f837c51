"""Queries over the results store behind ``orch results`` and ``orch best``.

The store may be a local directory or a prefix in object storage (``s3://bucket/prefix``): every
path here is a :class:`~pathlib.Path` or an :class:`~orchestrator.store.fs.ObjectPath`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import yaml

from orchestrator.config import models, schema
from orchestrator.errors import UserError
from orchestrator.names import check_name
from orchestrator.store import fs
from orchestrator.store import trials as trial_rules
from orchestrator.store.fs import AnyPath, ObjectPath
from orchestrator.store.tables import Store

Root = str | Path | ObjectPath

SWEEP_COLUMNS = ["study", "sweep_id", "ended_at", "trials", "scheduler", "searcher", "metric", "best_value",
                 "best_trial_id", "best_config"]


def _varied_knobs(trials: pd.DataFrame) -> list[str]:
    """The config columns that differ between a sweep's trials (the knobs it searched)."""
    cols = [c for c in trials.columns if c.startswith("config.")]
    return [c for c in cols if trials[c].astype(str).nunique(dropna=False) > 1]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def sweeps_table(root: Root, study: str | None = None) -> pd.DataFrame:
    """One row per sweep, newest first, with its best trial and that trial's searched knobs."""
    store = Store(root)
    if not store.root.is_dir():
        why = ""
        if isinstance(store.root, ObjectPath):
            from orchestrator.store.maintenance import missing_reason

            why = missing_reason(store.root)
        raise UserError(f"--store: no results store at {store.root}{why}")
    sweeps = store.sweeps(study)
    if study is not None and sweeps.empty:
        known = sorted(store.sweeps()["study"].unique()) if store.files("sweeps") else []
        raise UserError(f"--study: no sweeps of study {study!r} in {store.root}; "
                        f"studies: {', '.join(known) or '(none)'}")
    if sweeps.empty:
        return pd.DataFrame(columns=SWEEP_COLUMNS)
    trials = store.trials(study)
    rows = []
    for _, s in sweeps.iterrows():
        mine = (trials[(trials["study"] == s["study"]) & (trials["sweep_id"] == s["sweep_id"])]
                if len(trials) else trials)
        best_config = ""
        if len(mine) and s.get("best_trial_id") in set(mine["trial_id"]):
            best = mine[mine["trial_id"] == s["best_trial_id"]].iloc[0]
            best_config = " ".join(f"{c[7:]}={_fmt(best[c])}" for c in _varied_knobs(mine) if not pd.isna(best[c]))
        rows.append({
            "study": s["study"], "sweep_id": s["sweep_id"], "ended_at": s["ended_at"],
            "trials": len(mine), "scheduler": s["scheduler"], "searcher": s.get("searcher"),
            "metric": f"{s['metric']} ({s['mode']})",
            "best_value": s["best_value"], "best_trial_id": s["best_trial_id"], "best_config": best_config,
        })
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


def stages_text(root: Root, study: str | None = None) -> str:
    """For each coarse-to-fine sweep: the range every stage sampled, newest sweep first."""
    store = Store(root)
    if not store.files("sweeps", study):
        return ""
    sweeps = store.sweeps(study)
    if "stages" not in sweeps.columns:
        return ""
    lines = []
    for _, s in sweeps.sort_values("ended_at", ascending=False, kind="stable").iterrows():
        if not isinstance(s["stages"], str) or not s["stages"]:
            continue
        lines.append(f"\nStages of sweep {s['sweep_id']} ({s['study']}):")
        for stage in json.loads(s["stages"]):
            ranges = ", ".join(f"{k} {_range(v)}" for k, v in stage["ranges"].items())
            lines.append(f"  {stage['stage']}: {stage['trials']} trials: {ranges}")
    return "\n".join(lines) + ("\n" if lines else "")


def _range(bounds: list[Any]) -> str:
    if len(bounds) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
        return f"{_fmt(bounds[0])}..{_fmt(bounds[1])}"
    return "{" + ", ".join(str(b) for b in bounds) + "}"


def render(df: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return df.to_json(orient="records", date_format="iso", indent=2) + "\n"
    if df.empty:
        return "No sweeps yet. Run one with: orch sweep conf/tabular.yaml\n"
    shown = df.copy()
    shown["ended_at"] = pd.to_datetime(shown["ended_at"]).dt.strftime("%Y-%m-%d %H:%M")
    shown["best_value"] = shown["best_value"].map(lambda v: "" if pd.isna(v) else f"{v:.5g}")
    buf = io.StringIO()
    buf.write(shown.to_string(index=False, justify="left", max_colwidth=80))
    buf.write("\n")
    return buf.getvalue()


def best_trial(root: Root, study: str, sweep_id: str | None = None) -> tuple[pd.Series, pd.Series]:
    """(sweep row, trial row) of the best trial of a study (or of one of its sweeps)."""
    store = Store(root)
    sweeps = store.sweeps(study)
    if sweeps.empty:
        known = sorted(store.sweeps()["study"].unique()) if store.files("sweeps") else []
        raise UserError(f"study {study!r} has no finished sweeps in {store.root}; "
                        f"studies: {', '.join(known) or '(none)'}")
    if sweep_id is not None:
        sweeps = sweeps[sweeps["sweep_id"] == sweep_id]
        if sweeps.empty:
            raise UserError(f"--sweep: no sweep {sweep_id!r} in study {study!r}")
    sweeps = sweeps.dropna(subset=["best_trial_id", "best_value"])
    if sweeps.empty:
        raise UserError(f"study {study!r}: no sweep produced a usable trial")
    s = sweeps.iloc[0] if sweep_id is not None else _promoted(sweeps)
    trials = store.trials(study, sweep_id=s["sweep_id"])
    match = trials[trials["trial_id"] == s["best_trial_id"]]
    if match.empty:
        raise UserError(f"study {study!r}: best trial {s['best_trial_id']} of sweep {s['sweep_id']} "
                        "is missing from the trials table")
    return s, match.iloc[0]


def _promoted(sweeps: pd.DataFrame) -> pd.Series:
    """The study's current best sweep: the newest promoted one (a re-tune that did not beat the
    best is not promoted); for sweeps recorded before promotion existed, the best value."""
    if "promoted" in sweeps.columns and sweeps["promoted"].fillna(False).astype(bool).any():
        promoted = sweeps[sweeps["promoted"].fillna(False).astype(bool)]
        return promoted.sort_values("ended_at", kind="stable").iloc[-1]
    return trial_rules.ranked(sweeps, "best_value", sweeps["mode"].iloc[0]).iloc[0]


def current_best(root: Root, study: str) -> pd.Series | None:
    """The sweeps row of the study's current best, or None when it has none yet."""
    store = Store(root)
    if not store.files("sweeps", study):
        return None
    sweeps = store.sweeps(study).dropna(subset=["best_trial_id", "best_value"])
    return _promoted(sweeps) if len(sweeps) else None


def write_best_file(root: Root, study: str) -> AnyPath:
    """``<store>/best/<study>.yaml``: the current best config, for other programs (atomic)."""
    import os
    import tempfile

    text = best_yaml(root, study)
    path = Store(root).path("best", f"{check_name(study, 'study')}.yaml")
    if isinstance(path, ObjectPath):
        fs.write_bytes_atomic(path, text.encode())  # one upload
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def best_yaml(root: Root, study: str, sweep_id: str | None = None) -> str:
    """The best trial's hyperparameters as a config fragment (model: and train: sections)."""
    from orchestrator.config import load as config_mod

    s, t = best_trial(root, study, sweep_id)
    cfg = config_mod.from_yaml(s["config_yaml"])
    sections = schema.hyperparameter_names(cfg)
    types = schema.hyperparameter_types(cfg)
    base = schema.base_hyperparameters(cfg)
    model = models.model_id(cfg.model)
    out: dict[str, Any] = {"data": {}, "model": {"factory" if models.is_path(model) else "name": model}, "train": {},
                           "params": {}}
    for col, value in t.items():
        if not col.startswith("config.") or col[7:] not in sections:
            continue
        value = trial_rules.decode_value(value)
        if value is None and base.get(col[7:]) is not None:
            continue  # a conditional knob this trial did not carry (momentum of an Adam trial)
        # An integer column with a missing value in some trial reads back as floats (5.0): write
        # the integer, or the fragment would not load (train.patience: 5.0 is not an int).
        if isinstance(value, float) and value.is_integer() and pa.types.is_integer(types.get(col, pa.null())):
            value = int(value)
        out[sections[col[7:]]][col[7:]] = value
    for section in ("data", "params"):
        if not out[section]:
            del out[section]
    if s["scheduler"] in ("pbt", "pb2"):
        # The hyperparameters changed during training: the schedule is the result, not only the
        # last values (which are what train: holds).
        _, segments = pbt_history(root, t["trial_id"], study, s["sweep_id"])
        knobs = changing_knobs(segments) or [k for k in segments[-1]["config"] if k in sections]
        out["schedule"] = [{"epochs": seg["epochs"], **{k: seg["config"].get(k) for k in knobs}} for seg in segments]
    header = (f"# best of study {study}: sweep {s['sweep_id']}, trial {s['best_trial_id']}, "
              f"{s['metric']} = {s['best_value']:.6g} ({s['mode']})\n")
    return header + yaml.safe_dump(json.loads(json.dumps(out, default=str)), sort_keys=False)


# -- population-based training: the schedule a trial's weights were trained with --------------------


def _exploits(store: Store, study: str | None, sweep_id: str) -> pd.DataFrame:
    if not store.files("exploits", study):
        return pd.DataFrame(columns=["trial_id", "generation"])
    return store.read("exploits", study, sweep_id=sweep_id)


def pbt_history(root: Root, trial_id: str, study: str | None = None,
             sweep_id: str | None = None) -> tuple[pd.Series, list[dict[str, Any]]]:
    """(trial row, segments) of a trial of a population-based sweep.

    Each segment is ``{"epochs": [first, last], "trial": id, "config": {...}}``: the weights that
    the trial ended with were trained by ``trial`` with ``config`` over those epochs. An exploit
    copied another trial's weights at some epoch, so the earlier segments are that trial's, and so
    on back to epoch 1.
    """
    store = Store(root)
    trials = store.trials(study) if store.files("trials", study) else pd.DataFrame()
    rows = trials[trials["trial_id"] == trial_id] if len(trials) else trials
    if sweep_id is not None and len(rows):
        rows = rows[rows["sweep_id"] == sweep_id]
    if rows.empty:
        raise UserError(f"--schedule: no trial {trial_id!r} in {store.root}" + (f" (study {study})" if study else ""))
    row = rows.iloc[-1]
    exploits = _exploits(store, row["study"], row["sweep_id"])
    by_trial = {tid: g.sort_values("timestamp") for tid, g in exploits.groupby("trial_id")}
    sweeps = store.sweeps(row["study"]) if store.files("sweeps", row["study"]) else pd.DataFrame()
    sweep = sweeps[sweeps["sweep_id"] == row["sweep_id"]] if len(sweeps) else sweeps
    if len(sweep) and isinstance(sweep.iloc[0].get("search_space"), str):
        knobs = set(json.loads(sweep.iloc[0]["search_space"]))
    else:  # an unfinished sweep: the knobs its exploits name
        knobs = {k for c in exploits.get("old_config", []) for k in json.loads(c)}
    config_cols = [c for c in trials.columns if c.startswith("config.") and c[7:] in knobs]
    all_rows = trials[trials["sweep_id"] == row["sweep_id"]].set_index("trial_id")

    def initial(tid: str) -> dict[str, Any]:
        own = by_trial.get(tid)
        if own is not None and len(own):
            return {k: v for k, v in json.loads(own.iloc[0]["old_config"]).items() if k in knobs}
        r = all_rows.loc[tid]
        return trial_rules.decode_config(r, [c[7:] for c in config_cols])

    def walk(tid: str, before: pd.Timestamp | None, last: int, depth: int = 0) -> list[dict[str, Any]]:
        """The segments of ``tid``'s weights up to epoch ``last``, as they stood at time ``before``."""
        own = by_trial.get(tid)
        if own is not None and before is not None:
            own = own[own["timestamp"] < before]
        if own is None or own.empty or depth > 1000:
            return [{"epochs": [1, last], "trial": tid, "config": initial(tid)}]
        e = own.sort_values("timestamp").iloc[-1]  # the exploit this branch started with
        start = int(e["donor_epoch"]) + 1
        earlier = walk(e["donor_trial_id"], e["timestamp"], start - 1, depth + 1)
        config = {k: v for k, v in json.loads(e["new_config"]).items() if k in knobs}
        return earlier + [{"epochs": [start, last], "trial": tid, "config": config}]

    return row, walk(trial_id, None, int(row["epochs"]))




def changing_knobs(segments: list[dict[str, Any]]) -> list[str]:
    """The knobs whose value differs between segments."""
    keys = sorted({k for s in segments for k in s["config"]})
    return [k for k in keys if len({json.dumps(s["config"].get(k), default=str) for s in segments}) > 1]


def pbt_history_text(root: Root, trial_id: str, study: str | None = None) -> str:
    row, segments = pbt_history(root, trial_id, study)
    knobs = changing_knobs(segments)
    lines = [f"Schedule of trial {trial_id} ({row['study']}, sweep {row['sweep_id']}): "
             f"{len(segments)} segment{'s' if len(segments) != 1 else ''}, {len(segments) - 1} exploits"]
    header = ["epochs", "trained by", *knobs]
    table = [header] + [[f"{s['epochs'][0]}-{s['epochs'][1]}", s["trial"], *(_fmt(s["config"].get(k)) for k in knobs)]
                        for s in segments]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for r in table:
        lines.append("  " + "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"
