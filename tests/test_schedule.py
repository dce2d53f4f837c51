"""Scheduling of ``orch retune``: cron expressions, the crontab line, the service loop, the store lock;
and the trial scheduler's rung decisions (ASHA on the best objective so far).

Real components throughout: the system's ``crontab`` command on the real user crontab (saved and
restored around the test), ``sh`` running the generated line, subprocesses stopped by SIGTERM and
SIGKILL; Ray Tune's own ASHA fed by a real trial context. No Ray cluster.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from filelock import FileLock

from orchestrator.config.schema import grace_period_of
from orchestrator.errors import UserError
from orchestrator.retune import cron
from orchestrator.retune.cron import (
    busy_message,
    check_expression,
    cron_line,
    exclusive,
    install_cron,
    marker,
    next_times,
    retune_args,
    run_every,
    uninstall_cron,
)
from orchestrator.train.context import LocalBackend, TrialContext, TrialSetup
from orchestrator.tune import plan, schedulers
from tests.conftest import CONFIG, ROOT, orch

PY = sys.executable
CRONTAB = shutil.which("crontab")


# --------------------------------------------------------------------------- expressions


def test_next_times_of_five_six_field_and_nickname_expressions():
    start = datetime(2025, 3, 14, 10, 7, 30)
    assert next_times("*/15 * * * *", start, 3) == [
        datetime(2025, 3, 14, 10, 15), datetime(2025, 3, 14, 10, 30), datetime(2025, 3, 14, 10, 45)]
    assert next_times("0 3 * * mon-fri", start, 2) == [
        datetime(2025, 3, 17, 3, 0), datetime(2025, 3, 18, 3, 0)]  # the 14th is a Friday
    # Six fields: seconds first.
    assert next_times("*/20 * * * * *", start, 3) == [
        datetime(2025, 3, 14, 10, 7, 40), datetime(2025, 3, 14, 10, 8), datetime(2025, 3, 14, 10, 8, 20)]
    assert next_times("@daily", start, 1) == [datetime(2025, 3, 15)]
    assert next_times("  0   3 * *   *  ", start, 1) == [datetime(2025, 3, 15, 3)]
    # Strictly after start, in start's timezone.
    aware = datetime(2025, 3, 14, 10, 15).astimezone()
    (first,) = next_times("*/15 * * * *", aware, 1)
    assert first == aware + timedelta(minutes=15) and first.tzinfo is not None
    for good in ("0 3 * * *", "*/5 1-5,7 1 jan,jul sun", "0 0 * * 7", "@hourly", "*/2 * * * * *"):
        check_expression(good)
    check_expression("@weekly", "--install-cron", seconds=False)


@pytest.mark.parametrize(("expr", "option", "why"), [
    ("61 * * * *", "--every", "minute field '61'"),
    ("0 25 * * *", "--install-cron", "hour field '25'"),
    ("0 0 * * 8", "--every", "day-of-week field '8'"),
    ("0 0 * * funday", "--every", "day-of-week field 'funday'"),
    ("70 * * * * *", "--every", "second field '70'"),
    ("*/0 * * * *", "--every", "minute field '*/0'"),
    ("0 0 L * *", "--every", "day-of-month field 'L'"),
    ("0 3 * *", "--every", "4 fields"),
    ("0 0 1 1 * 2030 x", "--every", "7 fields"),
    ("*/10 * * * * *", "--install-cron", "6 fields"),  # cron starts jobs on the minute
    ("0 0 30 2 *", "--install-cron", "never fires"),
    ("@reboot", "--install-cron", "@reboot"),
    ("@fortnightly", "--every", "nickname"),
    ("", "--every", "empty"),
    ("every day", "--every", "2 fields"),
])
def test_bad_expression_is_a_one_line_user_error_naming_the_option(expr, option, why):
    seconds = option == "--every"  # a crontab line has no seconds field
    with pytest.raises(UserError) as info:
        check_expression(expr, option, seconds=seconds)
    message = str(info.value)
    assert message.startswith(f"{option} {expr!r}: ") and why in message
    assert "\n" not in message and info.value.exit_code == 2
    with pytest.raises(UserError):
        next_times(expr, datetime(2025, 1, 1), 1, option=option, seconds=seconds)


# --------------------------------------------------------------------------- the crontab line


def test_retune_args_drop_the_scheduling_options_only():
    args = ["study-a", "retune.max_age_days=30", "--every", "*/5 * * * *", "--store=s",
            "--install-cron=0 3 * * *", "--uninstall-cron", "--print-cron", "@daily", "-v",
            "--", "--every"]
    assert retune_args(args) == ["study-a", "retune.max_age_days=30", "--store=s", "-v", "--", "--every"]
    exe = cron.orch_executable()
    assert exe == str(Path(sys.executable).parent / "orch") and os.path.isabs(exe)


def test_marker_is_per_absolute_store_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = marker(Path("results"))
    assert a == marker(tmp_path / "results") and a.startswith("orch-retune:")
    assert a != marker(tmp_path / "other") and " " not in a


def _command_of(line: str, store: Path) -> str:
    """What cron hands to ``sh -c``: the text after the time fields (5, or 1 nickname), ``\\%`` as ``%``."""
    end = f" # {marker(store)}"
    assert line.endswith(end)
    command = line.split(None, 1 if line.startswith("@") else 5)[-1][: -len(end)]
    return command.replace("\\%", "%")


def _cron_env(tmp_path: Path) -> dict[str, str]:
    """The bare environment cron starts a job with."""
    return {"HOME": str(tmp_path), "LOGNAME": "root", "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin"}


def test_cron_line_runs_as_a_shell_command_in_cron_bare_environment(tmp_path):
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    log = tmp_path / "logs" / "retune's log.txt"
    log.parent.mkdir()
    store = tmp_path / "my store"
    env = {"PATH": "/opt/nothing:/usr/bin:/bin", "ORCH_STORE": str(store), "RAY_TEST_FLAG": "50% 'on'",
           "HOME": "/root", "SOME_SECRET": "not carried"}
    job = textwrap.dedent("""
        import os, sys
        print("cwd", os.getcwd())
        print("args", sys.argv[1:])
        print("store", os.environ["ORCH_STORE"])
        print("ray", os.environ["RAY_TEST_FLAG"])
        print("secret", os.environ.get("SOME_SECRET"))
        print("path0", os.environ["PATH"].split(":")[0])
        sys.stdout.flush()
        print("to stderr", file=sys.stderr)
    """)
    script = tmp_path / "job script.py"
    script.write_text(job)
    argv = [str(script), "a b", "it's 100%", "$HOME", "`false`"]
    line = cron_line("*/5 * * * *", workdir=workdir, argv=argv, log_file=log, env=env, store_root=store,
                     command=[PY])
    assert "\n" not in line and line.startswith("*/5 * * * * ")
    assert "%" not in line.replace("\\%", "")  # every % escaped for cron
    assert "SOME_SECRET" not in line and "HOME=" not in line

    for _ in range(2):
        proc = subprocess.run(["sh", "-c", _command_of(line, store)], env=_cron_env(tmp_path),
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0 and proc.stdout == proc.stderr == ""
    out = log.read_text().splitlines()
    once = [
        f"cwd {workdir}",
        "args ['a b', \"it's 100%\", '$HOME', '`false`']",
        f"store {store}",
        "ray 50% 'on'",
        "secret None",
        f"path0 {Path(PY).parent}",
        "to stderr",
    ]
    assert out == once + once  # appended, not overwritten; stderr too


def test_cron_line_runs_the_orch_executable(tmp_path):
    orch = cron.orch_executable()
    log = tmp_path / "retune.log"
    kwargs = {"workdir": tmp_path, "log_file": log, "env": dict(os.environ), "store_root": tmp_path}
    # By default: this interpreter's orch, retune, the arguments.
    line = cron_line("0 3 * * *", argv=["study a", "--store", str(tmp_path)], **kwargs)
    assert f" {orch} retune 'study a' --store {tmp_path}) >> " in line
    line = cron_line("@hourly", argv=["--version"], command=[orch], **kwargs)
    proc = subprocess.run(["sh", "-c", _command_of(line, tmp_path)], env=_cron_env(tmp_path), timeout=60)
    assert proc.returncode == 0
    assert "orch, version" in log.read_text()


def test_cron_line_refuses_seconds_and_line_breaks(tmp_path):
    kwargs = {"workdir": tmp_path, "log_file": tmp_path / "log", "env": {}, "store_root": tmp_path}
    with pytest.raises(UserError, match="^--install-cron '\\* \\* \\* \\* \\* \\*': 6 fields"):
        cron_line("* * * * * *", argv=[], **kwargs)
    with pytest.raises(UserError, match="^--print-cron '\\*/5 \\* \\* \\* \\* \\*': 6 fields"):
        cron_line("*/5 * * * * *", argv=[], option="--print-cron", **kwargs)
    with pytest.raises(UserError, match="^--install-cron: .*line break"):
        cron_line("@daily", argv=["two\nlines"], **kwargs)


def test_missing_crontab_command_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match=r"^--install-cron needs the crontab command.*install cron"):
        install_cron("* * * * * true # orch-retune:abc", "orch-retune:abc")
    with pytest.raises(UserError, match=r"^--uninstall-cron needs the crontab command"):
        uninstall_cron("orch-retune:abc")


@contextlib.contextmanager
def _saved_crontab():
    """The user's crontab as it was, put back afterwards (or removed if there was none)."""
    with FileLock(os.path.join("/tmp", f"orch-test-crontab-{os.getuid()}.lock"), timeout=120):
        before = subprocess.run([CRONTAB, "-l"], capture_output=True)
        had = before.returncode == 0
        try:
            yield
        finally:
            if had:
                subprocess.run([CRONTAB, "-"], input=before.stdout, check=True)
            else:
                subprocess.run([CRONTAB, "-r"], capture_output=True)


def _crontab_l() -> bytes:
    proc = subprocess.run([CRONTAB, "-l"], capture_output=True)
    return proc.stdout if proc.returncode == 0 else b""


@pytest.mark.skipif(CRONTAB is None, reason="the crontab command is not installed (apt-get install cron)")
def test_install_and_uninstall_in_the_real_crontab(tmp_path):
    others = (b"# a line of somebody else's, kept as it is\n"
              b"MAILTO=\"\"\n"
              b"17 4 * * *  echo \"unrelated  \\% thing\" >/dev/null   \n"
              b"@daily true # orch-retune:0000000000000  (a near miss)\n"
              b"0 1 * * * true # orch-retune:0000\n")
    store, other_store = tmp_path / "store", tmp_path / "other"
    mark, other_mark = marker(store), marker(other_store)

    def line(expr: str, store: Path) -> str:
        return cron_line(expr, workdir=tmp_path, argv=["study-a", "--store", str(store)],
                         log_file=store / "retune.log", env=dict(os.environ), store_root=store)

    with _saved_crontab():
        # No crontab at all to begin with.
        subprocess.run([CRONTAB, "-r"], capture_output=True)
        assert install_cron(line("0 3 * * *", store), mark) is False
        assert _crontab_l() == line("0 3 * * *", store).encode() + b"\n"
        assert uninstall_cron(mark) is True and _crontab_l() == b""

        # Somebody's table.
        subprocess.run([CRONTAB, "-"], input=others, check=True)
        kept = _crontab_l()
        assert kept.rstrip(b"\n") == others.rstrip(b"\n")

        first = line("0 3 * * *", store)
        assert install_cron(first, mark) is False
        table = _crontab_l()
        assert table.startswith(kept.rstrip(b"\n") + b"\n")
        assert table.splitlines().count(first.encode()) == 1
        assert table.count(f"# {mark}".encode()) == 1

        # Again, with another schedule: replaced, not added.
        second = line("*/30 * * * *", store)
        assert install_cron(second, mark) is True
        table = _crontab_l()
        assert table.count(f"# {mark}".encode()) == 1 and first.encode() not in table
        assert table.splitlines().count(second.encode()) == 1
        for other in others.splitlines():
            assert table.splitlines().count(other) == 1

        # Another store's line lives beside it and outlives its removal.
        third = line("@hourly", other_store)
        install_cron(third, other_mark)
        assert uninstall_cron(mark) is True
        table = _crontab_l()
        assert f"# {mark}".encode() not in table and third.encode() in table
        assert uninstall_cron(mark) is False
        assert uninstall_cron(other_mark) is True
        assert _crontab_l().rstrip(b"\n") == others.rstrip(b"\n")


# --------------------------------------------------------------------------- the service loop


class FakeClock:
    """now() and sleep() for run_every without waiting."""

    def __init__(self, start: datetime) -> None:
        self.t = start
        self.slept = 0.0

    def now(self) -> datetime:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert 0 < seconds <= cron.SLICE_S
        self.t += timedelta(seconds=seconds)
        self.slept += seconds


def test_run_every_sleeps_until_each_time_and_survives_failing_jobs():
    clock = FakeClock(datetime(2025, 1, 1, 9, 58, 30))
    outcomes = iter([RuntimeError("boom\nsecond line"), 3, 0, None])
    ran: list[datetime] = []
    said: list[str] = []

    def job() -> int:
        ran.append(clock.now())
        clock.t += timedelta(seconds=5)  # the job takes 5 s
        out = next(outcomes)
        if isinstance(out, Exception):
            raise out
        return out

    status = run_every("*/1 * * * *", job, now=clock.now, sleep=clock.sleep, max_runs=4, echo=said.append)
    assert status == 0
    assert ran == [datetime(2025, 1, 1, 9, 59), datetime(2025, 1, 1, 10, 0),
                   datetime(2025, 1, 1, 10, 1), datetime(2025, 1, 1, 10, 2)]
    assert clock.slept == pytest.approx(30 + 3 * 55)
    assert sum("next run at" in s for s in said) == 4
    assert "orch retune: next run at 2025-01-01 09:59:00" in said[0]
    assert "orch retune: run 1 failed: RuntimeError: boom" in said
    assert "orch retune: run 2 exited with status 3" in said
    assert said.count("orch retune: run 3 finished") == 1 and said[-1] == "orch retune: run 4 finished"


def test_run_every_skips_the_times_a_long_job_overran():
    clock = FakeClock(datetime(2025, 1, 1, 0, 0, 0))
    ran: list[datetime] = []

    def job() -> int:
        ran.append(clock.now())
        clock.t += timedelta(minutes=25)
        return 0

    run_every("*/10 * * * *", job, now=clock.now, sleep=clock.sleep, max_runs=2, echo=lambda s: None)
    assert ran == [datetime(2025, 1, 1, 0, 10), datetime(2025, 1, 1, 0, 40)]


def test_run_every_in_real_time_with_a_seconds_field():
    times: list[float] = []
    assert run_every("* * * * * *", lambda: times.append(time.time()) or 0, max_runs=2,
                     echo=lambda s: None) == 0
    assert len(times) == 2
    assert int(times[1]) > int(times[0])  # on two different seconds: it waited for the next one


def test_run_every_a_computed_expression_a_few_seconds_away():
    clock = FakeClock(datetime.now().replace(microsecond=500000))
    target = clock.now() + timedelta(seconds=2)
    expr = f"{target.second} {target.minute} {target.hour} {target.day} {target.month} *"
    said: list[str] = []
    ran: list[datetime] = []
    run_every(expr, lambda: ran.append(clock.now()) or 0, now=clock.now, sleep=clock.sleep,
              max_runs=1, echo=said.append)
    # At that second, not before it and not at a later time the expression names (next year).
    assert ran == [target.replace(microsecond=0)] and clock.slept == pytest.approx(1.5)
    assert said[0].startswith(f"orch retune: next run at {target:%Y-%m-%d %H:%M:%S}")
    assert f"orch retune: run 1 started at {target:%Y-%m-%d %H:%M:%S}" in said[1]


SERVICE = textwrap.dedent("""
    import sys, time
    from orchestrator.retune.cron import run_every

    def job():
        print("job started", flush=True)
        if sys.argv[2] == "long":
            time.sleep(60)
        print("job finished", flush=True)
        return 0

    sys.exit(run_every(sys.argv[1], job))
""")


def _start_service(expr: str, job: str) -> subprocess.Popen:
    return subprocess.Popen([PY, "-c", SERVICE, expr, job], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 15) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    proc.kill()
    pytest.fail(f"no {text!r} from the service: {seen}")


@pytest.mark.parametrize(("expr", "job", "ready", "sig", "why"), [
    ("0 0 1 1 *", "short", "next run at", signal.SIGTERM, "SIGTERM"),  # asleep till new year
    ("* * * * * *", "long", "job started", signal.SIGTERM, "SIGTERM"),  # in the middle of a job
    ("0 0 1 1 *", "short", "next run at", signal.SIGINT, "Ctrl-C"),
])
def test_service_stops_promptly_and_cleanly_on_sigterm(expr, job, ready, sig, why):
    proc = _start_service(expr, job)
    try:
        seen = "".join(_wait_for(proc, ready))
        time.sleep(0.3)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)  # (a guard only: the job alone takes 60 s)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = seen + out
    assert proc.returncode == 0, out
    assert f"orch retune: stopped by {why}" in out and "Traceback" not in out
    # Promptly: it neither waited for the next run time nor for the job in progress to end.
    runs = 1 if ready == "job started" else 0
    assert out.count("job started") == runs and "job finished" not in out, out
    assert f"orch retune: stopped by {why} after {runs} run(s)" in out, out
    assert "orch retune: run 1 finished" not in out, out


# --------------------------------------------------------------------------- one retune per store


# Says "ready", tries for the lock once the file GO exists, and holds it until the file RELEASE
# exists (120 s at most: a guard).
HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from orchestrator.retune.cron import busy_message, exclusive

    root, go, release = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    with exclusive(root) as got:
        print(got, flush=True)
        if got:
            deadline = time.monotonic() + 120
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            print(busy_message(root), flush=True)
""")


def _holder(root: Path, go: Path, release: Path) -> subprocess.Popen:
    proc = subprocess.Popen([PY, "-c", HOLD, str(root), str(go), str(release)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "ready", proc.communicate()
    return proc


def _holding(root: Path, tmp_path: Path) -> subprocess.Popen:
    """A process that holds the lock of ``root`` until it is killed."""
    go = tmp_path / "go"
    go.touch()
    proc = _holder(root, go, tmp_path / "never")
    assert proc.stdout.readline().strip() == "True"
    return proc


def test_two_processes_at_once_exactly_one_gets_the_store(tmp_path):
    root, go, release = tmp_path / "store", tmp_path / "go", tmp_path / "release"
    procs = [_holder(root, go, release) for _ in range(2)]  # both up and waiting
    try:
        go.touch()
        firsts = [p.stdout.readline().strip() for p in procs]
        assert sorted(firsts) == ["False", "True"], firsts
        winner, loser = procs[firsts.index("True")], procs[firsts.index("False")]
        loser_out = loser.stdout.read()  # to its end, while the winner holds the store
        loser.wait(timeout=30)
        release.touch()
        winner.wait(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0]
    assert f"another orch retune is running on {root} (pid {winner.pid}, since " in loser_out
    assert loser_out.rstrip().endswith("; nothing to do")
    assert not (root / cron.HOLDER_NAME).exists()  # the winner cleaned up
    with exclusive(root) as got:
        assert got is True


def test_a_sigkilled_holders_lock_is_taken_over(tmp_path):
    root = tmp_path / "store"
    proc = _holding(root, tmp_path)
    try:
        with exclusive(root) as got:
            assert got is False
        assert f"(pid {proc.pid}, since " in busy_message(root)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    stale = json.loads((root / cron.HOLDER_NAME).read_text())
    assert stale["pid"] == proc.pid  # the dead holder could not clean up
    assert busy_message(root) == f"another orch retune is running on {root}; nothing to do"
    with exclusive(root) as got:
        assert got is True
        assert cron.holder(root).pid == os.getpid()
    assert not (root / cron.HOLDER_NAME).exists()


def test_a_stale_or_broken_holder_file_is_handled(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (root / cron.HOLDER_NAME).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename,
                                                        "started": "long ago"}))
    assert cron.holder(root).alive() is False
    with exclusive(root) as got:
        assert got is True and cron.holder(root).pid == os.getpid()

    # Held by a live process whose file is garbage: busy, with no pid to show.
    proc = _holding(root, tmp_path)
    try:
        (root / cron.HOLDER_NAME).write_text("{not json")
        assert cron.holder(root) is None
        with exclusive(root) as got:
            assert got is False
        assert busy_message(root) == f"another orch retune is running on {root}; nothing to do"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(CRONTAB is None, reason="the crontab command is not installed (apt-get install cron)")
def test_orch_retune_installs_and_uninstalls_its_cron_line(tmp_path):
    """The command line a user types: the line lands in the real crontab, runs orch retune on this
    store with the same arguments, and goes away again."""
    store = tmp_path / "store"
    with _saved_crontab():
        r = orch("retune", "--all", "--dry-run", "--store", store, "--install-cron", "0 3 * * 1")
        assert r.returncode == 0, r.stderr
        table = _crontab_l().decode()
        ours = [ln for ln in table.splitlines() if "orch-retune:" in ln]
        assert len(ours) == 1 and ours[0].startswith("0 3 * * 1 ")
        assert " retune --all --store " in ours[0] and " --dry-run)" in ours[0] and str(store.resolve()) in ours[0]
        assert "--install-cron" not in ours[0] and "retune.log" in ours[0]
        printed = orch("retune", "--all", "--dry-run", "--store", store, "--print-cron", "0 3 * * 1")
        assert printed.stdout.strip() == ours[0]
        r = orch("retune", "--store", store, "--uninstall-cron")
        assert r.returncode == 0 and "removed" in r.stdout
        assert "orch-retune:" not in _crontab_l().decode()


# --------------------------------------------------------------------------- trial schedulers


class _Trial:
    """What ASHA reads of a Tune trial: its id."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def _asha(*overrides: str):
    cfg = plan.load(CONFIG, ["scheduler.name=asha", "scheduler.max_epochs=20", "scheduler.grace_period=2",
                             "scheduler.reduction_factor=3", *overrides])
    p = schedulers.create(cfg)
    p.scheduler.set_search_properties("val_loss", "min")
    return p


def _rung_results(p, curves: dict[str, list[float]]) -> dict[str, list[dict]]:
    """Each trial's results as a TrialContext sends them: only at the plan's report epochs."""
    sent: dict[str, list[dict]] = {}
    for tid, curve in curves.items():
        setup = TrialSetup(base={}, model="mlp", metric="val_loss", mode="min", max_epochs=20,
                           report_epochs=schedulers.report_epochs(p, 20, 10**6), checkpoint_every=10**6)
        ctx = TrialContext({"seed": 0}, setup, None,
                           LocalBackend(lambda r, _c, tid=tid: sent.setdefault(tid, []).append(r), trial_id=tid))
        for epoch, value in enumerate(curve, 1):
            ctx.report(epoch, {"train_loss": 1.0, "val_loss": value})
    return sent


def _decide(sched, results: dict[str, list[dict]]) -> dict[str, str]:
    """Feed each trial's first result (its first rung) to ``sched``, in order, flattened as Tune's
    controller hands it to schedulers ({"best": {"val_loss": x}} as "best/val_loss"): the action
    for each."""
    from ray.tune.utils import flatten_dict

    actions = {}
    for tid, rs in results.items():
        trial = _Trial(tid)
        sched.on_trial_add(None, trial)
        actions[tid] = sched.on_trial_result(None, trial, flatten_dict(rs[0]))
    return actions


def test_asha_decides_a_rung_on_the_best_objective_so_far_not_the_last_epoch() -> None:
    """At the first rung (epoch 2) two trials are recorded; the third's epoch 2 is a noisy bad one
    (0.50), but its epoch 1 (0.20) beats both: it goes on. Ray's own ASHA, which compares the epoch
    at the rung, stops it."""
    p = _asha()
    assert isinstance(p.scheduler, schedulers.BestSoFarASHA) and p.decision_epochs == frozenset({2, 6, 18})
    curves = {"a": [0.40, 0.30], "b": [0.35, 0.25], "noisy": [0.20, 0.50]}
    sent = _rung_results(p, curves)
    assert [r["epoch"] for r in sent["noisy"]] == [2] and sent["noisy"][0]["best"]["val_loss"] == 0.20
    assert _decide(p.scheduler, sent) == {"a": "CONTINUE", "b": "CONTINUE", "noisy": "CONTINUE"}
    # What Tune and the store get is untouched: the epoch's own value.
    assert sent["noisy"][0]["val_loss"] == 0.50
    plain = schedulers.AsyncHyperBandScheduler(time_attr="epoch", max_t=20, grace_period=2, reduction_factor=3)
    plain.set_search_properties("val_loss", "min")
    assert _decide(plain, sent)["noisy"] == "STOP"
    # Its best is what the rung recorded (in Ray's reward sign: larger is better).
    (first_rung,) = [rec for milestone, rec in p.scheduler._brackets[0]._rungs if milestone == 2]
    assert first_rung == {"a": -0.30, "b": -0.25, "noisy": -0.20}


def test_asha_still_stops_a_trial_whose_best_is_behind_and_a_diverged_one() -> None:
    p = _asha()
    sent = _rung_results(p, {"a": [0.40, 0.30], "b": [0.35, 0.25], "slow": [0.60, 0.45],
                             "diverged": [0.10, float("nan")]})
    assert sent["diverged"][0]["val_loss"] == math.inf and sent["diverged"][0]["best"]["val_loss"] == 0.10
    assert _decide(p.scheduler, sent) == {"a": "CONTINUE", "b": "CONTINUE", "slow": "STOP", "diverged": "STOP"}


def test_best_so_far_only_ever_improves_the_compared_value() -> None:
    r = {"val_loss": 0.3, "best": {"val_loss": 0.2}}
    assert schedulers.best_so_far(r, "val_loss", -1.0) == {"val_loss": 0.2, "best": {"val_loss": 0.2}}
    assert r["val_loss"] == 0.3  # a copy
    assert schedulers.best_so_far(r, "val_loss", 1.0) is r  # larger is better: 0.3 is already its best
    assert schedulers.best_so_far({"val_accuracy": 0.9, "best": {"val_accuracy": 0.95}}, "val_accuracy",
                                  1.0)["val_accuracy"] == 0.95
    flat = {"val_loss": 0.3, "best/val_loss": 0.2}  # as Tune hands results to schedulers
    assert schedulers.best_so_far(flat, "val_loss", -1.0)["val_loss"] == 0.2
    diverged = {"val_loss": math.inf, "best": {"val_loss": 0.2}}  # stays the worst
    for no_best in ({"val_loss": 0.3}, {"val_loss": 0.3, "best": {}}, diverged):
        assert schedulers.best_so_far(no_best, "val_loss", -1.0) is no_best


def test_the_asha_scheduler_pickles_with_its_rungs(tmp_path) -> None:
    """Tune keeps the scheduler in tuner.pkl and its state in a checkpoint: both are pickles, and a
    resumed sweep finds the class by its module path."""
    p = _asha()
    _decide(p.scheduler, _rung_results(p, {"a": [0.4, 0.3]}))
    again = pickle.loads(pickle.dumps(p.scheduler))
    assert type(again) is schedulers.BestSoFarASHA and type(again).__module__ == "orchestrator.tune.schedulers"
    p.scheduler.save(str(tmp_path / "asha.pkl"))
    restored = _asha().scheduler
    restored.restore(str(tmp_path / "asha.pkl"))
    assert [rec for _, rec in restored._brackets[0]._rungs][-1] == {"a": -0.3}


@pytest.mark.parametrize("max_epochs, given, grace", [(20, None, 4), (30, None, 6), (10, None, 2), (4, None, 2),
                                                      (1, None, 1), (20, 3, 3)])
def test_the_grace_period_defaults_to_a_fifth_of_the_budget(max_epochs: int, given: int | None, grace: int) -> None:
    overrides = ["scheduler.name=asha", f"scheduler.max_epochs={max_epochs}"]
    if given is not None:
        overrides.append(f"scheduler.grace_period={given}")
    cfg = plan.load(CONFIG, overrides)
    assert grace_period_of(cfg.scheduler) == grace
    made = schedulers.create(cfg)
    assert min(made.decision_epochs or {max_epochs}) == min(grace, max_epochs)
