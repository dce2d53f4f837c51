"""The cluster commands' user errors, orch status from status files, and the node scripts' checks.

No cluster here: each case fails (or answers) before one would be needed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from orchestrator.cluster import jobs
from orchestrator.tune.callbacks import Progress
from orchestrator.tune.files import STATUS_FILE
from tests.conftest import DEPLOY, ROOT, orch


def one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("orch: error: ")
    return lines[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_sweep_address_must_be_the_gcs_not_the_dashboard(store: Path) -> None:
    line = one_line_error(orch("sweep", "conf/tabular.yaml", "--address", "http://127.0.0.1:8265", "--store", store))
    assert "--address" in line and "orch submit" in line
    assert not store.exists()


def test_sweep_address_that_nothing_answers_is_a_user_error_at_once(store: Path) -> None:
    port = closed_port()
    line = one_line_error(orch("sweep", "conf/tabular.yaml", "--address", f"127.0.0.1:{port}", "--store", store,
                               timeout=60))
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in line
    assert not (store / "trials").exists() and not (store / "sweeps").exists()


@pytest.mark.parametrize("override, key", [
    ("failure.max_retries=-1", "failure.max_retries"),
    ("ray.address=nohostport", "ray.address"),
    ("ray.reuse_actors=maybe", "ray.reuse_actors"),
])
def test_cluster_config_keys_are_checked(override: str, key: str, store: Path) -> None:
    line = one_line_error(orch("check", "conf/tabular.yaml", override, "--config-only"))
    assert key in line


def test_submit_config_outside_the_shipped_directory(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text((ROOT / "conf" / "tabular.yaml").read_text().replace("search_spaces/",
                                                                           f"{ROOT}/search_spaces/"))
    line = one_line_error(orch("submit", config, "--address", "http://127.0.0.1:9"))
    assert "must be inside the working directory" in line


def test_submit_to_a_dashboard_that_nothing_answers(tmp_path: Path) -> None:
    port = closed_port()
    line = one_line_error(orch("submit", "conf/tabular.yaml", "--address", f"http://127.0.0.1:{port}",
                               env={"RAY_AUTH_TOKEN": "x" * 64}, timeout=120))
    assert f"cannot reach the Ray dashboard at http://127.0.0.1:{port}" in line


def test_submit_a_bad_config_fails_before_anything_is_sent() -> None:
    line = one_line_error(orch("submit", "conf/tabular.yaml", "scheduler.max_epochs=0", "--address",
                               "http://127.0.0.1:9"))
    assert "scheduler.max_epochs" in line


def _status_file(store: Path, sweep_id: str, state: str, updated: datetime, **extra) -> None:
    d = store / "_ray" / sweep_id
    d.mkdir(parents=True)
    (d / STATUS_FILE).write_text(json.dumps({
        "study": "s", "sweep_id": sweep_id, "state": state, "trials": 10, "done": 4,
        "counts": {"running": 2}, "metric": "val_loss", "best": 0.1234, "started_at":
        (updated - timedelta(seconds=75)).isoformat(), "updated_at": updated.isoformat(), "host": "h", "pid": 1,
        **extra}))


def test_status_lists_running_sweeps_and_marks_silent_ones_interrupted(store: Path) -> None:
    now = datetime.now(timezone.utc)
    _status_file(store, "20260101-000000-aaaa", "running", now)
    _status_file(store, "20260101-000000-bbbb", "running", now - timedelta(minutes=10))
    _status_file(store, "20260101-000000-cccc", "ended", now - timedelta(minutes=1), done=10)
    res = orch("status", "--store", store)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["STUDY", "SWEEP", "STATE", "TRIALS", "RUNNING", "BEST", "ELAPSED", "WHERE"]
    assert len(lines) == 2 and "aaaa" in lines[1] and "running" in lines[1] and "4/10" in lines[1]
    assert "val_loss 0.1234" in lines[1]
    # A running sweep's elapsed time goes on: at least the 75 s it had, at most that plus the wait.
    elapsed = re.search(r" (\d\d):(\d\d) ", lines[1])
    assert elapsed, lines[1]
    seconds = 60 * int(elapsed[1]) + int(elapsed[2])
    assert 75 <= seconds <= 76 + (datetime.now(timezone.utc) - now).total_seconds(), lines[1]
    everything = orch("status", "--store", store, "--all", "--format", "json")
    states = {r["sweep_id"][-4:]: r["state"] for r in json.loads(everything.stdout)}
    assert states == {"aaaa": "running", "bbbb": "interrupted", "cccc": "finished"}


def test_status_with_nothing_running(store: Path) -> None:
    res = orch("status", "--store", store, env={"RAY_API_SERVER_ADDRESS": ""})
    assert res.returncode == 0 and res.stdout.startswith("no running sweeps in")


def test_status_reads_the_progress_line_the_sweep_prints() -> None:
    progress = Progress(64, "val_loss", "min", interval_s=0)
    progress.counts.update(completed=30, stopped_early=10)
    progress.running, progress.best = 4, (0.0812, "abcd1234")
    m = jobs.PROGRESS.search("2026-11-23 12:00:00 INFO " + progress.line())
    assert m and (m["done"], m["total"], m["running"]) == ("40", "64", "4")
    assert (m["metric"], float(m["best"])) == ("val_loss", 0.0812)


def _script(name: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ORCH_"))}
    return subprocess.run([str(DEPLOY / name)], env={**base, "HOME": str(tmp_path), **env}, capture_output=True,
                          text=True, timeout=60)


def test_node_scripts_refuse_to_start_without_a_token(tmp_path: Path) -> None:
    res = _script("ray-head", {}, tmp_path)
    assert res.returncode == 2 and "no Ray auth token" in res.stderr
    res = _script("ray-head", {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, tmp_path)
    assert res.returncode == 2 and "RAY_AUTH_TOKEN_PATH" in res.stderr
    res = _script("ray-worker", {"RAY_AUTH_TOKEN": "t"}, tmp_path)
    assert res.returncode == 2 and "ORCH_HEAD_ADDRESS" in res.stderr
    res = _script("retuner", {}, tmp_path)
    assert res.returncode == 2 and "ORCH_STORE" in res.stderr


def test_make_token_writes_once_and_only_for_its_owner(tmp_path: Path) -> None:
    token = tmp_path / "secrets" / "ray_auth_token"
    first = subprocess.run([str(DEPLOY / "make-token"), str(token)], capture_output=True, text=True, check=True)
    assert "wrote" in first.stdout
    text = token.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", text), text  # 32 random bytes, as hex, on one line
    value = text.strip()
    assert token.stat().st_mode & 0o077 == 0
    assert list(token.parent.iterdir()) == [token]  # no temporary file left beside it
    again = subprocess.run([str(DEPLOY / "make-token"), str(token)], capture_output=True, text=True, check=True)
    assert "kept" in again.stdout and token.read_text().strip() == value
    other = tmp_path / "other_token"
    subprocess.run([str(DEPLOY / "make-token"), str(other)], capture_output=True, check=True)
    assert other.read_text().strip() != value  # a new random token each time, not a fixed one
    # The token Ray itself loads from the file (RAY_AUTH_TOKEN_PATH, as the nodes and the clients
    # are given it): it accepts this value and no other.
    accepts = ("import sys\n"
               "from ray._private.authentication import authentication_utils as auth\n"
               "print(auth.is_token_auth_enabled(), *(auth.validate_request_token(f'Bearer {t}')"
               " for t in sys.argv[1:]))")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    res = subprocess.run([sys.executable, "-c", accepts, value, other.read_text().strip()], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["True", "True", "False"], res.stdout + res.stderr
