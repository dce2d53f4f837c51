"""Start-up and shut-down of ``orch sweep``, phase by phase: embedded Ray against the warm local Ray.

Each run is ``orch sweep conf/tabular.yaml`` (digits) with 2 one-epoch trials, a process of its
own, timed from launch. The driver's phases come from its ``ORCH_PROFILE`` marks
(orchestrator/phases.py); the first trial's training start from the store (its first epoch's
timestamp less the epoch's time). Variants alternate within each repeat; medians are reported.

    python bench/startup.py [--repeats 3] [--json bench/out/startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
ORCH = [sys.executable, "-m", "orchestrator"]
SWEEP = ["sweep", str(ROOT / "conf" / "tabular.yaml"), "scheduler.name=fifo", "search.num_samples=2",
         "scheduler.max_epochs=1", "study=startup", "--no-report"]
PHASES = ["command", "config", "data", "plan", "ray", "tuner_start", "first_training", "tuner_end",
          "ray_shutdown", "models", "end", "exit"]


def one_run(env: dict[str, str], extra: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="orch-startup-") as tmp:
        profile = Path(tmp) / "profile.jsonl"
        store = Path(tmp) / "store"
        t0 = time.time()
        p = subprocess.run([*ORCH, *SWEEP, "--store", str(store), *extra], cwd=ROOT, text=True,
                           capture_output=True, env={**env, "ORCH_PROFILE": str(profile)})
        t_exit = time.time()
        if p.returncode != 0:
            raise SystemExit(f"orch sweep failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        marks: dict[str, float] = {}
        for line in profile.read_text().splitlines() if profile.exists() else ():  # (an orch without marks)
            m = json.loads(line)
            marks.setdefault(m["phase"], m["t"] - t0)
        metrics = pd.read_parquet(store / "metrics")
        marks["first_training"] = float((metrics["timestamp"] - metrics["time_s"]).min()) - t0
        marks["exit"] = t_exit - t0
        return marks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="embedded,warm")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    variants = args.variants.split(",")
    home = tempfile.mkdtemp(prefix="orch-startup-home-")
    env = {**os.environ, "ORCH_HOME": home, "ORCH_NO_REPORT": "1"}
    env.pop("ORCH_DEBUG", None)
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    try:
        # The embedded runs see an orch home where no warm Ray runs: no flag that an older orch
        # would not know (bench/versus.py --script-from-current runs this script on one).
        envs = {"embedded": {**env, "ORCH_HOME": tempfile.mkdtemp(prefix="orch-startup-cold-")}, "warm": env}
        if "warm" in variants:
            t = time.time()
            subprocess.run([*ORCH, "up", "--num-cpus", "2"], env=env, check=True, capture_output=True)
            print(f"orch up: {time.time() - t:.1f}s (once, not counted)")
            one_run(env, [])  # the warm Ray's first sweep (its first workers start): not counted
        for r in range(args.repeats):
            order = variants if r % 2 == 0 else variants[::-1]
            for v in order:
                runs[v].append(one_run(envs[v], []))
                print(f"repeat {r + 1} {v}: first training at {runs[v][-1]['first_training']:.2f}s, "
                      f"exit at {runs[v][-1]['exit']:.2f}s", flush=True)
    finally:
        if "warm" in variants:
            subprocess.run([*ORCH, "down"], env=env, capture_output=True)
    medians = {v: {ph: statistics.median(r[ph] for r in rs) for ph in PHASES if all(ph in r for r in rs)}
               for v, rs in runs.items()}
    print(f"\nSeconds from launch (median of {args.repeats}), 2 one-epoch trials on digits:")
    print("| phase (reached at) | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    for ph in PHASES:
        cells = [f"{medians[v][ph]:.2f}" if ph in medians[v] else "" for v in variants]
        print(f"| {ph} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": runs, "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
