"""How long does a sweep's report take, and where does the time go?

    python bench/report_speed.py STORE STUDY [--sweep ID] [--repeats 3]

Times each part of ``orch report`` (reading the store, each plot, the importance surrogate, the
page) in this process, after one warm-up build (imports: matplotlib, scikit-learn), and the whole
command as a user runs it (a subprocess, start-up included). Prints the medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.report import page as report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("study")
    ap.add_argument("--sweep", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="orch-report-"))
    report.build(a.store, a.study, a.sweep, out)  # warm-up: imports
    parts: dict[str, list[float]] = {}

    def timed(name: str, fn, *args):
        t0 = time.perf_counter()
        value = fn(*args)
        parts.setdefault(name, []).append(time.perf_counter() - t0)
        return value

    for _ in range(a.repeats):
        sw = timed("read the store", report.load, a.store, a.study, a.sweep)
        timed("learning curves", report.plot_curves, sw, out / "c.png")
        timed("knobs", report.plot_knobs, sw, out / "k.png")
        timed("parallel coordinates", report.plot_parallel, sw, out / "p.png")
        items, r2 = timed("importance (surrogate)", report.importance, sw)
        timed("importance plot", report.plot_importance, items, r2, out / "i.png")
        timed("whole build", report.build, a.store, a.study, a.sweep, out)
    orch = str(Path(sys.executable).with_name("orch"))
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        subprocess.run([orch, "report", a.study, "--store", str(a.store), "--out", str(out / "cli"),
                        *(["--sweep", a.sweep] if a.sweep else [])], check=True, capture_output=True)
        parts.setdefault("orch report (command)", []).append(time.perf_counter() - t0)
    trials = len(sw.trials)
    print(f"{trials} trials, {len(sw.metrics)} metric rows; median of {a.repeats} (s)")
    print("| part | seconds |")
    print("|---|---|")
    for name, values in parts.items():
        print(f"| {name} | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    main()
