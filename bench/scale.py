"""Does the sweep driver stay flat over many trials?

Runs ``orch sweep`` as a user runs it (a subprocess of the real CLI, its own temporary store) with
N one-epoch trials (default 10,000) and scheduler ``fifo``, and watches the driver process while it
runs: its resident memory (RSS, sampled every ``--sample-s``; the peak is the kernel's high-water
mark) and its CPU time, against the number of trials finished (from the sweep's status file). From
the store, once it ends:

- the throughput of each block of 1,000 trials (from the trials' ``ended_at``), first against last;
- the slot time per trial (slots x the sweep's span / trials) against the trials' own training
  (``train_time_s``): what the driver, Tune and Ray add to a trivial trial.

Targets: driver peak RSS under 1 GB at 10,000 trials, and the last 1,000 trials' throughput at
least 90% of the first 1,000's.

    python bench/scale.py --json bench/out/scale.json           # 10,000 trials: about 15 minutes on 2 CPUs
    python bench/scale.py --trials 2000                         # a quick run
    python bench/versus.py --baseline HEAD~1 -- bench/scale.py --trials 2000
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
sys.path.insert(0, str(ROOT))

DEFAULT_CONFIG = ROOT / "conf" / "tabular.yaml"
STUDY = "bench-scale"
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# -- watching the driver -----------------------------------------------------------------------


def memory_mb(pid: int) -> tuple[float, float] | None:
    """(RSS, peak RSS) of process ``pid`` in MB, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return _psutil_memory(pid)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        rss = int(fields["VmRSS"].split()[0]) / 1024
        return rss, int(fields.get("VmHWM", fields["VmRSS"]).split()[0]) / 1024
    except (KeyError, ValueError):
        return None


def _psutil_memory(pid: int) -> tuple[float, float] | None:
    try:
        import psutil

        rss = psutil.Process(pid).memory_info().rss / 2**20
    except Exception:  # noqa: BLE001 - no psutil, or the process ended
        return None
    return rss, rss


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree_cpu_s(pid: int, seen: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds so far of process ``pid`` and its descendants (Ray's processes), by kind: the
    driver, Ray's GCS, raylet and dashboard, and the workers that run the trials. ``seen``: every
    process found so far, updated (one that ended counts with its last figure)."""
    procs: dict[int, tuple[int, str, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        procs[int(d.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / TICKS)
    children: dict[int, list[int]] = {}
    for p, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(p)
    todo = [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, ()))
        if p not in procs:
            continue
        name, cpu = procs[p][1], procs[p][2]
        kind = ("driver" if p == pid else "gcs" if name.startswith("gcs") else "raylet" if name == "raylet"
                else "workers" if name.startswith(("ray::", "default_worker")) else "other")
        seen[p] = (kind, cpu)
    out: dict[str, float] = {}
    for kind, cpu in seen.values():
        out[kind] = out.get(kind, 0.0) + cpu
    return out


def done_trials(store: Path) -> int | None:
    """Trials finished, as the sweep's status file (rewritten every few seconds) last said."""
    for path in (store / "_ray").glob("*/orch_status.json"):
        try:
            return int(json.loads(path.read_text()).get("done", 0))
        except (OSError, ValueError):
            return None
    return None


def run_sweep(config: Path, trials: int, store: Path, overrides: list[str], log: Path,
              sample_s: float) -> dict:
    cmd = [sys.executable, "-m", "orchestrator", "sweep", str(config),
           "scheduler.name=fifo", f"search.num_samples={trials}", "scheduler.max_epochs=1",
           f"study={STUDY}", *overrides, "--store", str(store), "--no-report"]
    samples: list[dict] = []
    processes: dict[int, tuple[str, float]] = {}
    peak = 0.0
    t0 = time.monotonic()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        while proc.poll() is None:
            mem = memory_mb(proc.pid)
            if mem is not None:
                peak = max(peak, mem[1])
                samples.append({"t": round(time.monotonic() - t0, 2), "rss_mb": round(mem[0], 1),
                                "cpu_s": cpu_s(proc.pid), "tree_cpu_s": tree_cpu_s(proc.pid, processes),
                                "done": done_trials(store)})
            time.sleep(sample_s)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return {"wall_s": wall, "peak_rss_mb": peak, "samples": samples}


# -- the figures ------------------------------------------------------------------------------------


def at_each(samples: list[dict], block: int, n: int) -> list[dict]:
    """The first sample at which each multiple of ``block`` trials had finished."""
    out = []
    for k in range(block, n + 1, block):
        first = next((s for s in samples if (s["done"] or 0) >= k), None)
        if first is not None:
            out.append({"trials": k, **first})
    return out


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y on x."""
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else None


def concurrency(trials) -> int:
    """The most trials that ran at once (from their start and end times)."""
    events = sorted([(t, 1) for t in trials["started_at"].dropna()] + [(t, -1) for t in trials["ended_at"]],
                    key=lambda e: (e[0], e[1]))
    most = running = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def store_figures(store: Path, block: int) -> dict:
    from orchestrator.store.tables import Store

    trials = Store(store).trials(STUDY)
    ended = sorted(t.timestamp() for t in trials["ended_at"])
    blocks = []
    for first in range(0, len(ended) - block + 1, block):
        span = ended[first + block - 1] - ended[first]
        blocks.append({"trials": first + block, "s": span, "trials_per_s": (block - 1) / span if span else None})
    started = trials["started_at"].dropna()
    span = ended[-1] - min(t.timestamp() for t in started) if len(started) else ended[-1] - ended[0]
    slots = concurrency(trials) or 1
    train = float(trials["train_time_s"].fillna(0).sum())
    n = len(trials)
    return {
        "n_trials": n, "statuses": trials["status"].value_counts().to_dict(), "blocks": blocks,
        "span_s": span, "slots": slots, "train_s": train,
        "train_ms_per_trial": 1000 * train / n, "slot_ms_per_trial": 1000 * slots * span / n,
        "overhead_ms_per_trial": 1000 * (slots * span - train) / n,
        "slot_busy": train / (slots * span) if span else None,
    }


def main() -> None:
    # An orch home of the run's own: the sweeps start their own Ray, never join a warm one of the
    # user's (orch up).
    os.environ["ORCH_HOME"] = tempfile.mkdtemp(prefix="orch-bench-home-")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--block", type=int, default=1000, help="trials per block of the table")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="another override of the sweep's config (repeatable)")
    ap.add_argument("--sample-s", type=float, default=0.5, help="seconds between samples of the driver")
    ap.add_argument("--keep", type=Path, help="keep the store (and the sweep's output) here")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    block = min(args.block, args.trials)

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"orch sweep {args.config.name}: {args.trials} one-epoch trials, fifo", flush=True)
    with tempfile.TemporaryDirectory(prefix="orch-bench-scale-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        store = work / "store"
        run = run_sweep(args.config, args.trials, store, args.overrides, work / "sweep.log", args.sample_s)
        figures = store_figures(store, block)
        if args.keep:
            (work / "samples.json").write_text(json.dumps(run["samples"]))

    samples = run.pop("samples")
    marks = at_each(samples, block, args.trials)
    running = [s for s in samples if s["done"] is not None]
    # (while trials run: once the last has finished, the driver reads the results and writes the summary)
    fit = slope([(s["done"], s["rss_mb"]) for s in running if block <= s["done"] < args.trials])
    rates = [b["trials_per_s"] for b in figures["blocks"] if b["trials_per_s"]]
    cpu_per_trial = [(b["cpu_s"] - a["cpu_s"]) / block * 1000 for a, b in zip(marks, marks[1:], strict=False)
                     if a["cpu_s"] is not None and b["cpu_s"] is not None]
    # CPU per trial of each kind of process, from the first block's end to the last's
    kinds: dict[str, float] = {}
    if len(marks) > 1:
        first, last = marks[0]["tree_cpu_s"], marks[-1]["tree_cpu_s"]
        n = marks[-1]["trials"] - marks[0]["trials"]
        kinds = {k: 1000 * (last[k] - first.get(k, 0.0)) / n for k in sorted(last)}
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "trials": args.trials, "wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"],
        "rss_mb_first_trial": next((s["rss_mb"] for s in running if s["done"] >= 1), None),
        "rss_mb_at": {str(m["trials"]): m["rss_mb"] for m in marks},
        "peak_rss_mb_running": max((s["rss_mb"] for s in running if s["done"] < args.trials), default=None),
        "rss_mb_per_1000_trials": fit * 1000 if fit is not None else None,
        "trials_per_s_first": rates[0] if rates else None, "trials_per_s_last": rates[-1] if rates else None,
        "last_over_first": rates[-1] / rates[0] if len(rates) > 1 else None,
        "driver_cpu_ms_per_trial": cpu_per_trial,
        "cpu_ms_per_trial": kinds,  # after the first block: the driver, Ray's processes, the workers
        **figures,
    }

    print()
    print(f"{'trials':>8} {'RSS (MB)':>9} {'block (s)':>10} {'trials/s':>9} {'driver CPU ms/trial':>20}")
    by_block = {b["trials"]: b for b in figures["blocks"]}
    for i, m in enumerate(marks):
        b = by_block.get(m["trials"], {})
        cpu = f"{cpu_per_trial[i - 1]:.1f}" if 0 < i <= len(cpu_per_trial) else "-"
        rate = f"{b['trials_per_s']:.2f}" if b.get("trials_per_s") else "-"
        print(f"{m['trials']:>8} {m['rss_mb']:>9.0f} {b.get('s', float('nan')):>10.1f} {rate:>9} {cpu:>20}")
    print()
    print(f"wall {run['wall_s']:.1f}s, {figures['n_trials']} trials ({figures['statuses']}), "
          f"{figures['slots']} slots")
    print(f"driver RSS: peak {run['peak_rss_mb']:.0f} MB (target < 1024 MB at 10,000 trials; "
          f"{result['peak_rss_mb_running'] or float('nan'):.0f} MB while trials ran), "
          f"slope {result['rss_mb_per_1000_trials'] or float('nan'):.1f} MB per 1,000 trials")
    if kinds:
        print("CPU per trial after the first block (ms): "
              + ", ".join(f"{k} {v:.1f}" for k, v in kinds.items()))
    if result["last_over_first"] is not None:
        print(f"throughput: first {block} {rates[0]:.2f} trials/s, last {block} {rates[-1]:.2f} trials/s, "
              f"last/first {result['last_over_first']:.2f} (target >= 0.90)")
    print(f"per trial: slot time {figures['slot_ms_per_trial']:.0f} ms, "
          f"training {figures['train_ms_per_trial']:.0f} ms, overhead {figures['overhead_ms_per_trial']:.0f} ms "
          f"(slots busy {figures['slot_busy']:.0%})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
