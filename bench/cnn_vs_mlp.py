"""The shipped CNN example against the default MLP sweep, on the same digits and the same split.

Runs, side by side in one run, ``orch sweep conf/digits_cnn.yaml`` (a small CNN on the digits as
1x8x8 images, from a data factory) and ``orch sweep conf/tabular.yaml`` (the default: an MLP on the
same digits as 64 columns), each as a user runs it (a subprocess, report off). The two split the
rows identically (orchestrator/examples/digits.py follows the table's split; tests/test_examples.py
checks it). Prints each sweep's wall time, and its best trial (by val_loss) with that trial's
validation and test accuracy.

    python bench/cnn_vs_mlp.py                    # both default sweeps (a few minutes)
    python bench/cnn_vs_mlp.py --quick            # 24 trials each
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = {"cnn": ROOT / "conf" / "digits_cnn.yaml", "mlp": ROOT / "conf" / "tabular.yaml"}


def run(name: str, config: Path, store: Path, log: Path, extra: list[str]) -> dict:
    from orchestrator.store.tables import Store

    orch = str(Path(sys.executable).with_name("orch"))
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run([orch, "sweep", str(config), "--store", str(store), "--no-report", *extra],
                              stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{name}: orch sweep failed ({proc.returncode}); see {log}")
    trials = Store(store).trials()
    usable = trials[trials["best_val_loss"].notna()]
    best = usable.sort_values("best_val_loss").iloc[0]
    return {"wall_s": wall, "trials": len(trials), "best_trial": best["trial_id"],
            "best_val_loss": float(best["best_val_loss"]), "best_val_accuracy": float(best["best_val_accuracy"]),
            "test_accuracy": float(best["test_accuracy"]), "epochs": int(best["epochs"]),
            "max_test_accuracy": float(usable["test_accuracy"].max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="24 trials per sweep")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    extra = ["search.num_samples=24"] if args.quick else []
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    figures: dict = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        for name, config in SWEEPS.items():
            figures[name] = run(name, config, Path(tmp) / f"store-{name}", Path(tmp) / f"{name}.log", extra)
            f = figures[name]
            print(f"{name}: {f['trials']} trials in {f['wall_s']:.0f}s; best trial {f['best_trial']} "
                  f"(val_loss {f['best_val_loss']:.4f}, val accuracy {f['best_val_accuracy']:.4f}, "
                  f"{f['epochs']} epochs): test accuracy {f['test_accuracy']:.4f} "
                  f"(best of any trial {f['max_test_accuracy']:.4f})", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
