"""How fast does a sweep find a good model?

Runs, side by side in one invocation, on the same data, the same search space and the same
budget (trials x epochs), each as its own process with start-up included:

1. ``fifo``:       orch, random search, every trial to its full budget;
2. ``asha``:       orch, random search under ASHA (the same configs as 1: same seed);
   ``asha-3x-trials``: the same with three times the trials (ASHA's use: the epochs it saves buy
   more configs; not the same budget, shown for what it buys);
3. ``tpe+asha``:   orch, Optuna's TPE through Ray Tune, under ASHA;
4. ``c2f+asha``:   orch, random search in two coarse-to-fine stages, under ASHA;
5. ``optuna-random`` / ``optuna-tpe``: Optuna on its own (RandomSampler, then TPESampler) with its
   SuccessiveHalvingPruner, calling the same trainer on the same space, ``n_jobs=2``.

For each: the wall time to reach within 1% of the best validation loss that run 1 found (time
measured from process launch to the epoch whose result got there), the total wall time, and at
the end the best validation loss and the test accuracy of the trial with the best validation loss.
Two datasets: scikit-learn's ``digits``, and a synthetic ``make_classification`` table
(100k rows x 40 features, 4 classes) written to Parquet.

    python bench/time_to_quality.py                       # both datasets (about 15 minutes on 2 cores)
    python bench/time_to_quality.py --datasets digits     # one
    python bench/time_to_quality.py --methods fifo,asha --tables digits   # a subset (fifo sets the target)
    python bench/time_to_quality.py --methods fifo,asha --grace-period 4  # ASHA's first rung elsewhere
    python bench/time_to_quality.py --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from orchestrator.config.schema import SchedulerConfig, grace_period_of

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "conf" / "tabular.yaml"
ORCH = [sys.executable, "-c", "from orchestrator.cli import run; run()"]

# Each dataset: config overrides shared by every method, and its budget.
DATASETS = {
    "digits": {
        "overrides": ["data.source=sklearn:digits"],
        "trials": 32, "epochs": 20,
    },
    "synthetic": {
        # 60k training rows: large batches, as one would use at this size.
        "overrides": ["data.source=null", "data.path={dir}/synthetic.parquet", "data.target=target",
                      "search_space={dir}/synthetic_space.yaml"],
        "trials": 32, "epochs": 10,
    },
}
SYNTHETIC_SPACE = """\
lr:         {loguniform: [1.0e-4, 1.0e-1]}
batch_size: {pow2: [128, 1024]}
hidden:     {int: [32, 256], log: true}
layers:     {int: [1, 3]}
dropout:    {uniform: [0.0, 0.3]}
beta1:      {log1m: [0.8, 0.999]}
"""
METHODS = {
    "fifo": ["scheduler.name=fifo", "search.algorithm=random"],
    "asha": ["scheduler.name=asha", "search.algorithm=random"],
    # ASHA's own use: the epochs it saves buy more configs (the first ones the same as above).
    "asha-3x-trials": ["scheduler.name=asha", "search.algorithm=random", "search.num_samples={trials3}"],
    "tpe+asha": ["scheduler.name=asha", "search.algorithm=tpe"],
    "c2f+asha": ["scheduler.name=asha", "search.algorithm=random", "search.stages=2"],
    "optuna-random": "random",
    "optuna-tpe": "tpe",
}


def write_synthetic(directory: Path) -> None:
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=100_000, n_features=40, n_informative=20, n_redundant=10,
                               n_classes=4, class_sep=1.0, flip_y=0.03, random_state=0)
    df = pd.DataFrame(x.astype(np.float32), columns=[f"f{i}" for i in range(40)])
    df["target"] = y
    df.to_parquet(directory / "synthetic.parquet")
    (directory / "synthetic_space.yaml").write_text(SYNTHETIC_SPACE)


def common_overrides(dataset: str, directory: Path, study: str) -> list[str]:
    d = dict(DATASETS[dataset])
    d["trials"] = int(os.environ.get("ORCH_TTQ_TRIALS", d["trials"]))
    d["epochs"] = int(os.environ.get("ORCH_TTQ_EPOCHS", d["epochs"]))
    return [f"study={study}", "ray.num_cpus=2", f"search.seed={_seed()}", f"search.num_samples={d['trials']}",
            f"scheduler.max_epochs={d['epochs']}", f"scheduler.grace_period={_grace(d['epochs'])}",
            "scheduler.reduction_factor=3", *[o.format(dir=directory) for o in d["overrides"]]]


def _grace(epochs: int) -> int:
    """ASHA's grace period (and Optuna's pruner's minimum resource): ``--grace-period``, else
    orch's default for ``epochs`` (a fifth of them, at least 2)."""
    given = os.environ.get("ORCH_TTQ_GRACE", "")
    return int(given) if given else grace_period_of(SchedulerConfig(max_epochs=epochs))


def _seed() -> int:
    return int(os.environ.get("ORCH_TTQ_SEED", 0))


# -- orch -------------------------------------------------------------------------------------------


def run_orch(dataset: str, method: str, directory: Path) -> dict:
    import pandas as pd

    study = f"ttq-{dataset}-{method.replace('+', '-')}"
    store = directory / "store"
    trials3 = 3 * int(os.environ.get("ORCH_TTQ_TRIALS", DATASETS[dataset]["trials"]))
    method_args = [a.format(trials3=trials3) for a in METHODS[method]]
    args = [*ORCH, "sweep", str(CONFIG), "--no-report", *common_overrides(dataset, directory, study), *method_args,
            "--store", str(store)]
    t0 = time.time()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{method} on {dataset} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    metrics = pd.read_parquet(store / "metrics", filters=[("study", "=", study)])
    trials = pd.read_parquet(store / "trials", filters=[("study", "=", study)])
    events = sorted(zip(metrics["timestamp"] - t0, metrics["val_loss"], strict=True))
    best = trials.loc[trials["best_val_loss"].idxmin()]
    return {"wall_s": wall, "events": events, "best_val_loss": float(best["best_val_loss"]),
            "test_accuracy": _num(best.get("test_accuracy")), "trials": len(trials),
            "epochs": int(trials["epochs"].sum())}


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


# -- Optuna on its own ----------------------------------------------------------------------------


def run_optuna(dataset: str, method: str, directory: Path) -> dict:
    out = directory / f"optuna-{dataset}-{method}.json"
    args = [sys.executable, __file__, "--optuna-worker", dataset, METHODS[method], str(directory), str(out)]
    t0 = time.time()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{method} on {dataset} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(out.read_text())
    res["events"] = sorted((t - t0, v) for t, v in res["events"])
    res["wall_s"] = wall
    return res


def optuna_worker(dataset: str, sampler_name: str, directory: Path, out: Path) -> None:
    """One Optuna study in this process: same config, data, space and trainer as orch's trials."""
    import dataclasses
    import threading

    import optuna

    from orchestrator.config import load as config
    from orchestrator.train import data
    from orchestrator.train.trainer import run_trial
    from orchestrator.tune import searchers
    from orchestrator.tune.compile import compile_sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = config.load(CONFIG, common_overrides(dataset, directory, f"optuna-{dataset}"))
    dataset_ = data.load(cfg)
    compiled = compile_sweep(cfg, dataset_)
    search, setup = compiled.search, compiled.setup
    setup = dataclasses.replace(setup, report_epochs=None)  # every epoch reaches the pruner
    define = searchers.OptunaDefine(search.space)
    events, finals, lock = [], {}, threading.Lock()

    def objective(trial: optuna.Trial) -> float:
        config_ = define(trial)

        def report(result, _checkpoint):
            value = result["val_loss"]
            with lock:
                events.append((time.time(), value))
            trial.report(value, result["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned()

        result = run_trial(config_, dataset_, setup, report)
        best = result["best"].get("val_loss", float("inf"))
        with lock:
            finals[trial.number] = (best, (result.get("test") or {}).get("test_accuracy"))
        return best

    sampler = (optuna.samplers.RandomSampler(seed=_seed()) if sampler_name == "random"
               else optuna.samplers.TPESampler(seed=_seed()))
    epochs = int(os.environ.get("ORCH_TTQ_EPOCHS", DATASETS[dataset]["epochs"]))
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=_grace(epochs), reduction_factor=3)
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)
    n = int(os.environ.get("ORCH_TTQ_TRIALS", DATASETS[dataset]["trials"]))
    study.optimize(objective, n_trials=n, n_jobs=2)
    vals = [v for _, v in events if math.isfinite(v)]
    # Test accuracy: of the best trial that ran to its end (a pruned trial has no test score).
    best_completed = min(finals.values(), key=lambda bt: bt[0]) if finals else (None, None)
    out.write_text(json.dumps({
        "events": events, "best_val_loss": min(vals) if vals else None, "test_accuracy": best_completed[1],
        "trials": len(study.trials), "epochs": len(events),
    }))


# -- the comparison -------------------------------------------------------------------------------


def time_to(events: list[tuple[float, float]], target: float) -> float | None:
    """Seconds from launch until the best validation loss so far is within 1% of ``target``."""
    bar = target + 0.01 * abs(target)
    best = math.inf
    for t, v in events:
        if v == v and v < best:
            best = v
            if best <= bar:
                return t
    return None


def run_dataset(dataset: str, directory: Path, methods: list[str]) -> dict:
    rows = {}
    for method in methods:
        runner = run_optuna if method.startswith("optuna") else run_orch
        rows[method] = runner(dataset, method, directory)
        r = rows[method]
        print(f"  {method:14s} wall {r['wall_s']:6.1f}s  best val_loss {r['best_val_loss']:.4f}  "
              f"test acc {r['test_accuracy'] if r['test_accuracy'] is not None else float('nan'):.4f}  "
              f"epochs {r['epochs']}", flush=True)
    target = rows["fifo"]["best_val_loss"]
    fifo_wall = rows["fifo"]["wall_s"]
    for r in rows.values():
        r["time_to_quality_s"] = time_to(r["events"], target)
        r["ttq_over_fifo_wall"] = None if r["time_to_quality_s"] is None else r["time_to_quality_s"] / fifo_wall
        # When the first epoch's result was known: about the fixed start-up (JSON only).
        r["first_result_s"] = r["events"][0][0] if r["events"] else None
        del r["events"]
    return {"target_val_loss": target, "fifo_wall_s": fifo_wall, "methods": rows}


def table(dataset: str, res: dict) -> str:
    lines = [f"{dataset}: target = fifo's best val_loss {res['target_val_loss']:.4f} (within 1%); "
             f"fifo wall {res['fifo_wall_s']:.1f}s",
             "| method | time to target (s) | / fifo wall | total wall (s) | best val_loss | test accuracy "
             "| epochs trained |",
             "|---|---|---|---|---|---|---|"]
    for m, r in res["methods"].items():
        ttq = "not reached" if r["time_to_quality_s"] is None else f"{r['time_to_quality_s']:.1f}"
        ratio = "" if r["ttq_over_fifo_wall"] is None else f"{100 * r['ttq_over_fifo_wall']:.0f}%"
        acc = "" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        lines.append(f"| {m} | {ttq} | {ratio} | {r['wall_s']:.1f} | {r['best_val_loss']:.4f} | {acc} "
                     f"| {r['epochs']} |")
    return "\n".join(lines)


def _names(known: dict) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of names from ``known``, in the order given."""
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{','.join(unknown) or text!r}: choose from {','.join(known)}")
        return list(dict.fromkeys(names))
    return parse


@contextlib.contextmanager
def warm_ray(tmp: Path, warm: bool) -> Iterator[None]:
    """With ``warm``, a warm local Ray of its own (ORCH_HOME in ``tmp``) that orch's sweeps join;
    without, a home where no warm Ray runs (the sweeps start their own)."""
    os.environ["ORCH_HOME"] = str(tmp / "orch-home")
    if not warm:
        yield
        return
    orch = [sys.executable, "-m", "orchestrator"]
    subprocess.run([*orch, "up", "--num-cpus", "2"], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([*orch, "down"], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--tables", type=_names(DATASETS), help="comma-separated datasets (instead of --datasets)")
    ap.add_argument("--methods", type=_names(METHODS), default=list(METHODS),
                    help=f"comma-separated, fifo among them (its best is the target): {','.join(METHODS)}")
    ap.add_argument("--grace-period", type=int, default=None,
                    help="ASHA's grace period (default: orch's, a fifth of the epochs, at least 2)")
    ap.add_argument("--warm", action="store_true",
                    help="orch's methods join a warm local Ray (orch up, before the timing; orch down after)")
    ap.add_argument("--seed", type=int, default=0, help="the search's seed (default 0)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--quick", action="store_true", help="a tiny budget, to check the script runs")
    ap.add_argument("--optuna-worker", nargs=4, metavar=("DATASET", "SAMPLER", "DIR", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.optuna_worker:
        dataset, sampler, d, out = args.optuna_worker
        optuna_worker(dataset, sampler, Path(d), Path(out))
        return
    if "fifo" not in args.methods:
        ap.error("--methods must include fifo: its best validation loss is the target")
    datasets = args.tables or args.datasets
    # the workers' too
    os.environ.update(ORCH_TTQ_GRACE="" if args.grace_period is None else str(args.grace_period),
                      ORCH_TTQ_SEED=str(args.seed))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}", flush=True)
    if args.quick:
        os.environ.update(ORCH_TTQ_TRIALS="6", ORCH_TTQ_EPOCHS="4")  # seen by the worker processes too
        for d in DATASETS.values():
            d.update(trials=6, epochs=4)
    results = {}
    with tempfile.TemporaryDirectory(prefix="orch-ttq-") as tmp, warm_ray(Path(tmp), args.warm):
        directory = Path(tmp)
        if "synthetic" in datasets:
            write_synthetic(directory)
        for dataset in datasets:
            d = DATASETS[dataset]
            print(f"{dataset}: {d['trials']} trials x {d['epochs']} epochs", flush=True)
            results[dataset] = run_dataset(dataset, directory, args.methods)
    print()
    for dataset, res in results.items():
        print(table(dataset, res) + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "machine": platform.platform(),
                                         "grace_period": args.grace_period, "seed": args.seed,
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
