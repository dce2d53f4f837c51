"""Scheduling for ``orch retune``: cron expressions, a crontab line, a service loop, one run per store.

Nothing here imports torch or Ray; the job to run is any ``Callable[[], int]``.

Cron expressions (local time of the machine, as cron itself uses):

- ``check_expression(expr, option="--every", *, seconds=True)``: raises ``UserError`` (exit 2)
  with one line naming the option and the expression when ``expr`` is not a schedule that fires.
  Five fields ``minute hour day-of-month month day-of-week`` (``*``, lists ``1,15``, ranges
  ``1-5``, steps ``*/10``, three-letter month and day names) or a nickname (``@hourly``,
  ``@daily``/``@midnight``, ``@weekly``, ``@monthly``, ``@yearly``/``@annually``). With
  ``seconds=True`` (``--every``) six fields are taken too, a seconds field first
  (``*/30 * * * * *``: every 30 seconds); a crontab line takes five, since cron starts jobs on
  the minute.
- ``next_times(expr, start, n, *, option="--every", seconds=True)``: the next ``n`` times after
  ``start`` (strictly later), in ``start``'s timezone (naive ``start``: naive local times).

A crontab line (the real ``crontab`` command; ``UserError`` saying to install cron when it is missing):

- ``marker(store_root)``: ``"orch-retune:<id>"``, ``<id>`` a short hash of the absolute store
  path (of the URI, for a store in object storage), so each store has at most one line.
- ``log_path(store_root)``: where the line appends its output: ``<store>/retune.log``; for a store
  in object storage (where nothing can be appended to) ``$ORCH_HOME/retune-<id>.log`` on this
  machine (``~/.orch`` by default).
- ``cron_line(expr, *, workdir, argv, log_file, env, store_root, command=None, option="--install-cron")``:
  one crontab line
  ``<5 fields> (cd WORKDIR && PATH=... ORCH_...=... RAY_...=... ORCH retune ARGV...) >> LOG 2>&1 # <marker>``
  where ORCH is ``orch_executable()``, the absolute path of the ``orch`` beside the running
  interpreter, and ARGV the retune arguments (``command`` replaces ``[ORCH, "retune"]``).
  ``retune_args(args)`` drops the scheduling options (``--every X``, ``--install-cron X``,
  ``--print-cron X``, ``--uninstall-cron``, also as ``--opt=X``) from a list of arguments.
  PATH puts the interpreter's directory (the virtual environment's bin) first, then the user's
  PATH; ``ORCH_*``, ``RAY_*``, ``CUDA_VISIBLE_DEVICES``, ``LANG``, ``LC_ALL`` and ``TZ`` are kept
  when set in ``env``; for a store in object storage also where it is and how to reach it
  (``CLOUD_ENV_NAMES``: ``AWS_PROFILE``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``...,
  ``GOOGLE_APPLICATION_CREDENTIALS``), but no secret key (``AWS_SECRET_ACCESS_KEY``: cron's runs
  read credentials from ``~/.aws`` or the machine's role); nothing else of ``env`` is. Every word
  is shell-quoted and ``%`` (a newline to cron) is escaped. Standard output and error are appended
  to ``log_file``, whose directory the caller creates.
- ``install_cron(line, marker) -> bool``: adds the line to the user's crontab, replacing the line
  with the same marker (True when one was replaced); every other line is kept byte for byte.
- ``uninstall_cron(marker) -> bool``: removes that line (False when there was none).
- ``cron_running() -> bool``: whether a cron daemon runs on this machine (an installed line does
  nothing without one; containers often have none).

A long-running service (for example a ``docker compose`` service):

- ``run_every(expr, job, *, now=datetime.now, sleep=time.sleep, max_runs=None, echo=...) -> int``:
  prints ``next run at ...``, sleeps until then in short slices, runs ``job()``, and repeats.
  A job that raises or returns non-zero is reported and the service goes on; runs that would
  have started while a job was still running are skipped, as cron does. Ctrl-C and SIGTERM
  (how ``docker compose stop`` stops a service) stop it promptly: a job in progress gets a
  ``KeyboardInterrupt``, the service prints why it stopped and returns 0. Ends after
  ``max_runs`` runs when given.

One retune at a time per store:

- ``exclusive(store_root)``: a context manager taking the non-blocking file lock
  ``<store>/.retune.lock``; yields True when it got it, False when another process holds it.
  The holder's pid, host and start time go to ``<store>/.retune.pid`` (removed on exit);
  ``busy_message(store_root)`` turns them into
  ``another orch retune is running on <store> (pid N, since ...); nothing to do``
  (``holder(store_root)``: that record, or None). The lock is
  an ``flock``: the system releases it when its holder dies, even by SIGKILL, so a later run takes
  it over and replaces the dead holder's ``.retune.pid``.

  In object storage (``s3://...``) the lock is the object ``<store>/.retune.lock``, created with a
  conditional write (:func:`orchestrator.store.fs.lock`); it records its holder itself (no
  ``.retune.pid``). Nothing releases it when its holder dies, so the holder refreshes it every
  ``HEARTBEAT_S`` seconds (a conditional write again), and a lock not refreshed for
  ``LOCK_STALE_S`` is taken over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

from orchestrator.errors import OrchError, UserError
from orchestrator.store import fs
from orchestrator.store.fs import ObjectPath

LOCK_NAME = ".retune.lock"
HOLDER_NAME = ".retune.pid"
MARKER_PREFIX = "orch-retune:"

# Options of `orch retune` that schedule it, left out of the command that cron or the service runs.
SCHEDULE_OPTIONS = ("--every", "--install-cron", "--print-cron")  # each takes a value
SCHEDULE_FLAGS = ("--uninstall-cron",)

NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week")
_NUMERIC_FIELD = re.compile(r"^[0-9*,/-]+$")
_NAMED_FIELD = re.compile(r"^(?:[0-9*,/-]|[A-Za-z]{3})+$")  # month and day-of-week: jan, mon...
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CRON_ENV_PREFIXES = ("ORCH_", "RAY_")
_CRON_ENV_NAMES = ("CUDA_VISIBLE_DEVICES", "LANG", "LC_ALL", "TZ")
# A store in object storage: where it is and how to reach it; never secret keys.
CLOUD_ENV_NAMES = ("AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                   "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE", "AWS_EC2_METADATA_DISABLED",
                   "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT")
CLOUD_SECRET_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# The lock in object storage: refreshed by its holder every HEARTBEAT_S, taken over when older
# than LOCK_STALE_S (its holder died).
HEARTBEAT_S = 60.0
LOCK_STALE_S = 15 * 60.0
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
SLICE_S = 0.25  # the longest single sleep of run_every: how long a stop may wait


# --------------------------------------------------------------------------- cron expressions


def _bad(option: str, expr: str, reason: str) -> UserError:
    return UserError(f"{option} {expr!r}: {reason}")


def _parse(expr: str, option: str, seconds_ok: bool) -> tuple[str, bool]:
    """``expr`` as croniter reads it (seconds, when given, moved last) and whether it has seconds."""
    text = " ".join(str(expr).split())
    if not text:
        raise _bad(option, expr, "empty cron expression; expected 5 fields, e.g. '0 3 * * *'")
    if text.startswith("@"):
        if text.lower() == "@reboot":
            raise _bad(option, expr, "@reboot is not a schedule; give a time, e.g. '0 3 * * *'")
        if text.lower() not in NICKNAMES:
            known = ", ".join(NICKNAMES)
            raise _bad(option, expr, f"unknown schedule nickname (known: {known})")
        return NICKNAMES[text.lower()], False
    fields = text.split(" ")
    seconds = seconds_ok and len(fields) == 6
    if len(fields) != 5 and not seconds:
        want = "5 fields, or 6 with a seconds field first" if seconds_ok else (
            "5 fields (cron starts jobs on the minute)")
        raise _bad(option, expr, f"{len(fields)} fields; expected {want}: "
                                   "'minute hour day-of-month month day-of-week', e.g. '0 3 * * *'")
    names = (("second",) if seconds else ()) + _FIELD_NAMES
    for name, field in zip(names, fields, strict=True):
        pattern = _NAMED_FIELD if name in ("month", "day-of-week") else _NUMERIC_FIELD
        if not pattern.match(field):
            raise _bad(option, expr, f"bad {name} field {field!r}")
    if seconds:
        fields = fields[1:] + fields[:1]  # croniter's six-field form has the seconds last
    return " ".join(fields), seconds


def _croniter(expr: str, start: datetime, option: str, seconds_ok: bool) -> Any:
    from croniter import croniter

    normal, seconds = _parse(expr, option, seconds_ok)
    try:
        return croniter(normal, start)
    except (ValueError, KeyError, TypeError):  # croniter's errors derive from ValueError
        pass
    fields = normal.split(" ")
    names = _FIELD_NAMES + (("second",) if seconds else ())
    for i, (name, field) in enumerate(zip(names, fields, strict=True)):
        alone = " ".join(field if j == i else "*" for j in range(len(fields)))
        try:
            croniter(alone, start)
        except (ValueError, KeyError, TypeError):
            raise _bad(option, expr, f"bad {name} field {field!r} (out of range or malformed)") from None
    raise _bad(option, expr, "not a cron expression")


def check_expression(expr: str, option: str = "--every", *, seconds: bool = True) -> None:
    """Raise ``UserError`` naming ``option`` and ``expr`` unless ``expr`` is a schedule that fires.

    ``seconds=False``: five fields only, as a crontab takes them."""
    next_times(expr, datetime.now(), 1, option=option, seconds=seconds)


def next_times(expr: str, start: datetime, n: int, *, option: str = "--every",
               seconds: bool = True) -> list[datetime]:
    """The next ``n`` times of ``expr`` strictly after ``start``, in ``start``'s timezone."""
    it = _croniter(expr, start, option, seconds)
    out = []
    try:
        for _ in range(n):
            out.append(it.get_next(datetime))
    except ValueError:  # croniter's CroniterBadDateError: no date within its search horizon
        raise _bad(option, expr, "this schedule never fires") from None
    return out


# --------------------------------------------------------------------------- crontab line


def _remote(store_root: object) -> bool:
    return isinstance(store_root, ObjectPath) or (isinstance(store_root, str) and fs.is_uri(store_root))


def marker(store_root: Path | ObjectPath) -> str:
    """``orch-retune:<id>``: the id is a short hash of the absolute store path (or of its URI)."""
    path = str(fs.as_path(store_root)) if _remote(store_root) else os.path.abspath(os.fspath(store_root))  # type: ignore[arg-type]
    return MARKER_PREFIX + hashlib.sha256(path.encode()).hexdigest()[:12]


def log_path(store_root: Path | ObjectPath) -> Path:
    """Where a crontab line appends its output: ``<store>/retune.log``; for a store in object
    storage, ``$ORCH_HOME/retune-<id>.log`` on this machine (``~/.orch`` by default)."""
    if not _remote(store_root):
        return Path(store_root) / "retune.log"  # type: ignore[arg-type]
    home = Path(os.environ.get("ORCH_HOME") or Path.home() / ".orch").expanduser()
    return home / f"retune-{marker(store_root).removeprefix(MARKER_PREFIX)}.log"


def orch_executable() -> str:
    """Absolute path of the ``orch`` executable installed beside the running interpreter."""
    beside = Path(os.path.abspath(sys.executable)).parent / "orch"  # not resolved: keep the venv
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("orch")
    if found:
        return os.path.abspath(found)
    raise UserError(f"cannot find the orch executable (looked beside {sys.executable} and on PATH)")


def retune_args(args: Sequence[str], *, options: Sequence[str] = SCHEDULE_OPTIONS,
                flags: Sequence[str] = SCHEDULE_FLAGS) -> list[str]:
    """``args`` without the scheduling options (``--every X``, ``--every=X``, ``--uninstall-cron``...)."""
    kept: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg == "--":
            kept.extend(items[i:])
            break
        if arg in flags:
            i += 1
        elif arg in options:
            i += 2
        elif any(arg.startswith(o + "=") for o in options):
            i += 1
        else:
            kept.append(arg)
            i += 1
    return kept


def _cron_env(env: Mapping[str, str], command: Sequence[str], cloud: bool = False) -> list[tuple[str, str]]:
    bins = [os.path.dirname(os.path.abspath(sys.executable))]  # the virtual environment's bin
    if command and os.path.isabs(command[0]):
        bins.append(os.path.dirname(command[0]))
    path = []
    for part in [*bins, *(env.get("PATH") or _DEFAULT_PATH).split(os.pathsep)]:
        if part and part not in path:
            path.append(part)
    out = [("PATH", os.pathsep.join(path))]
    for name in sorted(env):
        if name == "PATH" or not _ENV_NAME.match(name):
            continue
        if name.startswith(_CRON_ENV_PREFIXES) or name in _CRON_ENV_NAMES or (cloud and name in CLOUD_ENV_NAMES):
            out.append((name, env[name]))
    return out


def cron_line(expr: str, *, workdir: Path, argv: Sequence[str], log_file: Path,
              env: Mapping[str, str], store_root: Path | ObjectPath, command: Sequence[str] | None = None,
              option: str = "--install-cron") -> str:
    """One crontab line running ``orch retune ARGV...`` in ``workdir`` at ``expr``, output appended to
    ``log_file``, marked with ``store_root``'s marker. ``command`` replaces ``[orch, "retune"]``."""
    check_expression(expr, option, seconds=False)
    schedule = " ".join(expr.split())
    if schedule.startswith("@"):
        schedule = schedule.lower()  # cron knows the nicknames in lower case
    full = [*(command if command is not None else [orch_executable(), "retune"]), *argv]
    if not full:
        raise ValueError("cron_line needs a command")
    words = [f"{name}={shlex.quote(value)}" for name, value in _cron_env(env, full, cloud=_remote(store_root))]
    words += [shlex.quote(str(a)) for a in full]
    for text in [str(workdir), str(log_file), *words]:
        if "\n" in text or "\r" in text:
            short = text if len(text) <= 60 else text[:57] + "..."
            raise UserError(f"{option}: {short!r} has a line break, which a crontab line cannot hold")
    shell = (f"(cd {shlex.quote(os.path.abspath(workdir))} && {' '.join(words)}) "
             f">> {shlex.quote(os.path.abspath(log_file))} 2>&1")
    shell = shell.replace("%", "\\%")  # cron turns a bare % into a newline
    return f"{schedule} {shell} # {marker(store_root)}"


def _crontab(option: str) -> str:
    exe = shutil.which("crontab")
    if exe is None:
        raise UserError(f"{option} needs the crontab command, which is not installed: "
                        "install cron (Debian/Ubuntu: apt-get install cron)")
    return exe


def _read_crontab(exe: str, option: str) -> bytes:
    proc = subprocess.run([exe, "-l"], capture_output=True, timeout=30)
    if proc.returncode == 0:
        return proc.stdout
    err = proc.stderr.decode(errors="replace").strip()
    if "no crontab" in err.lower():
        return b""
    raise UserError(f"{option}: `crontab -l` failed: {_one_line(err)}")


def _write_crontab(exe: str, table: bytes, option: str) -> None:
    proc = subprocess.run([exe, "-"], input=table, capture_output=True, timeout=30)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise UserError(f"{option}: crontab refused the new table: {_one_line(err)}")


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "no message"


def _has_marker(line: bytes, marker: str) -> bool:
    return line.rstrip().endswith(f"# {marker}".encode())


@contextlib.contextmanager
def _crontab_edit() -> Iterator[None]:
    """Two orch processes editing the crontab at once must not lose each other's line."""
    from filelock import FileLock

    lock = FileLock(os.path.join(tempfile.gettempdir(), f"orch-crontab-{os.getuid()}.lock"),
                    timeout=30)
    with lock:
        yield


def install_cron(line: str, marker: str, *, option: str = "--install-cron") -> bool:
    """Put ``line`` in the user's crontab in place of the line with ``marker``; True if one was replaced."""
    if "\n" in line or not _has_marker(line.encode(), marker):
        raise ValueError(f"a crontab line must be one line ending with '# {marker}'")
    exe = _crontab(option)
    with _crontab_edit():
        old = _read_crontab(exe, option)
        lines = old.splitlines(keepends=True)
        kept = [x for x in lines if not _has_marker(x, marker)]
        if kept and not kept[-1].endswith(b"\n"):
            kept[-1] += b"\n"
        _write_crontab(exe, b"".join(kept) + line.encode() + b"\n", option)
    return len(kept) != len(lines)


def uninstall_cron(marker: str, *, option: str = "--uninstall-cron") -> bool:
    """Remove the crontab line with ``marker``; False when there was none (the crontab is untouched)."""
    exe = _crontab(option)
    with _crontab_edit():
        old = _read_crontab(exe, option)
        lines = old.splitlines(keepends=True)
        kept = [x for x in lines if not _has_marker(x, marker)]
        if len(kept) == len(lines):
            return False
        _write_crontab(exe, b"".join(kept), option)
    return True


def cron_running() -> bool:
    """Whether a cron daemon (cron, crond) is running on this machine."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in ("cron", "crond"):
                    return True
            except OSError:
                continue
    return False


# --------------------------------------------------------------------------- service loop


def _print(message: str) -> None:
    print(message, flush=True)


class _Stop:
    """Ctrl-C and SIGTERM: remember which came; interrupt a job in progress."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.in_job = False
        # What signal.signal returned: the handler to put back (None: one not set from Python).
        self.previous: dict[int, Callable[[int, FrameType | None], Any] | int | signal.Handlers | None] = {}

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if self.in_job:
            raise KeyboardInterrupt

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old = signal.signal(sig, self.handler)
            except ValueError:  # not the main thread: signals stay as they are
                return
            self.previous.setdefault(sig, old)

    def restore(self) -> None:
        for sig, old in self.previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old)

    def why(self) -> str:
        return "SIGTERM" if self.signum == signal.SIGTERM else "Ctrl-C"


def _stamp(when: datetime) -> str:
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def run_every(expr: str, job: Callable[[], int | None], *, now: Callable[[], datetime] = datetime.now,
              sleep: Callable[[float], object] = time.sleep, max_runs: int | None = None,
              echo: Callable[[str], object] = _print, option: str = "--every") -> int:
    """Run ``job`` at each time of ``expr`` until stopped (or ``max_runs`` runs); returns 0."""
    check_expression(expr, option)
    stop = _Stop()
    runs = 0
    try:
        while max_runs is None or runs < max_runs:
            stop.install()  # again after each job: Ray's init installs a SIGTERM handler of its own
            if stop.signum is not None:
                break
            when = next_times(expr, now(), 1, option=option)[0]
            echo(f"orch retune: next run at {_stamp(when)}")
            while stop.signum is None:
                left = when.timestamp() - now().timestamp()
                if left <= 0:
                    break
                sleep(min(SLICE_S, left))
            if stop.signum is not None:
                break
            runs += 1
            echo(f"orch retune: run {runs} started at {_stamp(now())}")
            status = _run_job(job, runs, stop, echo)
            if stop.signum is not None:
                break
            if status == 0:
                echo(f"orch retune: run {runs} finished")
    except KeyboardInterrupt:
        stop.signum = stop.signum or signal.SIGINT
    finally:
        stop.restore()
    if stop.signum is not None:
        echo(f"orch retune: stopped by {stop.why()} after {runs} run(s)")
    return 0


def _run_job(job: Callable[[], int | None], n: int, stop: _Stop, echo: Callable[[str], object]) -> int:
    """The job's exit status; a raising job is reported, an interrupted one stops the service."""
    stop.in_job = True
    try:
        status = job()
    except KeyboardInterrupt:
        stop.signum = stop.signum or signal.SIGINT
        return 130
    except SystemExit as err:
        # Ray's own SIGTERM handler (installed by ray.init) exits with the signal's number.
        if err.code == signal.SIGTERM:
            stop.signum = signal.SIGTERM
            return 128 + signal.SIGTERM
        status = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    except Exception as err:
        if os.environ.get("ORCH_DEBUG") == "1":
            echo(traceback.format_exc().rstrip())
        detail = str(err).splitlines()[0] if str(err) else ""
        echo(f"orch retune: run {n} failed: {type(err).__name__}{': ' + detail if detail else ''}")
        return 1
    finally:
        stop.in_job = False
    status = 0 if status is None else int(status)
    if status != 0 and stop.signum is None:
        echo(f"orch retune: run {n} exited with status {status}")
    return status


# --------------------------------------------------------------------------- one retune per store


@dataclass(frozen=True)
class Holder:
    """Who holds a store's retune lock, as its ``.retune.pid`` file says."""

    pid: int
    host: str
    started: str

    def __str__(self) -> str:
        where = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        since = f", since {self.started}" if self.started else ""
        return f"pid {self.pid}{where}{since}"

    def alive(self) -> bool:
        """False when the pid is certainly gone (same host only; elsewhere it cannot be told)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def holder(store_root: Path | ObjectPath) -> Holder | None:
    """The recorded holder of ``store_root``'s retune lock; None when absent or unreadable."""
    if _remote(store_root):
        return _object_holder(fs.as_path(store_root) / LOCK_NAME)
    try:
        data = json.loads((Path(store_root) / HOLDER_NAME).read_text())  # type: ignore[arg-type]
        return Holder(pid=int(data["pid"]), host=str(data.get("host", "")),
                      started=str(data.get("started", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _object_holder(lock: ObjectPath) -> Holder | None:
    """The holder a lock object records (see :func:`orchestrator.store.fs.lock`)."""
    try:
        held = fs._conditional_client(lock).get(lock)  # one request: never half of a refresh
        if held is None:
            return None
        data = json.loads(held[0])
        started = str(data.get("started") or data.get("since") or "")
        with contextlib.suppress(ValueError):
            started = datetime.fromisoformat(started).astimezone().isoformat(timespec="seconds")
        return Holder(pid=int(data["pid"]), host=str(data.get("host", "")), started=started)
    except (OSError, OrchError, ValueError, KeyError, TypeError):
        return None


def busy_message(store_root: Path | ObjectPath, *, wait_s: float = 0.5) -> str:
    """``another orch retune is running on <store> (pid N, since ...); nothing to do``.

    Waits up to ``wait_s`` for a holder that has just taken the lock to record itself."""
    deadline = time.monotonic() + wait_s
    while True:
        who = holder(store_root)
        if (who is not None and who.alive()) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    detail = f" ({who})" if who is not None and who.alive() else ""
    return f"another orch retune is running on {store_root}{detail}; nothing to do"


def _write_holder(store_root: Path) -> None:
    path = Path(store_root) / HOLDER_NAME
    data = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds")}
    tmp = path.with_name(f"{HOLDER_NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def exclusive(store_root: Path | ObjectPath) -> Iterator[bool]:
    """Hold ``<store>/.retune.lock`` for the block: yields True, or False when another process has it."""
    if _remote(store_root):
        with _exclusive_object(fs.as_path(store_root)) as got:
            yield got
        return
    from filelock import FileLock, Timeout

    root = Path(store_root)  # type: ignore[arg-type]
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        _write_holder(root)  # replaces the file of a holder that died without removing it
        yield True
    finally:
        who = holder(root)
        if who is not None and who.pid == os.getpid() and who.host == socket.gethostname():
            with contextlib.suppress(OSError):
                (root / HOLDER_NAME).unlink()
        lock.release()


@contextlib.contextmanager
def _exclusive_object(root: ObjectPath) -> Iterator[bool]:
    """:func:`exclusive` in object storage: the lock object, refreshed while held."""
    lock = root / LOCK_NAME
    try:
        held = fs.lock(lock, timeout=0, stale_after_s=LOCK_STALE_S)
        held.__enter__()
    except fs.LockTimeout:
        yield False
        return
    except OrchError:
        from orchestrator.store.maintenance import missing_reason

        why = missing_reason(root)
        if "no bucket" in why:  # a store that cannot exist: one line, exit 2
            raise UserError(f"store: no results store at {root}{why}") from None
        raise
    beat = _Heartbeat(lock, HEARTBEAT_S)
    beat.start()
    try:
        yield True
    finally:
        beat.stop()
        held.__exit__(None, None, None)


class _Heartbeat(threading.Thread):
    """Refreshes the time a lock object records (``since``; ``started`` keeps the first) while
    this process holds it, with a conditional write on its ETag: a lock taken over meanwhile (this
    process stalled past ``LOCK_STALE_S``) is left to its new holder."""

    def __init__(self, lock: ObjectPath, every_s: float) -> None:
        super().__init__(name="orch-retune-lock", daemon=True)
        self.lock, self.every_s = lock, every_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.every_s):
            with contextlib.suppress(Exception):  # a missed beat: the next one may pass
                refresh_lock(self.lock)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def refresh_lock(lock: ObjectPath) -> bool:
    """Mark the lock object held by this process as alive now; False when another holds it."""
    client = fs._conditional_client(lock)  # the conditional writes fs.lock itself uses
    held = client.get(lock)
    if held is None:
        return False
    body, version = held
    data = json.loads(body)
    if data.get("host") != socket.gethostname() or data.get("pid") != os.getpid():
        return False
    data.setdefault("started", data.get("since"))
    data["since"] = datetime.now(timezone.utc).isoformat()
    return bool(client.replace(lock, json.dumps(data).encode(), version))
