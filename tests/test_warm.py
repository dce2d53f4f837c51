"""A warm local Ray: ``orch up`` starts a Ray head on 127.0.0.1 that sweeps join and that outlives
them, ``orch down`` stops it (and only it)."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CONFIG, alive, assert_user_error, cli, free_port, make_token, orch, store_rows

TINY = ["study=warm", "search.num_samples=2", "scheduler.name=fifo", "scheduler.max_epochs=1",
        "data.source=sklearn:iris", "--no-report"]


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a user who ran ``orch up`` (a home and a token of the test's own), with
    the head it started; stopped at the end whatever happened."""
    tmp = tmp_path_factory.mktemp("warm")
    env = {"ORCH_HOME": str(tmp / "home"), "RAY_AUTH_TOKEN_PATH": str(make_token(tmp / "token")),
           "ORCH_STORE": str(tmp / "store"),
           # The head's Ray Jobs run `orch` from its environment: this interpreter's.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    port, dashboard = free_port(), free_port()
    up = orch("up", "--num-cpus", "2", "--port", port, "--dashboard-port", dashboard, env=env, timeout=180)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"Started a local Ray at 127.0.0.1:{port}" in up.stdout
        assert f"Dashboard: http://127.0.0.1:{dashboard}" in up.stdout
        yield env
    finally:
        record = Path(env["ORCH_HOME"]) / "ray-up.json"
        if record.exists():
            orch("down", env=env)


def _head(env: dict[str, str]) -> dict:
    return json.loads((Path(env["ORCH_HOME"]) / "ray-up.json").read_text())


def _dashboard_answers(env: dict[str, str]) -> bool:
    head = _head(env)
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    request = urllib.request.Request(head["dashboard"] + "/api/version",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.slow  # a Ray head of its own (CI runs the slow tests too)
def test_a_second_up_finds_the_running_head(warm: dict[str, str]) -> None:
    again = orch("up", env=warm)
    assert again.returncode == 0, again.stderr
    assert f"Already running: a local Ray at {_head(warm)['address']}" in again.stdout


@pytest.mark.slow  # a Ray head of its own (CI runs the slow tests too)
def test_sweeps_join_the_warm_ray_and_its_dashboard_outlives_them(warm: dict[str, str]) -> None:
    head = _head(warm)
    p = orch("sweep", CONFIG, *TINY, env=warm)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"Ray: the local Ray of `orch up` at {head['address']}, 2 CPUs" in p.stdout
    assert f"Ray dashboard: {head['dashboard']}  (the local Ray of `orch up` stays up" in p.stdout
    assert "2 completed" in p.stdout
    assert _dashboard_answers(warm)  # the sweep left it running
    assert alive([head["pid"]]) == [head["pid"]]
    # `--address local`: a Ray of the sweep's own, gone with it.
    own = orch("sweep", CONFIG, *TINY, "--address", "local", env=warm)
    assert own.returncode == 0, own.stdout + own.stderr
    assert "orch up" not in own.stdout and "Ray dashboard was at" in own.stdout
    # orch status lists the sweeps of the store (and asks the warm head's dashboard for Ray Jobs).
    status = orch("status", "--all", env=warm)
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("warm ") == 2, status.stdout


@pytest.mark.slow
def test_submit_sends_a_sweep_to_the_warm_ray_as_a_ray_job(warm: dict[str, str]) -> None:
    head = _head(warm)
    p = orch("submit", "conf/tabular.yaml", "study=warm-job", "search.num_samples=2", "scheduler.name=fifo",
             "scheduler.max_epochs=1", "--follow", env=warm, timeout=400)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"Dashboard: {head['dashboard']}/#/jobs/orch:warm-job:" in p.stdout
    assert "Ray Job orch:warm-job:" in p.stdout and ": SUCCEEDED" in p.stdout
    trials = store_rows(Path(warm["ORCH_STORE"]), "trials")  # the store of this machine
    assert (trials["study"] == "warm-job").sum() == 2


def test_an_unreadable_record_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "ray-up.json").write_text("{not json")
    run = cli("down", env={"ORCH_HOME": str(home)})
    assert_user_error(run, str(home / "ray-up.json"), "not a record of `orch up`")


def test_a_record_of_a_dead_head_is_no_head(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    record = {"pid": 2**22 + 1, "address": f"127.0.0.1:{free_port()}", "dashboard": "http://127.0.0.1:1",
              "started_at": "2026-12-01T00:00:00+00:00", "log": "x"}
    (home / "ray-up.json").write_text(json.dumps(record))
    run = cli("down", env={"ORCH_HOME": str(home)})
    assert run.code == 0 and "no local Ray started by orch up runs" in run.stdout
    assert not (home / "ray-up.json").exists()


def test_bad_options_are_one_line(tmp_path: Path) -> None:
    run = cli("up", "--num-cpus", "0", env={"ORCH_HOME": str(tmp_path)})
    assert run.code == 2 and "--num-cpus" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow  # a Ray head of its own (CI runs the slow tests too)
def test_down_stops_the_head_and_every_process_it_started(warm: dict[str, str]) -> None:
    head = _head(warm)
    group = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == head["pid"]]
    assert len(group) > 3  # the node's command, GCS, raylet, dashboard, ...
    down = orch("down", env=warm)
    assert down.returncode == 0, down.stderr
    assert f"Stopped the local Ray at {head['address']}" in down.stdout
    assert alive(group) == []
    assert not (Path(warm["ORCH_HOME"]) / "ray-up.json").exists()
    again = orch("down", env=warm)
    assert again.returncode == 0 and "no local Ray started by orch up runs" in again.stdout


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


def test_a_head_of_another_python_or_orch_is_not_joined() -> None:
    from orchestrator import __version__
    from orchestrator.tune.warm import Head, mismatch

    mine = Head(1, "127.0.0.1:6379", "http://127.0.0.1:8265", "", "", python=sys.executable, version=__version__)
    assert mismatch(mine) is None
    assert "its workers run /other/python" in str(mismatch(Head(**{**mine.__dict__, "python": "/other/python"})))
    assert "it runs orch 0.0.1" in str(mismatch(Head(**{**mine.__dict__, "version": "0.0.1"})))


def test_a_record_that_points_off_loopback_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    record = {"pid": os.getpid(), "address": "10.0.0.5:6379", "dashboard": "http://10.0.0.5:8265",
              "started_at": "2026-12-01T00:00:00+00:00", "log": "x"}
    (home / "ray-up.json").write_text(json.dumps(record))
    run = cli("down", env={"ORCH_HOME": str(home)})
    assert_user_error(run, "not a record of `orch up` on 127.0.0.1")
    assert (home / "ray-up.json").exists()  # left for the user to look at
