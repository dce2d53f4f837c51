"""Shared helpers and fixtures of the tests.

- The command line, two ways: ``cli(...)`` runs it in this process through the real click entry
  point (fast: for errors and messages); ``orch(...)`` and ``orch_process(...)`` run it as a user
  does, as a process of its own (``python -m orchestrator``): for exit statuses, signals and Ray.
- Small sweep overrides, and the store's rows exactly as its files hold them.
- Ray process hygiene: a test stops or kills only the processes it started, found by pid.
- Ray nodes started by the scripts in deploy/ (the commands docker-compose.yml runs), on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "conf" / "tabular.yaml"
DEPLOY = ROOT / "deploy"
# A warm local Ray of the user's (orch up) would be joined by the tests' sweeps: they get a home of
# their own (tests/test_warm.py starts its own head there).
os.environ["ORCH_HOME"] = tempfile.mkdtemp(prefix="orch-home-")
# The command line as a process: the same entry point as the `orch` console script.
ORCH_COMMAND = [sys.executable, "-m", "orchestrator"]

# A sweep small enough for a test: 2 CPUs on loopback, a few short trials.
SMALL = ["study=test-iris", "ray.num_cpus=2", "scheduler.max_epochs=4", "scheduler.grace_period=1",
         "data.source=sklearn:iris"]


# -- the command line ----------------------------------------------------------------------------


def orch_env(env: Mapping[str, str] | None = None,
             base_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of an orch process: ``base_env`` (this process's by default) without
    ORCH_DEBUG, with ORCH_NO_REPORT=1, then ``env``.

    Sweeps skip their report unless ``env`` says otherwise: tests/test_report.py checks reports;
    elsewhere they would only add seconds to every sweep.
    """
    base = dict(os.environ if base_env is None else base_env)
    base.pop("ORCH_DEBUG", None)
    return {**base, "ORCH_NO_REPORT": "1", **(env or {})}


def orch_process(*args: object, cwd: Path | None = None, env: Mapping[str, str] | None = None,
                 base_env: Mapping[str, str] | None = None, merge_stderr: bool = False,
                 new_session: bool = False) -> subprocess.Popen:
    """``orch ARGS`` started as a process of its own, as a user starts it (text pipes).

    ``merge_stderr``: stderr goes to stdout. ``new_session``: the process leads a session of its
    own (a signal to the test's terminal does not reach it; its Ray processes are its descendants).
    """
    return subprocess.Popen([*ORCH_COMMAND, *map(str, args)], cwd=cwd or ROOT,
                            env=orch_env(env, base_env), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                            start_new_session=new_session)


def orch(*args: object, cwd: Path | None = None, timeout: float = 240,
         env: Mapping[str, str] | None = None,
         base_env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """``orch ARGS`` as a process of its own, run to its end; returns the completed process."""
    proc = orch_process(*args, cwd=cwd, env=env, base_env=base_env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    detail: str = ""  # an exception that escaped the CLI (in process only)


def cli(*args: object, env: Mapping[str, str | None] | None = None) -> Run:
    """``orch ARGS`` in this process, through the real click entry point (the console script's
    code); ``env``: variables set (or, as None, unset) while it runs."""
    from orchestrator.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args],
                                env={"ORCH_DEBUG": None, **(env or {})})
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


def as_run(p: subprocess.CompletedProcess) -> Run:
    """A finished process as a ``Run``, for the assertions on in-process runs."""
    return Run(p.returncode, p.stdout, p.stderr)


def imported_modules(stderr: str) -> set[str]:
    """The modules a process imported, from its PYTHONPROFILEIMPORTTIME=1 lines on stderr."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


# -- the store's files ---------------------------------------------------------------------------


def store_rows(store: Path, table: str) -> pd.DataFrame:
    """A table's rows exactly as its files hold them (no de-duplication), with the stable layout's
    maps expanded to their columns (``config.<knob>``, a training loop's own metrics), plus the
    study partition."""
    from orchestrator.store import layout

    frames = []
    for f in sorted((store / table).glob("study=*/*.parquet")):
        df = layout.from_stable(table, pq.read_table(f)).to_pandas()
        df["study"] = f.parent.name.split("=", 1)[1]
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# -- processes ------------------------------------------------------------------------------------


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


def alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` that still run (a zombie has ended)."""
    out = []
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(p)
    return out


def outlived(pids: list[int], timeout: float = 60) -> list[int]:
    """Those of ``pids`` still running once they had ``timeout`` seconds to end (a guard against a
    hang only): they are killed, and returned for the test to fail on."""
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftover = alive(pids)
    kill_all(leftover)
    return leftover


def end_process(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and the processes below it if it still runs (a test that failed halfway)."""
    if proc.poll() is None:
        kill_all(descendants(proc.pid))
        proc.kill()
        proc.wait()


def _output(proc: subprocess.Popen) -> str:
    return proc.stdout.read() if proc.stdout else ""


def kill_driver_at(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 180) -> None:
    """Wait until ``ready()`` holds, then SIGKILL the sweep's driver at that very state, and then
    the Ray processes it had started (by pid: no other process on the machine is touched).

    The driver is the only writer of the store and of Tune's experiment state: ``ready()`` is asked
    again while the driver is stopped (SIGSTOP), so the files at the kill are those it saw.
    ``timeout`` only guards against a hang.
    """
    tree: list[int] = []
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the sweep ended before it could be killed:\n{_output(proc)[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the sweep did not reach the state to kill it at in {timeout:.0f}s")
            if ready():
                os.kill(proc.pid, signal.SIGSTOP)
                if ready():
                    break
                os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.1)
        tree = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies without any chance to clean up
        proc.wait(30)
    finally:
        kill_all(descendants(proc.pid) + tree)  # only the Ray processes this sweep started
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


# -- sweeps in the background ---------------------------------------------------------------------


def start_sweep(args: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """``orch sweep`` of the shipped config in the background, output merged, in a session of its
    own (so that its Ray processes are its descendants)."""
    return orch_process("sweep", CONFIG, *args, env=env, merge_stderr=True, new_session=True)


def finished_trials(store: Path) -> int:
    """Rows in the store's trials table now (0 before the first)."""
    return len(store_rows(store, "trials"))


def wait_for_trials(store: Path, n: int, proc: subprocess.Popen, timeout: float) -> None:
    """Until the store holds ``n`` finished trials of the sweep ``proc`` runs (``timeout`` only
    guards against a hang)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sweep ended before it could be stopped:\n{_output(proc)}")
        if finished_trials(store) >= n:
            return
        time.sleep(0.2)
    pytest.fail(f"no {n} finished trials in the store after {timeout}s")


# -- Ray nodes from deploy/'s scripts -------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_token(path: Path) -> Path:
    """A new Ray auth token in ``path``, written by deploy/make-token."""
    subprocess.run([str(DEPLOY / "make-token"), str(path)], check=True, capture_output=True,
                   env={**os.environ, "ORCH_PYTHON": sys.executable})
    return path


@dataclass
class Node:
    proc: subprocess.Popen
    log: Path
    metrics_port: int
    node_id: str = ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@dataclass
class Cluster:
    """Nodes on 127.0.0.1 started by deploy/'s scripts, each a process group of its own, with
    token authentication on and a token of the test's own."""

    tmp: Path
    env: dict[str, str]
    gcs: str
    dashboard: str
    store: Path
    ray_tmp: Path  # short: Ray's socket paths must fit in 107 bytes
    head: Node | None = None
    workers: list[Node] = field(default_factory=list)

    def node_env(self, **extra: str) -> dict[str, str]:
        agent_ports = (f"--dashboard-agent-listen-port {free_port()} "
                       f"--dashboard-agent-grpc-port {free_port()} "
                       f"--runtime-env-agent-port {free_port()} --node-manager-port {free_port()} "
                       f"--object-manager-port {free_port()}")
        return {**self.env, "ORCH_NODE_IP": "127.0.0.1", "ORCH_RAY_ARGS": agent_ports, **extra}

    def start(self, script: str, name: str, **extra: str) -> Node:
        metrics = free_port()
        log = self.tmp / f"{name}.log"
        env = self.node_env(ORCH_METRICS_PORT=str(metrics), ORCH_TEMP_DIR=str(self.ray_tmp / name),
                            **extra)
        if script == "ray-head":
            env["ORCH_RAY_ARGS"] += f" --ray-client-server-port {free_port()}"
        with open(log, "w") as out:
            proc = subprocess.Popen([str(DEPLOY / script)], env=env, cwd=ROOT, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        return Node(proc, log, metrics)

    def api(self, path: str) -> dict:
        request = urllib.request.Request(self.dashboard + path,
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    @property
    def token(self) -> str:
        return Path(self.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()

    def alive_nodes(self) -> list[dict]:
        try:
            nodes = self.api("/api/v0/nodes?limit=100")["data"]["result"]["result"]
        except (OSError, KeyError, ValueError):
            return []
        return [n for n in nodes if n["state"] == "ALIVE"]

    def add_worker(self, name: str, timeout_s: float = 60, **extra: str) -> Node:
        before = {n["node_id"] for n in self.alive_nodes()}
        node = self.start("ray-worker", name, ORCH_HEAD_ADDRESS=self.gcs, **extra)
        self.workers.append(node)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            new = [n["node_id"] for n in self.alive_nodes() if n["node_id"] not in before]
            if new:
                node.node_id = new[0]
                return node
            if node.proc.poll() is not None:
                break
            time.sleep(0.5)
        pytest.fail(f"worker node {name} did not join:\n{node.log.read_text()[-3000:]}")

    def orch(self, *args: object) -> subprocess.Popen:
        """``orch ARGS`` in the background, in the cluster's environment, output merged."""
        return orch_process(*args, base_env=self.env, merge_stderr=True)

    def start_head(self, num_cpus: int = 1, name: str = "ray", timeout_s: float = 90) -> Node:
        """deploy/ray-head, once Ray lists it alive. Named "ray", its temporary directory is
        Ray's default for RAY_TMPDIR=ray_tmp."""
        self.head = self.start("ray-head", name, ORCH_RAY_PORT=self.gcs.rsplit(":", 1)[1],
                               ORCH_DASHBOARD_PORT=self.dashboard.rsplit(":", 1)[1],
                               ORCH_NUM_CPUS=str(num_cpus))
        deadline = time.monotonic() + timeout_s
        while not (nodes := self.alive_nodes()):
            if self.head.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the head did not start:\n{self.head.log.read_text()[-3000:]}")
            time.sleep(0.5)
        self.head.node_id = nodes[0]["node_id"]
        return self.head

    def stop(self) -> None:
        for node in [*self.workers, *([self.head] if self.head else [])]:
            node.stop()


def new_cluster(tmp: Path, ray_tmp: Path, **env: str) -> Cluster:
    """A cluster with no node yet: a token of its own in ``tmp``, free ports, a store in ``tmp``,
    and an environment without the machine's own RAY_ and ORCH_ settings (plus ``env``)."""
    token = make_token(tmp / "ray_auth_token")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ORCH_"))}
    base.update({"RAY_AUTH_TOKEN_PATH": str(token), "ORCH_PYTHON": sys.executable,
                 "ORCH_STORE": str(tmp / "store"), "RAY_USAGE_STATS_ENABLED": "0", "ORCH_NO_REPORT": "1",
                 "PATH": f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}", **env})
    return Cluster(tmp, base, f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}",
                   tmp / "store", ray_tmp)


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


# -- object storage: a real S3 API (moto's server) on 127.0.0.1 ------------------------------------

S3_BUCKET = "orch-test"


@dataclass
class S3:
    """moto's S3 server on 127.0.0.1, and the environment that points boto3, pyarrow and orch at it."""

    endpoint: str
    env: dict[str, str]

    def uri(self, name: str) -> str:
        return f"s3://{S3_BUCKET}/{name}"

    def client(self):  # noqa: ANN201 - boto3 has no types here
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture(scope="session")
def s3_server():
    """One moto S3 server for the session, its environment set in this process (and so inherited by
    the orch processes and Ray workers the tests start)."""
    pytest.importorskip("moto")
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ENDPOINT_URL": endpoint,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3 = S3(endpoint, env)
    s3.client().create_bucket(Bucket=S3_BUCKET)
    try:
        yield s3
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def s3_store(s3_server: S3, request: pytest.FixtureRequest) -> str:
    """A fresh store prefix on the moto server: s3://orch-test/<test name>-<random>."""
    import uuid

    return s3_server.uri(f"{request.node.name[:40].replace('[', '-').strip(']')}-{uuid.uuid4().hex[:6]}")


# -- readers during a compaction ------------------------------------------------------------------


@contextlib.contextmanager
def reading_during_compaction(monkeypatch: pytest.MonkeyPatch, steps: tuple[str, ...], check: Callable[[], None],
                              done: Callable[[], int], errors: list[str]) -> Iterator[list[tuple[int, str]]]:
    """While inside, a reader thread runs ``check()`` over and over, and each of the compaction
    ``steps`` (functions of orchestrator.store.maintenance) waits, once done, until the reader has
    read once more. Yields the windows read in: ``(done(), step)`` of each wait. An exception in
    ``check`` is recorded in ``errors``."""
    from orchestrator.store import maintenance

    windows: list[tuple[int, str]] = []  # (what was written, the step after which the reader read)
    wanted: list[tuple[int, str]] = []  # a read the compaction waits for
    read_done, stop = threading.Event(), threading.Event()

    def reader() -> None:
        while not stop.is_set():
            window = wanted.pop() if wanted else None
            try:
                check()
            except Exception as err:  # noqa: BLE001 - a reader that fails is the finding
                errors.append(f"{type(err).__name__}: {err}")
            if window is not None:
                windows.append(window)
                read_done.set()

    for step in steps:
        real = getattr(maintenance, step)

        def paused(*args, _real=real, _step=step, **kwargs):
            _real(*args, **kwargs)
            read_done.clear()
            wanted.append((done(), _step))
            assert read_done.wait(timeout=60), "the reader did not read"  # (a guard only)

        monkeypatch.setattr(maintenance, step, paused)
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        yield windows
    finally:
        stop.set()
        thread.join(timeout=60)
