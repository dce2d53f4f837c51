"""Sweeps as Ray Jobs (``orch submit``) and what is running now (``orch status``).

A submitted sweep is a Ray Job named ``orch:<study>:<sweep_id>``: the working directory is shipped
as its runtime environment, ``orch sweep`` runs on the cluster (so it survives the submitting
laptop going to sleep), and the dashboard's Jobs view lists it by that name, with orch's metadata.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import shlex
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import OrchError, UserError
from orchestrator.tune import connect, warm
from orchestrator.tune.files import STATUS_FILE

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

    from orchestrator.config.schema import SweepConfig

JOB_PREFIX = "orch:"
STALE_AFTER_S = 60.0  # a status file not rewritten for this long: its driver is gone
PROGRESS = re.compile(r"\[(?P<elapsed>[\d:]+)\] trials (?P<done>\d+)/(?P<total>\d+) done \| (?P<running>\d+) running"
                      r"(?:.*?best (?P<metric>\S+) (?P<best>\S+))?")
STORE_FROM_CLUSTER = '"${ORCH_STORE:?is not set on the cluster: pass orch submit --store DIR}"'


def job_name(study: str, sweep_id: str) -> str:
    return f"{JOB_PREFIX}{study}:{sweep_id}"


class ClusterError(OrchError):
    """The cluster answered, but not as hoped (exit status 1)."""


def client(address: str | None) -> tuple[JobSubmissionClient, str]:
    """A Jobs API client of the dashboard at ``address``, presenting the cluster token."""
    from ray.job_submission import JobSubmissionClient

    url = connect.dashboard_address(_dashboard(address))
    try:
        return JobSubmissionClient(url, headers=connect.auth_headers()), url
    except Exception as err:  # noqa: BLE001 - Ray raises several kinds; each becomes one line
        raise UserError(_client_error(url, err)) from None


def _client_error(url: str, err: Exception) -> str:
    text = " ".join(str(err).split())
    if "401" in text or "Unauthorized" in text:
        return (f"the Ray dashboard at {url} wants the cluster's token: set RAY_AUTH_TOKEN or "
                "RAY_AUTH_TOKEN_PATH (or copy it to ~/.ray/auth_token)")
    if "403" in text or "Forbidden" in text or "Invalid authentication token" in text:
        return (f"the Ray dashboard at {url} refused this token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
                "to the cluster's token")
    if "Failed to connect" in text or "Connection refused" in text or "Max retries" in text:
        return f"cannot reach the Ray dashboard at {url} (is the cluster's head running and its port published?)"
    return f"Ray dashboard at {url}: {text[:300]}"


# -- submit -----------------------------------------------------------------------------------------


@dataclass
class Submitted:
    name: str
    study: str
    sweep_id: str
    url: str
    entrypoint: str


def submit(cfg: SweepConfig, config_path: Path, overrides: list[str], address: str | None, store: str | None,
           workdir: Path | None = None) -> Submitted:
    """Submit the sweep of ``cfg`` as a Ray Job; return its name and where to watch it."""
    from orchestrator.store.tables import new_sweep_id

    workdir = (workdir or Path.cwd()).resolve()
    try:
        rel = config_path.resolve().relative_to(workdir)
    except ValueError:
        raise UserError(f"{config_path}: the config must be inside the working directory ({workdir}), "
                        "which is what orch submit ships to the cluster") from None
    if store is None and address is None and not os.environ.get("RAY_API_SERVER_ADDRESS") and warm.dashboard():
        from orchestrator.store.tables import store_root

        store = str(store_root(cfg).resolve())  # the warm local Ray (orch up) shares this machine's files
    sweep_id = new_sweep_id()
    name = job_name(cfg.study, sweep_id)
    argv = ["orch", "sweep", rel.as_posix(), *overrides, "--sweep-id", sweep_id]
    entrypoint = shlex.join(argv) + " --store " + (shlex.quote(store) if store else STORE_FROM_CLUSTER)
    excludes = [".git", "bench/out", "*.egg-info", "__pycache__", ".venv", "venv"]
    local_store = Path(cfg.store.path)
    if "://" not in cfg.store.path and not local_store.is_absolute() and not str(local_store).startswith(".."):
        excludes.append(local_store.as_posix())
    runtime_env: dict = {"working_dir": str(workdir), "excludes": excludes}
    if os.environ.get("ORCH_DEBUG") == "1":
        runtime_env["env_vars"] = {"ORCH_DEBUG": "1"}  # tracebacks in the job's log too
    metadata = {
        "job_name": name, "orch_study": cfg.study, "orch_sweep_id": sweep_id, "orch_config": rel.as_posix(),
        "orch_overrides": " ".join(overrides), "submitted_by": f"{getpass.getuser()}@{socket.gethostname()}",
        "submitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    jobs, url = client(address)
    try:
        jobs.submit_job(entrypoint=entrypoint, submission_id=name, runtime_env=runtime_env, metadata=metadata)
    except Exception as err:  # noqa: BLE001
        raise UserError(_client_error(url, err)) from None
    return Submitted(name, cfg.study, sweep_id, url, entrypoint)


def follow(address: str | None, name: str, echo: Callable[[str], None]) -> str:
    """Print the job's output as it comes until it ends; return its final status."""
    jobs, url = client(address)

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(name):
            echo(lines.rstrip("\n"))

    try:
        asyncio.run(tail())
    except Exception as err:  # noqa: BLE001 - the log stream closing early is not the job failing
        echo(f"orch: log stream ended: {' '.join(str(err).split())[:200]}")
    return str(jobs.get_job_status(name).value)


# -- status -----------------------------------------------------------------------------------------


@dataclass
class Running:
    study: str
    sweep_id: str
    state: str
    done: int | None = None
    total: int | None = None
    running: int | None = None
    metric: str | None = None
    best: float | None = None
    elapsed: str = ""
    where: str = ""


def local_sweeps(store_root: Path, show_all: bool = False, now: datetime | None = None) -> list[Running]:
    """Sweeps whose drivers write to this store, from their status files (newest first)."""
    now = now or datetime.now(timezone.utc)
    ray_dir = Path(store_root) / "_ray"
    rows = []
    for path in sorted(ray_dir.glob(f"*/{STATUS_FILE}"), reverse=True) if ray_dir.is_dir() else []:
        try:
            s = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        state = s.get("state", "running")
        updated = _parse_time(s.get("updated_at"))
        started = _parse_time(s.get("started_at"))
        if state == "running" and updated and (now - updated).total_seconds() > STALE_AFTER_S:
            state = "interrupted"  # the driver stopped writing: a crash, a kill, a lost machine
        if state == "ended":
            state = "finished" if s.get("done", 0) >= s.get("trials", 0) else "stopped"
        if state != "running" and not show_all:
            continue
        end = updated if state != "running" else now
        where = f"job {s['job']}" if s.get("job") else f"{s.get('host', '?')} pid {s.get('pid', '?')}"
        if s.get("cluster"):
            where += " (cluster)"
        rows.append(Running(s.get("study", "?"), s.get("sweep_id", path.parent.name), state, s.get("done"),
                            s.get("trials"), (s.get("counts") or {}).get("running"), s.get("metric"), s.get("best"),
                            _elapsed(started, end), where))
    return rows


def cluster_jobs(address: str | None, show_all: bool = False) -> list[Running]:
    """orch's Ray Jobs on the cluster, with the progress line each last printed."""
    jobs, _ = client(address)
    try:
        listed = jobs.list_jobs()
    except Exception as err:  # noqa: BLE001
        raise UserError(_client_error(connect.dashboard_address(_dashboard(address)), err)) from None
    rows = []
    for job in sorted(listed, key=lambda j: j.start_time or 0, reverse=True):
        name = job.submission_id or ""
        if not name.startswith(JOB_PREFIX):
            continue
        state = str(job.status.value).lower()
        if state not in ("pending", "running") and not show_all:
            continue
        meta = job.metadata or {}
        row = Running(meta.get("orch_study", name.split(":")[1]), meta.get("orch_sweep_id", name.split(":")[-1]),
                      state, where=f"job {name}")
        try:
            logs = jobs.get_job_logs(name) if state != "pending" else ""
        except Exception:  # noqa: BLE001 - progress is optional
            logs = ""
        for line in reversed(logs.splitlines()):
            m = PROGRESS.search(line)
            if m:
                row.done, row.total, row.running = int(m["done"]), int(m["total"]), int(m["running"])
                row.elapsed = m["elapsed"]
                if m["best"]:
                    row.metric, row.best = m["metric"], _float(m["best"])
                break
        rows.append(row)
    return rows


def render(rows: list[Running], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps([asdict(r) for r in rows], indent=1) + "\n"
    header = ("STUDY", "SWEEP", "STATE", "TRIALS", "RUNNING", "BEST", "ELAPSED", "WHERE")
    table = [header]
    for r in rows:
        trials = f"{r.done}/{r.total}" if r.total is not None else "-"
        best = f"{r.metric} {r.best:.4g}" if r.best is not None and r.metric else "-"
        running = "-" if r.running is None else str(r.running)
        table.append((r.study, r.sweep_id, r.state, trials, running, best, r.elapsed or "-", r.where))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    return "".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n"
                   for row in table)


def merge(local: list[Running], remote: list[Running]) -> list[Running]:
    """One row per sweep: a job's row, completed by its status file where this store has one."""
    by_id = {r.sweep_id: r for r in local}
    out = []
    for r in remote:
        mine = by_id.pop(r.sweep_id, None)
        if mine is not None and r.total is None:
            r.done, r.total, r.running, r.metric, r.best, r.elapsed = (mine.done, mine.total, mine.running,
                                                                       mine.metric, mine.best, mine.elapsed)
        out.append(r)
    return out + list(by_id.values())


def _parse_time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _elapsed(start: datetime | None, end: datetime | None) -> str:
    if not start or not end:
        return ""
    s = max(0, int((end - start).total_seconds()))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def default_address() -> str | None:
    """The dashboard ``orch status`` asks when given no --address: $RAY_API_SERVER_ADDRESS if set,
    else the warm local Ray's (``orch up``) if one runs."""
    return os.environ.get("RAY_API_SERVER_ADDRESS") or warm.dashboard() or None


def _dashboard(address: str | None) -> str | None:
    """The dashboard asked: ``address``, else $RAY_API_SERVER_ADDRESS, else the warm local Ray's
    (``orch up``), else None (connect.dashboard_address's default)."""
    return address or os.environ.get("RAY_API_SERVER_ADDRESS") or warm.dashboard()


__all__ = ["submit", "follow", "local_sweeps", "cluster_jobs", "render", "merge", "job_name"]
