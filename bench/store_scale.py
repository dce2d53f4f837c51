"""The results store at scale: appends as the store grows, queries before and after compaction.

Writes a store the way sweeps do (orch's ``Store.append``, one metrics file and one trials file per
batch of finished trials, like the sweep driver's store writer, and one sweeps row per study):
by default 100 studies x 100 trials x 100 epochs = 1,000,000 metric rows and 10,000 trial rows in
batches of 5 trials (2,000 batches, 4,100 files). Each batch's appends are timed, to show whether
appending slows down as the store grows (first 10% of batches against the last 10%). Then it
times, before and after ``orch store compact``:

- ``orch results`` as a subprocess (Python start-up and imports included), and in-process
  (``orchestrator.store.queries.sweeps_table``);
- the best trial of every study over the whole store, in-process: ``Store.read`` of the trials
  table with the columns it needs, then the lowest ``best_val_loss`` per study (and the same from
  a read of every column);
- a read of the whole metrics table (1,000,000 rows).

and checks that compaction kept every row (the same rows before and after, and the same answers).

    python bench/store_scale.py                                   # about 2-3 minutes on 2 CPUs
    python bench/store_scale.py --json bench/out/store_scale.json
    python bench/store_scale.py --studies 10 --trials-per-study 20   # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.store import maintenance as store_admin  # noqa: E402
from orchestrator.store import queries as results_mod  # noqa: E402
from orchestrator.store.tables import Store  # noqa: E402

ORCH = str(Path(sys.executable).with_name("orch"))
# The column types the sweep driver declares for metrics rows (orchestrator/tune/callbacks.py).
METRIC_TYPES = {"generation": pa.int64(), "epoch": pa.int64(), "batch_size": pa.int64(),
                "resumed_val_loss": pa.float64(), "lr": pa.float64()}
CONFIG_TYPES = {"config.lr": pa.float64(), "config.beta1": pa.float64(), "config.beta2": pa.float64(),
                "config.eps": pa.float64(), "config.batch_size": pa.int64(), "config.hidden": pa.int64(),
                "config.layers": pa.int64(), "config.dropout": pa.float64()}
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def trial_batch(rng: random.Random, sweep_id: str, first: int, n: int, epochs: int, t: datetime):
    """(metrics rows, trials rows) of ``n`` finished trials, as the store writer builds them."""
    metrics, trials = [], []
    for k in range(first, first + n):
        tid = f"{rng.getrandbits(32):08x}"
        cfg = {"lr": 10 ** rng.uniform(-4, -1), "beta1": 1 - 10 ** rng.uniform(-3, -1),
               "beta2": 1 - 10 ** rng.uniform(-4, -2), "eps": 10 ** rng.uniform(-9, -7),
               "batch_size": 2 ** rng.randint(4, 8), "hidden": rng.randint(32, 512),
               "layers": rng.randint(1, 4), "dropout": rng.uniform(0, 0.5)}
        floor = rng.uniform(0.05, 0.5)
        best, best_epoch = float("inf"), 0
        for e in range(1, epochs + 1):
            val = floor + 2.0 / e + rng.uniform(0, 0.02)
            if val < best:
                best, best_epoch = val, e
            metrics.append({"sweep_id": sweep_id, "trial_id": tid, "generation": 0, "resumed_val_loss": None,
                            "train_loss": floor * 0.5 + 2.0 / e, "val_loss": val,
                            "val_accuracy": 1 - val / 3, "val_collapsed": False, "val_top_class_share": 0.11,
                            "lr": cfg["lr"], "batch_size": cfg["batch_size"], "epoch": e,
                            "timestamp": (t + timedelta(seconds=e)).timestamp(), "time_s": 0.05})
        last = metrics[-1]
        trials.append({"sweep_id": sweep_id, "trial_id": tid, "status": "completed" if k % 3 else "stopped_early",
                       "stop_reason": "" if k % 3 else "scheduler", "stage": 1, "generation": 0,
                       **{f"config.{key}": v for key, v in cfg.items()},
                       "final_train_loss": last["train_loss"], "best_train_loss": last["train_loss"],
                       "final_val_loss": last["val_loss"], "best_val_loss": best,
                       "final_val_accuracy": last["val_accuracy"], "best_val_accuracy": 1 - best / 3,
                       "test_loss": best * 1.1, "test_accuracy": 1 - best / 2.8, "collapsed": False,
                       "best_epoch": best_epoch, "epochs": epochs, "train_time_s": 0.05 * epochs,
                       "started_at": t, "ended_at": t + timedelta(seconds=epochs), "node": "127.0.0.1"})
    return metrics, trials


def study_config() -> tuple[str, str]:
    """A real sweep config (the default one) as the store records it, and its data's fingerprint:
    what `orch retune` reads to decide."""
    from orchestrator.config import load as config
    from orchestrator.train import data

    cfg = config.load(ROOT / "conf" / "tabular.yaml", ["study=STUDY"])
    return config.to_yaml(cfg), data.load(cfg).fingerprint


def build(root: Path, studies: int, trials_per_study: int, epochs: int, batch_trials: int) -> list[float]:
    """Write the store; returns the seconds each batch's appends took (metrics, then trials)."""
    store = Store(root)
    config_yaml, fingerprint = study_config()
    rng = random.Random(0)
    times = []
    for s in range(studies):
        study = f"study-{s:03d}"
        sweep_id = f"20261101-{s:06d}-{rng.getrandbits(16):04x}"
        started = T0 + timedelta(hours=s)
        best = (float("inf"), None)
        for b in range(0, trials_per_study, batch_trials):
            n = min(batch_trials, trials_per_study - b)
            metrics, trials = trial_batch(rng, sweep_id, b, n, epochs, started + timedelta(minutes=b))
            t = time.perf_counter()
            store.append("metrics", study, metrics, sweep_id, types=METRIC_TYPES)
            store.append("trials", study, trials, sweep_id, types=CONFIG_TYPES)
            times.append(time.perf_counter() - t)
            best = min(best, *((r["best_val_loss"], r["trial_id"]) for r in trials))
        store.append("sweeps", study, [{
            "sweep_id": sweep_id, "reason": "manual", "parent_sweep_id": None, "scheduler": "asha",
            "searcher": "random", "config_yaml": config_yaml.replace("STUDY", study),
            "config_path": str(ROOT / "conf" / "tabular.yaml"), "started_at": started,
            "ended_at": started + timedelta(minutes=50),
            "num_trials": trials_per_study, "best_trial_id": best[1], "metric": "val_loss", "mode": "min",
            "best_value": best[0], "promoted": True, "data_fingerprint": fingerprint,
            "code_version": "fedcba987654", "search_space": json.dumps({"lr": [1e-4, 0.1]}), "stages": None,
            "orch_version": "0.1.0"}], sweep_id)
    return times


def best_per_study(root: Path, columns: bool = True) -> pd.DataFrame:
    """The trial with the lowest best_val_loss of every study, over the whole store."""
    store = Store(root)
    cols = ["study", "sweep_id", "trial_id", "best_val_loss"]
    trials = store.read("trials", columns=cols) if columns else store.read("trials")[cols]
    best = trials.loc[trials.groupby("study", sort=True)["best_val_loss"].idxmin()]
    return best.reset_index(drop=True)


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    out, times = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def orch_results(root: Path) -> None:
    p = subprocess.run([ORCH, "results", "--store", str(root)], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"orch results failed: {p.stderr.strip()}")


NOW = "2027-03-01T03:00:00+00:00"  # the sweeps are from Nov 2026: every study is stale by age


def retune_decision(root: Path) -> list:
    """What `orch retune --all --dry-run` decides (no training), recorded as it would be."""
    from orchestrator.retune import decide as retune

    out: list[str] = []
    retune.run(root, [], all_studies=True, now=retune.parse_now(NOW), dry_run=True, echo=out.append)
    return out


def orch_retune(root: Path) -> None:
    p = subprocess.run([ORCH, "retune", "--all", "--dry-run", "--now", NOW, "--store", str(root)],
                       capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"orch retune failed: {p.stderr.strip()}")


def queries(root: Path, repeats: int) -> tuple[dict[str, dict], dict[str, object]]:
    figures, answers = {}, {}
    for name, fn, n in (
        ("orch results (subprocess)", lambda: orch_results(root), max(1, repeats // 2)),
        ("sweeps_table (in-process)", lambda: results_mod.sweeps_table(root), repeats),
        ("best per study (trials, 4 columns)", lambda: best_per_study(root), repeats),
        ("best per study (trials, all columns)", lambda: best_per_study(root, columns=False), repeats),
        ("read metrics (all rows, all columns)", lambda: Store(root).metrics(), max(1, repeats // 2)),
        ("retune decision, all studies (in-process)", lambda: retune_decision(root), max(1, repeats // 2)),
        ("orch retune --all --dry-run (subprocess)", lambda: orch_retune(root), max(1, repeats // 2)),
    ):
        median, times, out = timed(fn, n)
        figures[name] = {"median_s": median, "runs_s": times}
        answers[name] = out
        print(f"  {name:<40} {median:8.3f} s  (runs: {', '.join(f'{t:.3f}' for t in times)})", flush=True)
    return figures, answers


def canonical(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return df.sort_values(keys).reset_index(drop=True)[sorted(df.columns)]


def count_files(root: Path) -> int:
    return sum(1 for _ in root.rglob("*.parquet"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=100)
    ap.add_argument("--trials-per-study", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch-trials", type=int, default=5, help="Finished trials per append (one file per table).")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--store", default=None, help="Where to build the store (default: a temporary directory, removed).")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    tmp = None if args.store else tempfile.mkdtemp(prefix="orch-store-scale-")
    root = Path(args.store or tmp) / "results"
    if root.exists():
        raise SystemExit(f"{root} exists: give a new --store")
    try:
        t = time.perf_counter()
        times = build(root, args.studies, args.trials_per_study, args.epochs, args.batch_trials)
        build_s = time.perf_counter() - t
        store = Store(root)
        n = len(times)
        tenth = max(1, n // 10)
        first, last = statistics.median(times[:tenth]), statistics.median(times[-tenth:])
        deciles = [statistics.median(times[i * n // 10:max((i + 1) * n // 10, i * n // 10 + 1)]) for i in range(10)]
        files_before = count_files(root)
        print(f"Built {root}: {args.studies} studies, {args.studies * args.trials_per_study:,} trials, "
              f"{args.studies * args.trials_per_study * args.epochs:,} metric rows, {files_before:,} files "
              f"in {build_s:.1f}s ({n:,} batches)")
        print(f"Append (metrics + trials file per batch): median {1000 * statistics.median(times):.1f} ms; "
              f"first 10% of batches {1000 * first:.1f} ms, last 10% {1000 * last:.1f} ms "
              f"(last/first {last / first:.2f}); p90 {1000 * statistics.quantiles(times, n=10)[-1]:.1f} ms")
        print("Median append per tenth of the batches (ms): " + " ".join(f"{1000 * d:.1f}" for d in deciles))

        print("Before compaction:")
        before, answers_before = queries(root, args.repeats)
        trials_before = canonical(store.trials(), ["study", "sweep_id", "trial_id"])
        metrics_before = len(answers_before["read metrics (all rows, all columns)"])

        t = time.perf_counter()
        p = subprocess.run([ORCH, "store", "compact", "--store", str(root)], capture_output=True, text=True)
        compact_s = time.perf_counter() - t
        if p.returncode:
            raise SystemExit(f"orch store compact failed: {p.stderr.strip()}")
        print(p.stdout.rstrip())
        files_after = count_files(root)
        t = time.perf_counter()
        again = store_admin.compact(root)
        compact_again_s = time.perf_counter() - t
        assert not any(r.merged for r in again.partitions), "a second compaction found work"

        print(f"After compaction ({files_before:,} -> {files_after:,} files; orch store compact took "
              f"{compact_s:.1f}s, a second run {compact_again_s:.2f}s):")
        after, answers_after = queries(root, args.repeats)

        # Compaction kept every row, and every answer.
        pd.testing.assert_frame_equal(trials_before, canonical(store.trials(), ["study", "sweep_id", "trial_id"]))
        metrics_after = answers_after["read metrics (all rows, all columns)"]
        assert metrics_before == len(metrics_after) == args.studies * args.trials_per_study * args.epochs
        pd.testing.assert_frame_equal(answers_before["best per study (trials, 4 columns)"],
                                      answers_after["best per study (trials, 4 columns)"])
        pd.testing.assert_frame_equal(answers_before["sweeps_table (in-process)"],
                                      answers_after["sweeps_table (in-process)"])
        p = subprocess.run([ORCH, "store", "verify", "--store", str(root)], capture_output=True, text=True)
        print(p.stdout.rstrip())
        assert p.returncode == 0, p.stdout + p.stderr

        print("\n| query | before compaction (s) | after (s) | before / after |")
        print("|---|---|---|---|")
        for name in before:
            b, a = before[name]["median_s"], after[name]["median_s"]
            print(f"| {name} | {b:.3f} | {a:.3f} | {b / a:.1f}x |")
        out = {
            "studies": args.studies, "trials": args.studies * args.trials_per_study,
            "metric_rows": args.studies * args.trials_per_study * args.epochs, "batches": n,
            "files_before": files_before, "files_after": files_after, "build_s": build_s,
            "append_s": times, "append_first_10pct_median_s": first, "append_last_10pct_median_s": last,
            "append_median_per_tenth_s": deciles,
            "compact_s": compact_s, "compact_again_s": compact_again_s,
            "before": before, "after": after,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                        "pyarrow": pa.__version__, "pandas": pd.__version__},
        }
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(out, indent=2))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
