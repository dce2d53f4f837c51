"""How many trials should share a GPU?

Runs the same sweep (the same configs, scheduler ``fifo``, so every trial runs its full budget) with
``resources.gpu_per_trial`` 1, 0.5 and 0.25, each as ``orch sweep`` as a user runs it (a subprocess,
timed from launch), and ``resources.cpu_per_trial`` set so that the trials running at once share the
machine's cores (cores / trials at once, at least 1). While each sweep runs, the GPUs' utilisation
and memory are sampled every 500 ms (``nvidia-smi``, or ``pynvml`` where it is installed and
``nvidia-smi`` is not).

For each setting: trials per hour over the whole run (start-up included) and over the trials'
own window (first trial's start to last trial's end, from the store), the mean GPU utilisation
over the run and over that window, the peak GPU memory, and which device the trials reported.

Two workloads: ``cnn``, the shipped CNN example (conf/digits_cnn.yaml: a small CNN on the digits as
1x8x8 images), and ``mlp-wide``, the default MLP sweep (conf/tabular.yaml) over wide networks
(1024-4096 units, 2-4 layers, batches of 256-1024).

    python bench/gpu_packing.py                          # cnn, 16 trials x 5 epochs per setting
    python bench/gpu_packing.py --model mlp-wide --trials 24 --epochs 5 --json bench/out/gpu_packing.json
    python bench/gpu_packing.py --fractions 1,0.5,0.25,0.125

Without a GPU (or with a torch that cannot use one) it exits with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORCH = str(Path(sys.executable).with_name("orch"))
MODELS = {"cnn": ROOT / "conf" / "digits_cnn.yaml", "mlp-wide": ROOT / "conf" / "tabular.yaml"}
WIDE_SPACE = """\
lr:         {loguniform: [1.0e-4, 1.0e-2]}
batch_size: {pow2: [256, 1024]}
hidden:     {int: [1024, 4096], log: true}
layers:     {int: [2, 4]}
dropout:    {uniform: [0.0, 0.3]}
"""
QUERY = ["--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]


def gpus() -> tuple[int, str]:
    """The number of GPUs and how they are sampled ("nvidia-smi" or "pynvml"); exits 2 without one."""
    def no(why: str) -> None:
        print(f"gpu_packing: no GPU to measure: {why}", file=sys.stderr)
        sys.exit(2)

    count, sampler = 0, ""
    if shutil.which("nvidia-smi"):
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        count = sum(line.startswith("GPU ") for line in proc.stdout.splitlines()) if proc.returncode == 0 else 0
        sampler = "nvidia-smi"
    else:
        try:
            import pynvml

            pynvml.nvmlInit()
            count, sampler = pynvml.nvmlDeviceGetCount(), "pynvml"
        except Exception:  # noqa: BLE001 - not installed, or no driver
            no("nvidia-smi is not on PATH and pynvml cannot reach a driver; run this on a machine with an "
               "NVIDIA GPU")
    if count == 0:
        no(f"{sampler} lists no GPU on this machine")
    import torch

    if not torch.cuda.is_available():
        no(f"{sampler} lists {count} GPU(s) but this Python's torch {torch.__version__} cannot use CUDA")
    return count, sampler


class Sampler:
    """GPU utilisation (%, mean over the GPUs) and memory used (MiB, summed) every 500 ms, timestamped."""

    def __init__(self, how: str, n_gpus: int, log: Path) -> None:
        self.how, self.n_gpus, self.log = how, n_gpus, log
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        if self.how == "nvidia-smi":
            self._proc = subprocess.Popen(["nvidia-smi", *QUERY, "-lms", "500"], stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True, bufsize=1)
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
        else:
            self._thread = threading.Thread(target=self._poll_nvml, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.log.write_text("\n".join(f"{t:.3f},{u:.1f},{m:.0f}" for t, u, m in self.samples) + "\n")

    def _add(self, rows: list[tuple[float, float]]) -> None:
        if rows:
            self.samples.append((time.time(), statistics.fmean(u for u, _ in rows), sum(m for _, m in rows)))

    def _read_smi(self) -> None:
        # One line per GPU per sample, the GPUs in order: a sample is complete after `count` lines.
        assert self._proc is not None and self._proc.stdout is not None
        n = self.n_gpus
        rows: list[tuple[float, float]] = []
        for line in self._proc.stdout:
            try:
                u, m = (float(x) for x in line.split(","))
            except ValueError:
                continue
            rows.append((u, m))
            if len(rows) == n:
                self._add(rows)
                rows = []

    def _poll_nvml(self) -> None:
        import pynvml

        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        while not self._stop.wait(0.5):
            self._add([(float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu),
                        pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20) for h in handles])


def overrides(model: str, trials: int, epochs: int, fraction: float, cpu: int, work: Path) -> list[str]:
    out = [f"study=gpu-packing-{model}", "scheduler.name=fifo", f"scheduler.max_epochs={epochs}",
           "search.algorithm=random", "search.seed=0", f"search.num_samples={trials}",
           f"resources.gpu_per_trial={fraction:g}", f"resources.cpu_per_trial={cpu}"]
    if model == "mlp-wide":
        space = work / "wide_space.yaml"
        space.write_text(WIDE_SPACE)
        out.append(f"search_space={space}")
    return out


def run_setting(model: str, fraction: float, args: argparse.Namespace, n_gpus: int, how: str, work: Path) -> dict:
    import pandas as pd

    tag = f"{model}-gpu{fraction:g}"
    store = work / f"{tag}-store"
    at_once = max(1, math.floor(n_gpus / fraction + 1e-9))  # trials the GPUs hold at once
    cpu = max(1, (os.cpu_count() or 1) // at_once)
    extra = overrides(model, args.trials, args.epochs, fraction, cpu, work)
    cmd = [ORCH, "sweep", str(MODELS[model]), "--store", str(store), "--no-report", *extra]
    log = work / f"{tag}.log"
    with Sampler(how, n_gpus, work / f"{tag}-gpu.csv") as sampler, log.open("w") as f:
        t0 = time.time()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        t1 = time.time()
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        sys.exit(f"gpu_packing: {tag}: orch sweep failed (exit {proc.returncode}): {' '.join(tail)} (log: {log})")
    trials = pd.read_parquet(store / "trials")
    start, end = trials["started_at"].min().timestamp(), trials["ended_at"].max().timestamp()
    samples = sampler.samples
    window = [s for s in samples if start <= s[0] <= end]
    return {
        "gpu_per_trial": fraction, "cpu_per_trial": cpu, "trials_at_once": at_once,
        "trials": len(trials), "wall_s": t1 - t0, "trial_window_s": end - start,
        "trials_per_hour": 3600 * len(trials) / (t1 - t0),
        "trials_per_hour_window": 3600 * len(trials) / (end - start) if end > start else None,
        "gpu_util_mean": statistics.fmean(s[1] for s in samples) if samples else None,
        "gpu_util_mean_window": statistics.fmean(s[1] for s in window) if window else None,
        "gpu_mem_peak_mib": max((s[2] for s in samples), default=None),
        "devices": sorted(str(d) for d in trials["device"].dropna().unique()),
        "best_val_loss": float(trials["best_val_loss"].min()),
        "samples": len(samples),
    }


def _f(v: float | None, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def table(model: str, rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"{model}: {args.trials} trials x {args.epochs} epochs per setting, fifo",
             "| gpu_per_trial | cpu_per_trial | wall (s) | trials/h | trials/h (trial window) | GPU util % "
             "| GPU util % (trial window) | peak GPU MiB | devices | best val_loss |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['gpu_per_trial']:g} | {r['cpu_per_trial']:g} | {r['wall_s']:.1f} "
                     f"| {r['trials_per_hour']:.0f} | {_f(r['trials_per_hour_window'], '.0f')} "
                     f"| {_f(r['gpu_util_mean'], '.1f')} | {_f(r['gpu_util_mean_window'], '.1f')} "
                     f"| {_f(r['gpu_mem_peak_mib'], '.0f')} | {', '.join(r['devices'])} | {r['best_val_loss']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    # An orch home of the run's own: the sweeps start their own Ray, never join a warm one of the
    # user's (orch up).
    os.environ["ORCH_HOME"] = tempfile.mkdtemp(prefix="orch-bench-home-")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=list(MODELS), default="cnn")
    ap.add_argument("--fractions", default="1,0.5,0.25", help="values of resources.gpu_per_trial (default 1,0.5,0.25)")
    ap.add_argument("--trials", type=int, default=16, help="trials per setting (default 16)")
    ap.add_argument("--epochs", type=int, default=5, help="epochs per trial (default 5)")
    ap.add_argument("--logs", type=Path, help="keep the logs, stores and GPU samples here (default: removed)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    try:
        fractions = [float(x) for x in args.fractions.split(",")]
        if not all(0 < x <= 1 for x in fractions):
            raise ValueError
    except ValueError:
        ap.error(f"--fractions: '{args.fractions}' is not a comma-separated list of numbers in (0, 1]")

    n_gpus, how = gpus()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, {n_gpus} GPU(s), sampled with {how}", flush=True)
    tmp = None
    if args.logs:
        work = args.logs
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="orch-gpu-packing-")
        work = Path(tmp.name)
    rows = []
    try:
        for fraction in fractions:
            row = run_setting(args.model, fraction, args, n_gpus, how, work)
            rows.append(row)
            print(f"  gpu_per_trial {fraction:g}: {row['wall_s']:.1f}s, {row['trials_per_hour']:.0f} trials/h, "
                  f"GPU util {_f(row['gpu_util_mean_window'], '.1f')}% in the trial window", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print()
    print(table(args.model, rows, args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                                         "machine": platform.platform(), "cpus": os.cpu_count(), "gpus": n_gpus,
                                         "model": args.model, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
