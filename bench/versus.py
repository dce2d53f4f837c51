"""One benchmark, two versions of orch, side by side in one run.

Checks out ``--baseline`` (a git revision) into a temporary worktree and runs the same benchmark
script from it and from this tree, alternating (baseline, current, baseline, current, ...), each
in a fresh process that imports orch from its own tree (``PYTHONPATH``; the ``orch`` command too).
Every run writes its figures as JSON; the table compares the medians of each figure.

    python bench/versus.py --baseline HEAD~1 -- bench/sweep_overhead.py --quick
    python bench/versus.py --baseline 98b5ebd --rounds 2 -- bench/store_scale.py --studies 20
    python bench/versus.py --baseline bc5de88 --script-from-current -- bench/scale.py --trials 2000
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def numbers(data: object, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON document, by its dotted path."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(numbers(v, f"{prefix}{k}."))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out.update(numbers(v, f"{prefix}{i}."))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        out[prefix.rstrip(".")] = float(data)
    return out


def run_once(tree: Path, script: str, args: list[str], out: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(tree / script), *args, "--json", str(out)]
    subprocess.run(cmd, cwd=tree, env=env, check=True)
    return numbers(json.loads(out.read_text()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="the git revision to compare with")
    ap.add_argument("--rounds", type=int, default=1, help="alternating runs of each version")
    ap.add_argument("--json", type=Path, help="also write both versions' figures here")
    ap.add_argument("--script-from-current", action="store_true",
                    help="run this tree's copy of the script in the baseline's tree too (a benchmark newer "
                         "than the baseline; it measures whatever orch its tree holds)")
    ap.add_argument("script", help="the benchmark, relative to the repository (takes --json PATH)")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    args = [x for x in a.args if x != "--"]
    rev = subprocess.run(["git", "rev-parse", "--short", a.baseline], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    current = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="orch-versus-") as tmp:
        base_tree = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), rev], cwd=ROOT, check=True,
                       capture_output=True)
        if a.script_from_current:
            (base_tree / a.script).parent.mkdir(parents=True, exist_ok=True)
            (base_tree / a.script).write_bytes((ROOT / a.script).read_bytes())
        try:
            runs: dict[str, list[dict[str, float]]] = {"baseline": [], "current": []}
            for i in range(a.rounds):
                for name, tree in (("baseline", base_tree), ("current", ROOT)):
                    print(f"== round {i + 1}: {name} ({rev if name == 'baseline' else current})", flush=True)
                    runs[name].append(run_once(tree, a.script, args, Path(tmp) / f"{name}-{i}.json"))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT,
                           capture_output=True)
    keys = [k for k in runs["current"][0] if all(k in r for rs in runs.values() for r in rs)]
    median = {n: {k: statistics.median(r[k] for r in rs) for k in keys} for n, rs in runs.items()}
    label = f"{current}{'+changes' if dirty else ''}"
    print(f"\n{a.script} {' '.join(args)}: baseline {rev} vs current {label}, {a.rounds} round(s), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'figure':<44} {'baseline':>12} {'current':>12} {'current/baseline':>17}")
    for k in keys:
        b, c = median["baseline"][k], median["current"][k]
        ratio = f"{c / b:.3f}" if b else "-"
        print(f"{k:<44} {b:>12.4g} {c:>12.4g} {ratio:>17}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"baseline": rev, "current": label, "script": a.script,
                                      "args": args, "runs": runs, "median": median}, indent=1))


if __name__ == "__main__":
    main()
