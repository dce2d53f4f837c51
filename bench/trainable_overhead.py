"""Does a user's own training function cost more per trial than orch's own trainer?

Side by side in one run, as a user runs them (``orch sweep`` as a subprocess, fifo, one epoch per
trial, configs given as points so both run the same trials):

* ``built-in``: orch's trainer (``orchestrator.train.trainer:fit``) on a tiny MLP, full batch;
* ``user``: a trivial training function of a project outside the repository (``trainable:
  "trivial:fit"``), which builds the same model through ``ctx.build_model()``, scores it on the
  validation split and reports one epoch.

Each is run at two sizes, so that start-up and shut-down cancel: the marginal wall time per trial.
With two trial slots, a trial's slot time is twice that; minus the time spent inside the training
function (the store's ``train_time_s``) it is what orch costs per trial. Repeats alternate the two.

    python bench/trainable_overhead.py                 # 16 and 216 trials, 3 repeats
    python bench/trainable_overhead.py --quick         # 8 and 40 trials, 1 repeat
"""

from __future__ import annotations

import argparse
import json
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

TRIVIAL = '''
import torch
import torch.nn.functional as F


def fit(config, ctx):
    model = ctx.build_model()
    model.eval()
    with torch.no_grad():
        x, y = next(iter(ctx.loader("val", batch_size=100_000)))
        loss = F.cross_entropy(model(x), y).item()
    ctx.report(1, {"train_loss": loss, "val_loss": loss})
'''


def write_config(path: Path, n: int, user: bool) -> None:
    points = [{"lr": 1e-3 * (1 + i / n)} for i in range(n)]
    doc = {
        "study": "bench-trainable",
        "data": {"source": "sklearn:digits"},
        "model": {"name": "mlp", "hidden": 8, "layers": 1},
        "train": {"batch_size": 2048},
        "search_space": {"lr": {"loguniform": [1e-4, 1e-1]}},
        "scheduler": {"name": "fifo", "max_epochs": 1},
        "search": {"num_samples": n, "points_to_evaluate": points},
        **({"trainable": "trivial:fit"} if user else {}),
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def run(project: Path, config: Path, store: Path, log: Path) -> tuple[float, float]:
    """(wall seconds, median seconds inside the training function per trial: the first trials of
    each worker pay its warm-up, which is not a per-trial cost)."""
    import pandas as pd

    orch = str(Path(sys.executable).with_name("orch"))
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run([orch, "sweep", str(config), "--store", str(store), "--no-report"],
                              stdout=f, stderr=subprocess.STDOUT, cwd=project)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"orch sweep {config} failed ({proc.returncode}); see {log}")
    trials = pd.read_parquet(store / "trials")
    return wall, float(trials["train_time_s"].median())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="16,216")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.repeats = "8,40", 1
    small, large = (int(x) for x in args.sizes.split(","))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    figures: dict = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        project = Path(tmp)
        (project / "trivial.py").write_text(TRIVIAL)
        walls: dict[str, dict[int, list[float]]] = {"built-in": {small: [], large: []}, "user": {small: [], large: []}}
        inside: dict[str, list[float]] = {"built-in": [], "user": []}
        for r in range(args.repeats):
            for n in (small, large):
                for kind in ("built-in", "user"):
                    config = project / f"{kind}-{n}.yaml"
                    write_config(config, n, kind == "user")
                    wall, train = run(project, config, project / f"store-{kind}-{n}-{r}",
                                      project / f"{kind}-{n}-{r}.log")
                    walls[kind][n].append(wall)
                    inside[kind].append(train)
                    print(f"  #{r + 1} {kind:8} {n:3} trials: {wall:.1f}s (inside the function {train * 1000:.1f} ms "
                          "per trial)", flush=True)
        print()
        for kind in ("built-in", "user"):
            marginal = (statistics.median(walls[kind][large]) - statistics.median(walls[kind][small])) / (large - small)
            inner = statistics.median(inside[kind])
            overhead = 2 * marginal - inner  # two trial slots
            figures["runs"][kind] = {"walls_s": walls[kind], "marginal_wall_ms": marginal * 1000,
                                     "inside_ms": inner * 1000, "overhead_slot_ms": overhead * 1000}
            print(f"{kind:8}: marginal wall {marginal * 1000:.1f} ms per trial; inside the function "
                  f"{inner * 1000:.1f} ms; orch's slot time per trial {overhead * 1000:.1f} ms")
        b, u = figures["runs"]["built-in"], figures["runs"]["user"]
        figures["overhead_ratio"] = u["overhead_slot_ms"] / b["overhead_slot_ms"]
        print(f"user / built-in overhead per trial: {figures['overhead_ratio']:.2f}x (target: the same within noise)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
