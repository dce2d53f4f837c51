"""The results store's format, side by side: orch's plain Parquet store in the stable layout, the same
store in the previous layout (each file with its own rows' columns), and Delta Lake.

All three get the same rows, those of bench/store_scale.py (its generator, imported): by default
100 studies x 100 trials x 100 epochs = 1,000,000 metric rows and 10,000 trial rows, in batches of
5 finished trials, each batch one append to the metrics table and one to the trials table, as the
sweep driver's store writer flushes. (One change to the generated rows: ``val_collapsed`` is the
float the trainer reports, 0.0, not False.)

- **stable**: orch's ``Store.append`` as it is: every file of a table has the same schema (knobs
  in a ``config`` map, every task's metric columns; see orchestrator/store/layout.py).
- **previous**: ``Store.append`` without the layout step (``to_arrow``'s table as it is), as the
  previous version wrote; read by today's ``Store.read``, which reads both layouts.
- **delta**: ``deltalake.write_deltalake(..., mode="append", schema_mode="merge",
  partition_by=["study"])`` of the same typed rows (one column per knob and metric: Delta merges
  the schemas in its log); read with ``DeltaTable(...).to_pyarrow_table``.

Each batch is appended to every store in turn, and each query run on every store in turn (the
order rotating), so that the load of a shared machine falls on all of them alike. For each it times
every batch's two appends (median; first 10% of the batches against the last 10%), then, before and
after compaction, the queries of store_scale.py (median of ``--repeats`` runs; the metrics read half
as many): the best trial of every
study over the trials table (4 columns; every column) and a read of the whole metrics table; then
the compaction itself (orch: ``maintenance.compact``, in-process; Delta: ``optimize.compact()`` on
each table, then ``vacuum`` of the files it replaced, timed apart). It checks that every format
gives the same answers (the same best trials, the same number of metric rows), before and after.

    python bench/store_format.py                                    # the 1M-row store: several minutes
    python bench/store_format.py --studies 10 --json bench/out/store_format.json   # a quick run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import store_scale  # noqa: E402  (bench/store_scale.py: the rows, the column types, the queries)

from orchestrator.store import layout, maintenance  # noqa: E402
from orchestrator.store.tables import Store, to_arrow  # noqa: E402

FORMATS = ("stable", "previous", "delta")
COLUMNS = ["study", "sweep_id", "trial_id", "best_val_loss"]


def rows(rng: random.Random, sweep_id: str, first: int, n: int, epochs: int, t: Any) -> tuple[list, list]:
    """store_scale's rows of one batch, ``val_collapsed`` as the trainer reports it (a float)."""
    metrics, trials = store_scale.trial_batch(rng, sweep_id, first, n, epochs, t)
    for r in metrics:
        r["val_collapsed"] = float(r["val_collapsed"])
    return metrics, trials


@contextlib.contextmanager
def previous_layout() -> Iterator[None]:
    """``Store.append`` writes ``to_arrow``'s table as it is: the previous version's files."""
    real = layout.to_stable
    layout.to_stable = lambda table, arrow, defaults=None: arrow  # type: ignore[assignment]
    try:
        yield
    finally:
        layout.to_stable = real  # type: ignore[assignment]


class Orch:
    def __init__(self, root: Path, previous: bool) -> None:
        self.root, self.previous, self.store = root, previous, Store(root)

    def append(self, study: str, sweep_id: str, metrics: list, trials: list) -> None:
        with previous_layout() if self.previous else contextlib.nullcontext():
            self.store.append("metrics", study, metrics, sweep_id, types=store_scale.METRIC_TYPES)
            self.store.append("trials", study, trials, sweep_id, types=store_scale.CONFIG_TYPES)

    def best(self, columns: bool = True) -> pd.DataFrame:
        return store_scale.best_per_study(self.root, columns=columns)

    def metrics(self) -> pd.DataFrame:
        return Store(self.root).metrics()

    def compact(self) -> dict[str, float]:
        t = time.perf_counter()
        report = maintenance.compact(self.root)
        assert not report.errors, report.text()
        return {"compact_s": time.perf_counter() - t}

    def files(self) -> int:
        return sum(1 for _ in self.root.rglob("*.parquet"))


class Delta:
    def __init__(self, root: Path) -> None:
        self.root = root

    def table(self, name: str) -> str:
        return str(self.root / name)

    def append(self, study: str, sweep_id: str, metrics: list, trials: list) -> None:
        from deltalake import write_deltalake

        for name, batch, types in (("metrics", metrics, store_scale.METRIC_TYPES),
                                   ("trials", trials, store_scale.CONFIG_TYPES)):
            arrow = to_arrow(batch, types)
            arrow = arrow.append_column("study", pa.array([study] * arrow.num_rows, pa.string()))
            write_deltalake(self.table(name), arrow, mode="append", schema_mode="merge", partition_by=["study"])

    def read(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        from deltalake import DeltaTable

        return DeltaTable(self.table(name)).to_pyarrow_table(columns=columns).to_pandas()

    def best(self, columns: bool = True) -> pd.DataFrame:
        trials = self.read("trials", COLUMNS if columns else None)[COLUMNS]
        trials["study"] = trials["study"].astype(str)
        best = trials.loc[trials.groupby("study", sort=True)["best_val_loss"].idxmin()]
        return best.reset_index(drop=True)

    def metrics(self) -> pd.DataFrame:
        return self.read("metrics")

    def compact(self) -> dict[str, float]:
        from deltalake import DeltaTable

        out = {"compact_s": 0.0, "vacuum_s": 0.0}
        for name in ("metrics", "trials"):
            t = time.perf_counter()
            DeltaTable(self.table(name)).optimize.compact()
            out["compact_s"] += time.perf_counter() - t
            t = time.perf_counter()
            DeltaTable(self.table(name)).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
            out["vacuum_s"] += time.perf_counter() - t
        return out

    def files(self) -> int:
        return sum(1 for p in self.root.rglob("*.parquet") if "_delta_log" not in p.parts)


def build(formats: dict[str, Orch | Delta], studies: int, trials_per_study: int, epochs: int,
          batch_trials: int) -> dict[str, list[float]]:
    """store_scale.build's batches (its generator, the same seed: the same rows), each appended to
    every format in turn (the order rotating), so that the machine's load falls on all alike.
    Returns the seconds of each batch's two appends, per format."""
    rng = random.Random(0)
    times: dict[str, list[float]] = {name: [] for name in formats}
    i = 0
    for s in range(studies):
        study = f"study-{s:03d}"
        sweep_id = f"20261101-{s:06d}-{rng.getrandbits(16):04x}"
        started = store_scale.T0 + timedelta(hours=s)
        for b in range(0, trials_per_study, batch_trials):
            n = min(batch_trials, trials_per_study - b)
            metrics, trials = rows(rng, sweep_id, b, n, epochs, started + timedelta(minutes=b))
            for name in rotated(list(formats), i):
                t = time.perf_counter()
                formats[name].append(study, sweep_id, metrics, trials)
                times[name].append(time.perf_counter() - t)
            i += 1
    return times


def rotated(names: list[str], i: int) -> list[str]:
    k = i % len(names)
    return names[k:] + names[:k]


QUERIES = ("best per study (trials, 4 columns)", "best per study (trials, all columns)",
           "read metrics (all rows, all columns)")


def queries(formats: dict[str, Orch | Delta], repeats: int) -> tuple[dict[str, dict], dict[str, dict]]:
    """Each query's runs, formats in turn (rotating); per format: {query: figures}, {query: answer}."""
    runs: dict[str, dict[str, list[float]]] = {name: {q: [] for q in QUERIES} for name in formats}
    answers: dict[str, dict[str, Any]] = {name: {} for name in formats}
    for q in QUERIES:
        for r in range(max(1, repeats // 2) if q.startswith("read metrics") else repeats):
            for name in rotated(list(formats), r):
                fmt = formats[name]
                fn = {QUERIES[0]: fmt.best, QUERIES[1]: lambda fmt=fmt: fmt.best(columns=False),
                      QUERIES[2]: fmt.metrics}[q]
                t = time.perf_counter()
                answers[name][q] = fn()
                runs[name][q].append(time.perf_counter() - t)
    figures = {name: {q: {"median_s": statistics.median(v), "runs_s": v} for q, v in per.items()}
               for name, per in runs.items()}
    return figures, answers


def size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def same_best(a: pd.DataFrame, b: pd.DataFrame) -> None:
    cols = COLUMNS
    a = a[cols].assign(study=a["study"].astype(str)).reset_index(drop=True)
    b = b[cols].assign(study=b["study"].astype(str)).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)


def run(base: Path, names: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    formats: dict[str, Orch | Delta] = {
        name: Delta(base / name) if name == "delta" else Orch(base / name, previous=name == "previous")
        for name in names}
    t = time.perf_counter()
    times = build(formats, args.studies, args.trials_per_study, args.epochs, args.batch_trials)
    print(f"Built {len(names)} stores in {time.perf_counter() - t:.1f}s", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for name, fmt in formats.items():
        ts = times[name]
        n, tenth = len(ts), max(1, len(ts) // 10)
        results[name] = {
            "append_total_s": sum(ts), "batches": n, "append_median_s": statistics.median(ts),
            "append_first_10pct_median_s": statistics.median(ts[:tenth]),
            "append_last_10pct_median_s": statistics.median(ts[-tenth:]),
            "append_p90_s": statistics.quantiles(ts, n=10)[-1] if n > 1 else ts[0],
            "append_s": ts, "files_before": fmt.files(), "bytes_before": size(fmt.root),
        }
    before, answers_before = queries(formats, args.repeats)
    for name, fmt in formats.items():
        results[name]["before"] = before[name]
        results[name]["compaction"] = fmt.compact()
        results[name]["files_after"], results[name]["bytes_after"] = fmt.files(), size(fmt.root)
        print(f"{name}: compaction {results[name]['compaction']}", flush=True)
    after, answers_after = queries(formats, args.repeats)
    # Every format gives the same answers, and compaction kept every row and every answer.
    rows_expected = args.studies * args.trials_per_study * args.epochs
    reference = answers_before[names[0]][QUERIES[0]]
    for name in names:
        results[name]["after"] = after[name]
        for answers in (answers_before[name], answers_after[name]):
            same_best(reference, answers[QUERIES[0]])
            same_best(reference, answers[QUERIES[1]])
            assert len(answers[QUERIES[2]]) == rows_expected, (name, len(answers[QUERIES[2]]))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=100)
    ap.add_argument("--trials-per-study", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch-trials", type=int, default=5, help="Finished trials per append (one file per table).")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--formats", default=",".join(FORMATS), help=f"Which of {', '.join(FORMATS)} (comma-separated).")
    ap.add_argument("--store", default=None,
                    help="Where to build the stores (default: a temporary directory, removed).")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise SystemExit(f"--formats: unknown {', '.join(unknown)}; valid: {', '.join(FORMATS)}")

    tmp = None if args.store else tempfile.mkdtemp(prefix="orch-store-format-")
    base = Path(args.store or tmp)
    if any((base / f).exists() for f in formats):
        raise SystemExit(f"{base} holds a store of a previous run: give a new --store")
    try:
        results = run(base, formats, args)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{args.studies} studies x {args.trials_per_study} trials x {args.epochs} epochs = "
          f"{args.studies * args.trials_per_study * args.epochs:,} metric rows, "
          f"{args.studies * args.trials_per_study:,} trial rows, {results[formats[0]]['batches']:,} batches")
    print("\n| figure | " + " | ".join(formats) + " |")
    print("|---|" + "---|" * len(formats))

    def line(label: str, fn: Callable[[dict[str, Any]], str]) -> None:
        print(f"| {label} | " + " | ".join(fn(results[f]) for f in formats) + " |")

    line("append per batch, median (ms)", lambda r: f"{1000 * r['append_median_s']:.1f}")
    line("append, first 10% / last 10% of the batches (ms)",
         lambda r: f"{1000 * r['append_first_10pct_median_s']:.1f} / {1000 * r['append_last_10pct_median_s']:.1f}")
    line("all appends (s)", lambda r: f"{r['append_total_s']:.1f}")
    line("files before / after compaction", lambda r: f"{r['files_before']:,} / {r['files_after']:,}")
    line("MB on disk before / after compaction",
         lambda r: f"{r['bytes_before'] / 1e6:.1f} / {r['bytes_after'] / 1e6:.1f}")
    for q in results[formats[0]]["before"]:
        line(f"{q}, before / after compaction (s)",
             lambda r, q=q: f"{r['before'][q]['median_s']:.3f} / {r['after'][q]['median_s']:.3f}")
    line("compaction (s)", lambda r: f"{r['compaction']['compact_s']:.2f}"
         + (f" (+ vacuum {r['compaction']['vacuum_s']:.2f})" if "vacuum_s" in r["compaction"] else ""))

    if args.json:
        out = {"studies": args.studies, "trials_per_study": args.trials_per_study, "epochs": args.epochs,
               "batch_trials": args.batch_trials, "repeats": args.repeats, "formats": results,
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "python": platform.python_version(), "pyarrow": pa.__version__,
                           "pandas": pd.__version__, "deltalake": _version("deltalake")}}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return ""


if __name__ == "__main__":
    main()
