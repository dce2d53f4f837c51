"""A warm local Ray: ``orch up`` starts a Ray head on 127.0.0.1 that outlives sweeps, ``orch down``
stops it.

While it runs, ``orch sweep`` joins it instead of starting a Ray of its own (no Ray start-up or
shut-down in the sweep, and the dashboard stays up between sweeps), and ``orch status`` and
``orch submit`` talk to its dashboard. The head is the same ``ray start --head`` as a cluster's
(``python -m orchestrator.cluster.nodes ray-start``): on loopback, token authentication on, its
own process group, recorded in ``$ORCH_HOME/ray-up.json`` (default ``~/.orch``) with the id of the
process that stops every Ray process it started on SIGTERM. ``orch down`` signals that process
only: no other Ray on the machine is touched.

Trials on a warm Ray run in the environment ``orch up`` was started from (as on any cluster), with
the sweep's ``sys.path`` (Ray passes the driver's on).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import SweepFailed, UserError

if TYPE_CHECKING:
    from orchestrator.config.schema import SweepConfig

STATE_FILE = "ray-up.json"
LOG_FILE = "ray-up.log"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
DEFAULT_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_METRICS_PORT = 8080
NODE_MODULE = "orchestrator.cluster.nodes"
PORT_ATTEMPTS = 3


@dataclass
class Head:
    """A warm head, as ``orch up`` recorded it."""

    pid: int  # the ``ray start --block`` process (SIGTERM stops the node)
    address: str  # GCS, 127.0.0.1:PORT
    dashboard: str  # http://127.0.0.1:PORT
    started_at: str
    log: str
    metrics_port: int | None = None  # the node's Prometheus endpoint
    num_cpus: float | None = None
    num_gpus: float | None = None
    python: str = ""  # the interpreter its workers run (sys.executable of orch up)
    version: str = ""  # orch's version there


def home() -> Path:
    """orch's per-user directory: ``$ORCH_HOME``, else ``~/.orch``."""
    return Path(os.environ.get("ORCH_HOME") or Path.home() / ".orch").expanduser().resolve()


def _state_path() -> Path:
    return home() / STATE_FILE


def _is_ours(pid: int) -> bool:
    """Whether ``pid`` runs orch's node command (a recycled pid is not ours)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and NODE_MODULE.encode() in cmdline and b"--head" in cmdline


def _listening(address: str, timeout_s: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    host = host.removeprefix("http://").removeprefix("https://")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def read() -> Head | None:
    """The head ``orch up`` started, if its process still runs (a stale record is removed)."""
    path = _state_path()
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        known = {f.name for f in fields(Head)}
        head = Head(**{k: v for k, v in data.items() if k in known})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        raise UserError(f"{path}: not a record of `orch up` (remove the file)") from None
    if not (isinstance(head.pid, int) and _loopback(head.address, "") and _loopback(head.dashboard, "http://")):
        # Sweeps send this Ray their code and its token: only to this machine's loopback.
        raise UserError(f"{path}: not a record of `orch up` on 127.0.0.1 (remove the file)")
    if _is_ours(head.pid):
        return head
    with contextlib.suppress(OSError):
        path.unlink()
    return None


def _loopback(address: Any, scheme: str) -> bool:
    if not isinstance(address, str) or not address.startswith(scheme):
        return False
    host, _, port = address[len(scheme):].rpartition(":")
    return host == "127.0.0.1" and port.isdigit()


def mismatch(head: Head) -> str | None:
    """Why a sweep of this process should not run on ``head`` (None: it may): its workers run
    another Python or another orch, which would load this sweep's code in other modules."""
    from orchestrator import __version__

    if head.python and head.python != sys.executable:
        return f"its workers run {head.python}, this sweep {sys.executable}"
    if head.version and head.version != __version__:
        return f"it runs orch {head.version}, this sweep orch {__version__}"
    return None


def running() -> Head | None:
    """The warm head, if one runs and its GCS answers."""
    head = read()
    return head if head is not None and _listening(head.address) else None


def _free_port(preferred: int) -> int:
    from orchestrator.tune.connect import free_port

    return free_port("127.0.0.1", preferred)


def _ensure_token() -> None:
    """The token the head and every client present: where Ray looks, else a new one in Ray's
    default file (``~/.ray/auth_token``), as an embedded Ray makes one."""
    from orchestrator.tune import connect

    if connect.auth_token():
        return
    from ray._private.authentication.authentication_token_setup import generate_and_save_token

    generate_and_save_token()


def _environment() -> dict[str, str]:
    from orchestrator.tune import connect

    env = dict(os.environ)
    for name, value in connect.RAY_ENVIRONMENT.items():
        env.setdefault(name, value)
    env["RAY_AUTH_MODE"] = "token"
    # Ray's switch for single-machine clusters: its processes (a Ray Job's driver among them)
    # resolve the cluster's address to 127.0.0.1, not to the machine's outward address.
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env.pop("RAY_ADDRESS", None)
    return env


def up(num_cpus: float | None = None, num_gpus: float | None = None, port: int = DEFAULT_PORT,
       dashboard_port: int = DEFAULT_DASHBOARD_PORT, timeout_s: float = START_TIMEOUT_S) -> tuple[Head, bool]:
    """Start the warm head (or find the one running). Returns (head, whether this call started it).

    Ports taken by something else are replaced by free ones. Waits until the GCS and the dashboard
    answer.

    Raises:
        SweepFailed: the head did not start (the message names its log).
    """
    from filelock import FileLock

    directory = home()
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / "ray-up.lock")):
        head = read()
        if head is not None:
            return head, False
        _ensure_token()
        attempt = 0
        while True:
            try:
                started = _launch(directory, num_cpus, num_gpus, port, dashboard_port, timeout_s)
                break
            except _PortTaken:
                # Another process bound a port between its check and Ray's bind: free ones again.
                attempt += 1
                if attempt == PORT_ATTEMPTS:
                    log = directory / LOG_FILE
                    raise SweepFailed(f"the local Ray head did not start: {_last_error(log)} "
                                      f"(its log: {log})") from None
                port = dashboard_port = 0
        tmp = _state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(started), indent=2) + "\n")
        os.replace(tmp, _state_path())
        return started, True


class _PortTaken(Exception):
    """The head did not start: a port it was given was taken meanwhile."""


def _launch(directory: Path, num_cpus: float | None, num_gpus: float | None, port: int, dashboard_port: int,
            timeout_s: float) -> Head:
    """Start the head's process and wait until its GCS and dashboard answer."""
    gcs_port = _free_port(port)
    dash_port = _free_port(dashboard_port)
    args = [sys.executable, "-m", NODE_MODULE, "ray-start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
            "--include-dashboard", "true"]
    if num_cpus is not None:
        args += ["--num-cpus", f"{num_cpus:g}"]
    if num_gpus is not None:
        args += ["--num-gpus", f"{num_gpus:g}"]
    if _listening("127.0.0.1:10001"):  # Ray's client port: taken, the node would not start
        args += ["--ray-client-server-port", str(_free_port(0))]
    # The dashboard agent's port is never Ray's fixed default: a Ray that a sweep starts of its own
    # later wants that one, and waits seconds for it while the warm head holds it.
    args += ["--dashboard-agent-listen-port", str(_free_port(0))]
    metrics_port = _free_port(DEFAULT_METRICS_PORT)
    args += ["--metrics-export-port", str(metrics_port)]
    log = directory / LOG_FILE
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=_environment(), cwd=directory, start_new_session=True)
    from orchestrator import __version__

    head = Head(proc.pid, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash_port}",
                datetime.now(timezone.utc).isoformat(timespec="seconds"), str(log), metrics_port,
                num_cpus, num_gpus, sys.executable, __version__)
    deadline = time.monotonic() + timeout_s
    try:
        while not (_listening(head.address) and _listening(head.dashboard) and _started(log)):
            if proc.poll() is not None:
                if any(m in _last_error(log) for m in ("already occupied", "already in use", "used by other")):
                    raise _PortTaken()
                raise SweepFailed(f"the local Ray head did not start: {_last_error(log)} (its log: {log})")
            if time.monotonic() > deadline:
                raise SweepFailed(f"the local Ray head did not start within {timeout_s:g}s (its log: {log})")
            time.sleep(0.2)
    except BaseException:
        # Not recorded yet: a head left running here (Ctrl-C, a deadline) no orch down could stop.
        _stop(proc.pid)
        raise
    return head


def _started(log: Path) -> bool:
    try:
        return "Ray runtime started" in log.read_text(errors="replace")
    except OSError:
        return False


def _last_error(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["no output"])[-1][:300]


def _group(pgid: int) -> list[int]:
    """The running (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def _stop(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM the node's process (it stops the Ray processes it started; they lead no group of
    their own), wait for its whole process group to end, SIGKILL what is left after ``timeout_s``.
    Returns whether it ended in time."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _is_ours(pid) and not _group(pid):
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return False


def down(timeout_s: float = STOP_TIMEOUT_S) -> Head | None:
    """Stop the warm head, if one runs. Returns it (None: there was none).

    Raises:
        UserError: the record is not one of ``orch up`` (it is left for the user to look at).
    """
    head = read()
    if head is None:
        return None
    clean = _stop(head.pid, timeout_s)
    with contextlib.suppress(OSError):
        _state_path().unlink()
    if not clean:
        raise SweepFailed(f"the local Ray head (pid {head.pid}) did not stop within {timeout_s:g}s; "
                          "its processes were killed")
    return head


# -- which Ray a sweep runs on ----------------------------------------------------------------------


def ray_address(cfg: SweepConfig, address: str | None) -> str | None:
    """The cluster a sweep joins (:func:`orchestrator.tune.connect.ray_address`), else the warm
    head's address if one runs that this process may use; None: a Ray of the sweep's own."""
    from orchestrator.tune import connect

    chosen = connect.ray_address(cfg, address)
    if chosen is not None or connect.local_asked(cfg, address):
        return chosen
    head = running()
    return head.address if head is not None and mismatch(head) is None else None


def joins(address: str | None) -> bool:
    """Whether ``address`` is the warm head's."""
    if not address:
        return False
    head = read()
    return head is not None and head.address == address


def passed_over() -> str | None:
    """Why a sweep that named no Ray does not join the warm head that runs (None: none runs, or it
    would join it)."""
    head = running()
    why = mismatch(head) if head is not None else None
    return f"the local Ray of `orch up` at {head.address} is not joined: {why}" if head and why else None


def dashboard() -> str | None:
    """The warm head's dashboard, if one runs."""
    head = running()
    return head.dashboard if head is not None else None
