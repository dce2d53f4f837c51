"""What does orch cost on top of the training itself?

Runs the same list of trial configs two ways, side by side in one run:

* ``orch``: ``orch sweep`` as a user runs it (a subprocess; Python start-up, Ray start-up, the
  dashboard, the store and Tune's checkpoints included), scheduler ``fifo`` so every trial runs
  its full budget, the configs given as ``search.points_to_evaluate``;
* ``pool``: a bare ``multiprocessing.Pool(2)`` (also a subprocess, start-up included) calling the
  same ``orchestrator.train.trainer.run_trial`` on the same data, reporting nowhere.

Two workloads: the sweep (64 configs x 30 epochs of the default MLP space on ``digits``), and the
per-trial overhead (trivial one-epoch trials; the marginal wall time per trial, from two runs of
different sizes, so start-up costs cancel). Repeats alternate pool and orch and the medians are
compared. Also checks that both ways train to the same numbers.

    python bench/sweep_overhead.py                  # the full benchmark (a few minutes)
    python bench/sweep_overhead.py --quick          # a smaller version for a smoke check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "conf" / "tabular.yaml"


def sample_configs(n: int, seed: int) -> list[dict]:
    """``n`` configs drawn from the default config's search space (plain Python values)."""
    import numpy as np

    from orchestrator.config import load as config_mod
    from orchestrator.space import space as spaces

    space = spaces.compile_space(config_mod.load(DEFAULT_CONFIG))
    rng = np.random.default_rng(seed)
    return [{k: v.item() if hasattr(v, "item") else v for k, v in space.sample(rng).items()} for _ in range(n)]


def write_config(path: Path, points: list[dict], epochs: int, extra: dict | None = None) -> None:
    doc = {
        "base": str(DEFAULT_CONFIG),
        "study": "bench-overhead",
        "scheduler": {"name": "fifo", "max_epochs": epochs},
        "search": {"num_samples": len(points), "points_to_evaluate": points},
        **(extra or {}),
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def timed(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return elapsed


def run_orch(config: Path, store: Path, log: Path) -> float:
    orch = str(Path(sys.executable).with_name("orch"))
    return timed([orch, "sweep", str(config), "--store", str(store), "--no-report"], log)


def run_pool(config: Path, out: Path, log: Path) -> float:
    return timed([sys.executable, __file__, "_pool", str(config), str(out)], log)


# -- the bare pool ------------------------------------------------------------------------------

_DATA = _SETUP = None


def _init(data, setup) -> None:
    global _DATA, _SETUP
    _DATA, _SETUP = data, setup


def _one(point: dict) -> float:
    from orchestrator.train.trainer import run_trial

    result = run_trial(point, _DATA, _SETUP, lambda metrics, checkpoint: None)
    return result["val_loss"]


def pool_main(config: str, out: str) -> None:
    import multiprocessing as mp

    from orchestrator.config import load as config_mod
    from orchestrator.train import data as data_mod
    from orchestrator.tune.compile import compile_sweep

    cfg = config_mod.load(config)
    data = data_mod.load(cfg)
    setup = compile_sweep(cfg, data).setup
    points = cfg.search.points_to_evaluate
    with mp.get_context("fork").Pool(2, initializer=_init, initargs=(data, setup)) as pool:
        losses = pool.map(_one, points, chunksize=1)
    Path(out).write_text(json.dumps(losses))


# -- the benchmark --------------------------------------------------------------------------------


def orch_losses(store: Path, points: list[dict]) -> list[float]:
    """Final val_loss per trial, in the order the configs were given (matched on their lr)."""
    import pandas as pd

    trials = pd.read_parquet(store / "trials")
    by_lr = dict(zip(trials["config.lr"], trials["final_val_loss"], strict=True))
    return [by_lr.get(p["lr"], float("nan")) for p in points]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def compare(name: str, points: list[dict], epochs: int, repeats: int, work: Path) -> dict:
    config = work / f"{name}.yaml"
    write_config(config, points, epochs)
    pool_s, orch_s = [], []
    for r in range(repeats):
        out = work / f"{name}-pool-{r}.json"
        pool_s.append(run_pool(config, out, work / f"{name}-pool-{r}.log"))
        store = work / f"{name}-store-{r}"
        orch_s.append(run_orch(config, store, work / f"{name}-orch-{r}.log"))
        print(f"  {name} #{r + 1}: pool {pool_s[-1]:.1f}s  orch {orch_s[-1]:.1f}s", flush=True)
    a, b = json.loads(out.read_text()), orch_losses(store, points)
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if _finite(x) or _finite(y)]
    diff = max((abs(x - y) if _finite(x) and _finite(y) else float("inf")) for x, y in pairs)
    return {"pool_s": statistics.median(pool_s), "orch_s": statistics.median(orch_s),
            "all_pool_s": pool_s, "all_orch_s": orch_s, "max_abs_val_loss_diff": diff}


def main() -> None:
    # An orch home of the run's own: the sweeps start their own Ray, never join a warm one of the
    # user's (orch up).
    os.environ["ORCH_HOME"] = tempfile.mkdtemp(prefix="orch-bench-home-")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--trivial", default="16,96", help="two sizes of the trivial-trial runs")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="16 trials x 10 epochs, trivial 8,40, 1 repeat")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if args.quick:
        args.trials, args.epochs, args.trivial, args.repeats = 16, 10, "8,40", 1
    small, large = (int(x) for x in args.trivial.split(","))

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    figures: dict = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        work = Path(tmp)
        print(f"sweep: {args.trials} trials x {args.epochs} epochs, fifo, digits")
        sweep = compare("sweep", sample_configs(args.trials, 0), args.epochs, args.repeats, work)
        figures["sweep"] = sweep

        print(f"trivial trials (1 epoch, tiny MLP, full batch): {small} and {large} trials")
        tiny = {"hidden": 8, "layers": 1, "batch_size": 2048, "dropout": 0.0}
        runs = {}
        for n in (small, large):
            points = [{**p, **tiny} for p in sample_configs(n, 1)]
            runs[n] = compare(f"trivial{n}", points, 1, args.repeats, work)
        per_trial = {k: (runs[large][f"{k}_s"] - runs[small][f"{k}_s"]) / (large - small) for k in ("pool", "orch")}
        figures["trivial"] = {"runs": runs, "per_trial_s": per_trial}

    ratio = sweep["orch_s"] / sweep["pool_s"]
    overhead_ms = (per_trial["orch"] - per_trial["pool"]) * 1000
    print()
    print(f"sweep {args.trials}x{args.epochs}: pool {sweep['pool_s']:.1f}s, orch {sweep['orch_s']:.1f}s, "
          f"ratio {ratio:.2f}x (target <= 1.3x); "
          f"same training: max |val_loss diff| {sweep['max_abs_val_loss_diff']:.2g}")
    print(f"trivial trial, marginal wall time per trial: pool {per_trial['pool'] * 1000:.1f} ms, "
          f"orch {per_trial['orch'] * 1000:.1f} ms, overhead {overhead_ms:.1f} ms (target <= 30 ms)")
    figures.update(ratio=ratio, per_trial_overhead_ms=overhead_ms)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "_pool":
        pool_main(sys.argv[2], sys.argv[3])
    else:
        main()
