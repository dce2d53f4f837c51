"""Shared fixtures: the orch CLI as a subprocess, small sweep overrides, Ray process hygiene."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "conf" / "tabular.yaml"
ORCH = str(Path(sys.executable).with_name("orch"))

# A sweep small enough for a test: 2 CPUs on loopback, a few short trials.
SMALL = ["study=test-iris", "ray.num_cpus=2", "scheduler.max_epochs=4", "scheduler.grace_period=1", "data.source=sklearn:iris"]


def orch(*args: str, cwd: Path | None = None, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the ``orch`` command line as a user would; returns the completed process (text).

    Sweeps skip their report (ORCH_NO_REPORT=1) unless ``env`` says otherwise: tests/test_report.py
    checks reports; elsewhere they would only add seconds to every sweep.
    """
    return subprocess.run([ORCH, *map(str, args)], capture_output=True, text=True, cwd=cwd or ROOT,
                          timeout=timeout, env={**os.environ, "ORCH_NO_REPORT": "1", **(env or {})})


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (read from /proc, so it works without psutil)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_all(pids: list[int]) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"
