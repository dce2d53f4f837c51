"""Shared fixtures: the orch CLI as a subprocess, small sweep overrides, Ray process hygiene."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

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


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    detail: str = ""  # an exception that escaped the CLI (in process only)


def cli(*args: object) -> Run:
    """``orch ARGS`` in this process, through the real click entry point (the console script's code)."""
    from orchestrator.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], env={"ORCH_DEBUG": None})
    detail = ""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        detail = f"{type(result.exception).__name__}: {result.exception}"
    return Run(result.exit_code, result.stdout, result.stderr, detail)


def assert_user_error(run: Run, *fragments: str) -> str:
    """Exit 2, one line on stderr (no traceback) holding every fragment; returns that line."""
    assert run.code == 2, f"exit {run.code}; stderr {run.stderr!r}; {run.detail}"
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {run.stderr!r}"
    line = lines[0]
    assert line.startswith("orch: error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert run.stdout == ""
    return line


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
