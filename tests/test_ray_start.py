"""Which Ray a sweep uses, a deadline on every wait on Ray, Ctrl-C and SIGTERM at any moment, Ray's
log lines off the terminal, resources no node has, and sweeps started at the same moment.

Everything runs on 127.0.0.1: embedded Rays of at most 2 CPUs, and nodes started by the scripts in
deploy/ with a token and a Ray temp directory of the test's own. Each test stops only the
processes it started.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import (
    CONFIG,
    SMALL,
    Cluster,
    descendants,
    end_process,
    new_cluster,
    orch,
    orch_process,
    outlived,
    start_sweep,
    store_rows,
    wait_for_trials,
)

TINY = [*SMALL, "search.num_samples=2", "scheduler.max_epochs=2"]
# Ray's log lines: its C++ logger's "[2026-12-01 20:08:37,629 I 11604 11604] logging.cc:303: ..."
# and its Python logger's "2026-12-01 20:02:27,814<TAB>INFO scripts.py:1159 -- ...".
RAY_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
                      r"|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+[A-Z]+ "
                      r"|\.cc:\d+:", re.MULTILINE)


def error_line(res: subprocess.CompletedProcess, status: int) -> str:
    """The one line on stderr of a command that failed with ``status`` (no other, no traceback)."""
    assert res.returncode == status, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("orch: error: "), lines[0]
    return lines[0]


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A Ray temp directory of the test's own (short: Ray's socket paths must fit in 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="orch-rs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def silent_listener() -> Iterator[socket.socket]:
    """A port that accepts connections and never answers: a Ray head that hangs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(64)
        srv.settimeout(120)
        yield srv


# -- A: which Ray, deadlines, signals -------------------------------------------------------------


@pytest.mark.slow
def test_a_stopped_head_cleans_up_and_an_embedded_sweep_never_joins_a_dead_cluster(
        tmp_path: Path, ray_tmp: Path, store: Path) -> None:
    c = new_cluster(tmp_path, ray_tmp)
    try:
        c.start_head()  # its temp directory at Ray's default for RAY_TMPDIR=ray_tmp
        address_file = ray_tmp / "ray" / "ray_current_cluster"
        deadline = time.monotonic() + 30
        while not address_file.exists() and time.monotonic() < deadline:  # once the node is up
            time.sleep(0.2)
        assert address_file.read_text().strip() == c.gcs
        tree = descendants(c.head.proc.pid)
        assert tree
        os.kill(c.head.proc.pid, signal.SIGTERM)  # the script's process alone, as `docker stop`
        c.head.proc.wait(timeout=60)
        assert not outlived(tree), "the head's processes outlived it"
        assert not address_file.exists(), "the stopped head left its cluster's address behind"
    finally:
        c.stop()
    # A head killed outright cannot clean up: its file names a dead cluster. Sweeps without an
    # address start their own Ray all the same.
    address_file.write_text(c.gcs)
    res = orch("sweep", CONFIG, *TINY, "--store", store, env={"RAY_TMPDIR": str(ray_tmp)},
               timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Ray dashboard: http://127.0.0.1:" in res.stdout and "Best trial" in res.stdout
    assert "Ray cluster:" not in res.stdout  # its own Ray, not a cluster it joined


def test_a_named_cluster_that_does_not_answer_is_one_line_within_the_deadline(store: Path) -> None:
    with silent_listener() as srv:
        port = srv.getsockname()[1]
        res = orch("sweep", CONFIG, *TINY, "--address", f"127.0.0.1:{port}", "--store", store,
                   env={"ORCH_RAY_TIMEOUT_S": "3"}, timeout=90)
    line = error_line(res, 2)
    assert f"the Ray cluster at 127.0.0.1:{port} did not answer within 3s" in line
    assert "ORCH_RAY_TIMEOUT_S" in line
    assert not (store / "trials").exists() and not (store / "sweeps").exists()


@pytest.mark.parametrize("sig, status, message", [
    (signal.SIGTERM, 143, "orch: terminated (SIGTERM)"),
    pytest.param(signal.SIGINT, 130, "orch: interrupted", marks=pytest.mark.slow),
])
def test_a_signal_stops_a_sweep_while_ray_waits_on_a_cluster(sig: int, status: int, message: str,
                                                              store: Path) -> None:
    with silent_listener() as srv:
        port = srv.getsockname()[1]
        proc = orch_process("sweep", CONFIG, *TINY, "--address", f"127.0.0.1:{port}",
                            "--store", store, env={"ORCH_RAY_TIMEOUT_S": "300"})
        try:
            conns = [srv.accept()[0] for _ in range(2)]  # orch's reachability check, Ray's client
            time.sleep(2)  # well inside Ray's connect-and-retry loop, in its native code
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for conn in conns:
            conn.close()
    assert proc.returncode == status, (proc.returncode, out, err)
    assert err.strip().splitlines() == [message], err


@pytest.mark.slow
def test_sigterm_stops_a_sweep_while_its_ray_starts(store: Path) -> None:
    proc = start_sweep([*TINY, "ray.num_cpus=1", "--store", str(store)])
    tree: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:  # Ray's first process is up
            tree = descendants(proc.pid)
            if any(_comm(pid) == "gcs_server" for pid in tree):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the sweep's Ray did not start")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        end_process(proc)
    assert proc.returncode == 143, out
    assert out.strip().splitlines()[-1] == "orch: terminated (SIGTERM)" and "Traceback" not in out
    assert not outlived(descendants(proc.pid) + tree), "Ray's processes outlived the sweep"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.mark.slow
def test_sigterm_stops_a_running_sweep_cleanly(store: Path) -> None:
    proc = start_sweep([*SMALL, "scheduler.name=fifo", "scheduler.max_epochs=30",
                        "search.num_samples=16", "model.hidden=32", "--store", str(store)])
    tree: list[int] = []
    try:
        wait_for_trials(store, 1, proc, timeout=180)
        tree = descendants(proc.pid)
        terminated_at = pd.Timestamp(datetime.now(timezone.utc))
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        end_process(proc)
    assert proc.returncode == 143, out
    assert "interrupted" in out and "--resume" in out and "Traceback" not in out
    assert out.strip().splitlines()[-1] == "orch: terminated (SIGTERM)"
    trials = store_rows(store, "trials")
    assert len(trials) >= 1 and set(trials["status"]) <= {"completed", "stopped_early"}
    # It stopped instead of running the sweep on: no trial it kept started after the SIGTERM,
    # and the sweep is not recorded as finished.
    assert (trials["started_at"] < terminated_at).all(), trials[["trial_id", "started_at"]]
    assert not (store / "sweeps").exists()
    assert not outlived(tree)


# -- B: resources no machine has ------------------------------------------------------------------


@pytest.mark.parametrize("override, fragment", [
    pytest.param("resources.cpu_per_trial=1000",
                 "resources.cpu_per_trial: 1000 CPUs per trial, but this machine's Ray has 2 (ray.num_cpus)",
                 marks=pytest.mark.slow),
    pytest.param("resources.gpu_per_trial=2",
                 "resources.gpu_per_trial: 2 GPUs per trial, but this machine's Ray has ",
                 marks=pytest.mark.slow),  # the same check as for CPUs
])
def test_b_more_than_the_embedded_ray_has_is_a_user_error(override: str, fragment: str,
                                                          store: Path) -> None:
    if override.startswith("resources.gpu") and shutil.which("nvidia-smi"):
        pytest.skip("this machine may have GPUs")
    res = orch("sweep", CONFIG, *TINY, override, "--store", store, timeout=120)
    assert fragment in error_line(res, 2)
    assert not (store / "trials").exists()


def test_b_wait_s_is_checked() -> None:
    res = orch("check", CONFIG, "resources.wait_s=-1", "--config-only")
    assert "resources.wait_s" in error_line(res, 2)


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> Iterator[Cluster]:
    """A head of 1 CPU, for the tests that join a cluster."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="orch-rs-"))
    c = new_cluster(tmp_path_factory.mktemp("head"), ray_tmp)
    try:
        c.start_head(num_cpus=1)
        yield c
    finally:
        c.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_a_wrong_token_is_one_line_at_once(head: Cluster) -> None:
    res = orch("sweep", CONFIG, *TINY, "--address", head.gcs, "--store", head.tmp / "nothing",
               base_env=head.env, env={"RAY_AUTH_TOKEN": "0" * 64}, timeout=60)
    line = error_line(res, 2)  # (no line of Ray's retries either)
    assert line.startswith(f"orch: error: cannot join the Ray cluster at {head.gcs}: "
                           "it refused this machine's token")
    assert not any((head.tmp / "nothing").glob("*"))  # nothing written


@pytest.mark.slow
def test_b_no_node_big_enough_waits_then_stops(head: Cluster) -> None:
    res = orch("sweep", CONFIG, *TINY, "resources.cpu_per_trial=2", "resources.wait_s=2",
               "--address", head.gcs, "--store", head.tmp / "too-big", base_env=head.env,
               timeout=120)
    line = error_line(res, 1)
    assert ("no node of the Ray cluster has 2 CPUs (resources.cpu_per_trial) for one trial after "
            "waiting 2s") in line
    assert "at most 1 CPU" in line
    assert "waiting up to 2s (resources.wait_s)" in res.stdout


@pytest.mark.slow
def test_b_a_sweep_waits_for_a_node_big_enough_to_join(head: Cluster) -> None:
    store = head.tmp / "scaled"
    proc = head.orch("sweep", CONFIG, *TINY, "resources.cpu_per_trial=2",
                     "resources.wait_s=240", "--address", head.gcs, "--store", str(store))
    try:
        waited = ""
        while "waiting up to 240s" not in waited:
            line = proc.stdout.readline()
            assert line, f"the sweep ended without waiting:\n{waited}"
            waited += line
        head.add_worker("w2", ORCH_NUM_CPUS="2")  # the cluster scales up
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, waited + out
    assert "A node with 2 CPUs (resources.cpu_per_trial) is alive after" in out
    assert len(store_rows(store, "trials")) == 2


# -- C and D: sweeps started at the same moment; Ray's log lines ---------------------------------


@pytest.mark.slow
def test_cd_two_sweeps_at_once_both_run_and_ray_stays_off_the_terminal(tmp_path: Path) -> None:
    # Sweeps long enough (digits, 4 full trials on one CPU each) that the two overlap well past
    # their start-ups even on a loaded machine: a second sweep that started after the first ended
    # would rightly get the same port.
    small = [*SMALL, "data.source=sklearn:digits", "search.num_samples=4", "scheduler.name=fifo",
             "scheduler.max_epochs=10", "ray.num_cpus=1"]
    procs = [orch_process("sweep", CONFIG, *small, "--store", tmp_path / f"store{i}", *extra)
             for i, extra in enumerate([[], ["--verbose"]])]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    urls = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-2000:] + err[-3000:]
        m = re.search(r"^Ray dashboard: (http://\S+)$", out, re.MULTILINE)
        assert m, out
        urls.append(m.group(1))
    assert urls[0] != urls[1] and all(u.startswith("http://127.0.0.1:") for u in urls), urls
    quiet_err, verbose_err = outputs[0][1], outputs[1][1]
    assert not RAY_LINE.search(quiet_err), quiet_err
    assert "logging.cc" not in quiet_err
    # --verbose: Ray's own logs.
    assert "Started a local Ray instance" in verbose_err, verbose_err
    assert RAY_LINE.search(verbose_err), verbose_err
