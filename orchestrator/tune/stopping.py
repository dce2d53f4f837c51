"""Ctrl-C and SIGTERM stop orch at any moment; calls into Ray that can block get deadlines.

Python runs a signal handler only in the main thread, between two bytecodes. A main thread inside
Ray's native code (joining a cluster that does not answer: Ray retries for minutes) would see
neither Ctrl-C nor SIGTERM until that code returns. So:

- :func:`installed` (the CLI runs inside it) makes SIGTERM the same clean stop as Ctrl-C (Ray
  Tune's own stop while trials run: they are kept and ``--resume`` continues), remembered for the
  exit status (143 instead of 130), and starts a watchdog thread that learns of every signal at
  once through :func:`signal.set_wakeup_fd`.
- :func:`native` wraps a call that may block in native code. A signal that arrives inside gives the
  main thread :data:`GRACE_S` to stop by itself; then the watchdog prints the one-line message and
  ends the process. A deadline, when given, ends it the same way with exit status 2 (or 1).
- :func:`quiet_stderr` sends file descriptor 2 (where Ray's C++ code logs) to a file while inside;
  the watchdog's messages still reach the terminal.

Anywhere, a third Ctrl-C or SIGTERM ends orch at once.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

GRACE_S = 1.0  # how long the main thread gets to react to a signal itself inside native()
FORCE_AFTER = 3  # this many stop signals end orch wherever it is
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_WAKE = 0  # a byte on the watchdog's pipe that is no signal: "look at the zones again"


class Terminated(KeyboardInterrupt):
    """SIGTERM: the same clean stop as Ctrl-C, with exit status 143."""


@dataclass
class _Zone:
    what: str
    deadline: float | None
    timeout_message: str
    timeout_status: int
    left: threading.Event = field(default_factory=threading.Event)


_lock = threading.Lock()
_received: set[int] = set()  # the stop signals that came
_count = 0  # stop signals the watchdog saw
_zone: _Zone | None = None
_pipe: tuple[int, int] | None = None
_terminal_fd: int | None = None  # the real stderr while quiet_stderr() redirects fd 2
_quiet_path: str | None = None  # where quiet_stderr() sends it


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Inside, SIGTERM stops orch as Ctrl-C does, and the watchdog sees every signal.

    The SIGTERM handler and the wakeup descriptor before are put back at exit (the CLI can run
    inside another program: tests). Main thread only; elsewhere nothing changes.
    """
    global _count
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()  # a new command
    _count = 0
    before = signal.signal(signal.SIGTERM, _on_sigterm)
    old_fd = _watch_signals()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
        if old_fd is not None:
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(old_fd)


def exit_code(default: int = 130) -> int:
    """143 once SIGTERM came, else ``default`` (130: Ctrl-C)."""
    return 128 + signal.SIGTERM if signal.SIGTERM in _received else default


def message() -> str:
    """The one line orch prints when a signal stopped it."""
    return "orch: terminated (SIGTERM)" if signal.SIGTERM in _received else "orch: interrupted"


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _received.add(signal.SIGTERM)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)  # Ctrl-C's handler now (Ray Tune's: stop trials, keep them)
        return
    raise Terminated()


@contextlib.contextmanager
def native(what: str, timeout_s: float | None = None, timeout_message: str = "",
           timeout_status: int = 2) -> Iterator[None]:
    """Around a call that may block in native code (Ray's), where signals must still stop orch.

    Args:
        what: what the call does, for messages.
        timeout_s: end orch with ``timeout_status`` and ``timeout_message`` when the call has not
            returned after this long (None: no deadline).
        timeout_message: the error, without the ``orch: error:`` prefix.
        timeout_status: 2 (a user error: a cluster the user named does not answer) or 1.

    ``ray.init`` installs a SIGTERM handler of its own: the one before the call is put back.
    """
    global _zone
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    deadline = time.monotonic() + timeout_s if timeout_s is not None else None
    zone = _Zone(what, deadline, timeout_message or f"{what} did not finish within {timeout_s:g}s",
                 timeout_status)
    outer = _zone
    _watch_signals()
    _zone = zone
    _wake()
    try:
        yield
    except SystemExit as err:
        if err.code == signal.SIGTERM:  # Ray's SIGTERM handler ran (sys.exit(signum)), not orch's
            _received.add(signal.SIGTERM)
            if callable(before):
                before(signal.SIGTERM, None)  # raises as it would have
            raise Terminated() from None
        raise
    finally:
        zone.left.set()
        _zone = outer
        _wake()
        if main and callable(before) and signal.getsignal(signal.SIGTERM) is not before:
            signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def quiet_stderr(path: str | Path) -> Iterator[None]:
    """File descriptor 2 goes to ``path`` (appended) while inside, then back to the terminal.

    Native code (Ray's C++ logger) writes to the descriptor, not to ``sys.stderr``; so do the
    processes started inside, for as long as they live.
    """
    global _terminal_fd, _quiet_path
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    outer = _terminal_fd, _quiet_path
    _terminal_fd, _quiet_path = saved, str(path)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        _terminal_fd, _quiet_path = outer
        os.close(saved)


# -- the watchdog ---------------------------------------------------------------------------------


def _watch_signals() -> int | None:
    """Start the watchdog (once), and have every signal with a Python handler reach it.

    Returns the wakeup descriptor it replaced (-1: none), or None where it changed nothing.
    """
    global _pipe
    with _lock:
        if _pipe is None:
            r, w = os.pipe()
            os.set_blocking(w, False)
            _pipe = (r, w)
            threading.Thread(target=_watch, args=(r,), name="orch-stop", daemon=True).start()
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        old = signal.set_wakeup_fd(_pipe[1], warn_on_full_buffer=False)
    except ValueError:
        return None
    if old not in (-1, _pipe[1]):  # someone else's (an event loop's): theirs stays
        signal.set_wakeup_fd(old)
        return None
    return old if old == -1 else None


def _wake() -> None:
    if _pipe is not None:
        with contextlib.suppress(OSError):
            os.write(_pipe[1], bytes([_WAKE]))


def _watch(r: int) -> None:
    while True:
        zone = _zone
        timeout = None
        if zone is not None and zone.deadline is not None:
            timeout = max(0.0, zone.deadline - time.monotonic())
        ready, _, _ = select.select([r], [], [], timeout)
        if not ready:
            zone = _zone
            if zone is not None and zone.deadline is not None and time.monotonic() >= zone.deadline:
                _end(zone.timeout_status, f"orch: error: {zone.timeout_message}")
            continue
        for signum in os.read(r, 256):
            if signum in _STOP_SIGNALS:
                _on_stop_signal(signum)


def _on_stop_signal(signum: int) -> None:
    global _count
    _received.add(signum)
    _count += 1
    if _count >= FORCE_AFTER:
        _end(exit_code(), message())
    zone = _zone
    if zone is not None and not zone.left.wait(GRACE_S):
        _end(exit_code(), message())


def _end(status: int, line: str) -> None:
    """Print ``line`` on the terminal and end the process now (the main thread cannot)."""
    flusher = threading.Thread(target=_flush_stdout, daemon=True)
    flusher.start()
    flusher.join(0.5)  # never wait on a stdout the main thread holds
    fd = _terminal_fd if _terminal_fd is not None else 2
    with contextlib.suppress(OSError):
        os.write(fd, (line + "\n").encode())
    if _quiet_path and _quiet_path not in line:  # (a file the message names stays)
        with contextlib.suppress(OSError):
            os.remove(_quiet_path)
    os._exit(status)


def _flush_stdout() -> None:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
