"""Connecting to Ray: which Ray a sweep uses, its auth token, loopback-only clusters, resources.

Two Ray habits need care here:

- Ray replaces a loopback address (``--node-ip-address 127.0.0.1``, a cluster address such as
  ``127.0.0.1:6379``) by the machine's outward address, so a cluster meant to stay on one machine
  would talk over its network interface. :func:`keep_loopback` keeps loopback addresses as given,
  in orch's drivers and in the node scripts under ``deploy/`` (which run ``python -m
  orchestrator.cluster.nodes ray-start ...``).
- Token authentication is on: every client of a cluster needs its token. :func:`auth_token` finds
  it where Ray looks (``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.config.addresses import check_address, is_loopback, split_address
from orchestrator.errors import SweepFailed, UserError

if TYPE_CHECKING:
    from orchestrator.config.schema import SweepConfig

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"

# Ray's settings for sweeps of many short trials, each where the user has not set it. Ray reads them
# as it starts, runs a Tuner or starts a trial's process, so a sweep sets them as it starts Ray and
# importing orch changes nothing.
RAY_ENVIRONMENT = {
    # Ray Tune's per-result loggers (CSV, JSON, TensorBoard) write files for every report; the store
    # replaces them. Read when a Tuner starts.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # Usage statistics would contact a server. Read by ray.init.
    "RAY_USAGE_STATS_ENABLED": "0",
    # A result without the objective's metric is no error (Tune's check would raise). Read at each
    # result.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Ray Train's older, lighter implementation (the newer one imports pydantic in every trial's
    # process). Read as a process imports ray.train: Tune passes this process's value on to every
    # trial's actor as it creates it, and Ray's own processes inherit it from ray.init. (The driver
    # has imported ray.train by then; which implementation it holds makes no difference to orch.)
    "RAY_TRAIN_V2_ENABLED": "0",
    # Ray's workers import these as they start, before they take work: workers that Ray starts
    # ahead (as a Ray starts, and a warm one's between sweeps) have torch and orch's trial code
    # loaded by the time a trial is placed on them, instead of each trial's first seconds. Read by
    # the raylet as it starts.
    "RAY_preload_python_modules": "torch,orchestrator.tune.trial",
}


def ray_environment() -> None:
    """Set :data:`RAY_ENVIRONMENT` in this process's environment, each where the user has not.

    Called as a sweep starts (or joins) Ray; importing orch changes nothing in the process.
    """
    for name, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def ray_address(cfg: SweepConfig, address: str | None) -> str | None:
    """The cluster to join: ``--address``, else ``ray.address``, else the Ray Job's own (RAY_ADDRESS).

    None (or ``local`` given) means a Ray of this process's own; see :func:`orchestrator.tune.warm.ray_address`
    for the warm local Ray of ``orch up``.
    """
    if address:
        check_address(address, "--address")
        return None if address == "local" else address
    if cfg.ray.address:
        return None if cfg.ray.address == "local" else cfg.ray.address
    env = os.environ.get("RAY_ADDRESS", "")
    if env and not env.startswith(("http://", "https://")):  # (an http one is for `ray job submit`)
        check_address(env, "RAY_ADDRESS")
        return None if env == "local" else env
    return None


def local_asked(cfg: SweepConfig, address: str | None) -> bool:
    """Whether the sweep asked for a Ray of its own (``local`` as its address)."""
    env = os.environ.get("RAY_ADDRESS", "")
    return "local" in (address, cfg.ray.address) or (not address and not cfg.ray.address and env == "local")


def free_port(host: str, port: int) -> int:
    """``port`` on ``host`` if nothing listens there (0: any), else a free one the system picks.
    Choosing and binding are two steps: callers serialise them where it matters."""
    for candidate in (port, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, candidate))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise SweepFailed(f"no free port on {host}")


def keep_loopback() -> None:
    """Make Ray keep loopback addresses as given instead of swapping in the machine's outward one.

    Idempotent. Only loopback hosts are affected: a cluster on a real network behaves as Ray's own.
    """
    from orchestrator.tune import ray_adapter

    ray_adapter.keep_loopback_resolution(is_loopback)


# Deadlines on Ray, in seconds. A cluster's GCS answers a new client in well under a second.
CONNECT_TIMEOUT_S = 15.0  # a named cluster's first answer (ORCH_RAY_TIMEOUT_S)
JOIN_TIMEOUT_S = 60.0  # ray.init joining a cluster that answered
START_TIMEOUT_S = 120.0  # an embedded Ray's start (Ray's own waits inside are 60 s each)


def connect_timeout_s() -> float:
    """How long a named cluster has to answer: $ORCH_RAY_TIMEOUT_S, else CONNECT_TIMEOUT_S."""
    text = os.environ.get("ORCH_RAY_TIMEOUT_S", "").strip()
    if not text:
        return CONNECT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"ORCH_RAY_TIMEOUT_S: '{text}' is not a number of seconds above 0")
    return value


def reachable(address: str, timeout_s: float = 5.0) -> None:
    """Raise a one-line UserError unless something listens at ``address`` (HOST:PORT)."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port or 0), timeout=timeout_s):  # no port: port 0, refused
            return
    except OSError as err:
        reason = err.strerror or str(err)
        raise UserError(f"cannot reach the Ray cluster at {address}: {reason} "
                        "(is its head running? deploy/ray-head starts one)") from None


# -- the token ------------------------------------------------------------------------------------


def auth_token() -> str | None:
    """The cluster token this process would present, where Ray itself looks for it."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    candidates = [Path(path)] if path else [Path.home() / ".ray" / "auth_token"]
    for candidate in candidates:
        try:
            text = candidate.expanduser().read_text().strip()
        except OSError:
            if path:
                raise UserError(f"RAY_AUTH_TOKEN_PATH: cannot read the token file {path}") from None
            continue
        if text:
            return text
    return None


def use_token() -> None:
    """Present the token (if this machine has one) to the cluster this process joins.

    ``ray start`` turns token authentication on when it finds a token; ``ray.init(address=...)``
    does not, and without it a driver waits forever on a cluster that requires one.
    """
    if os.environ.get("RAY_AUTH_MODE") or not auth_token():
        return
    from orchestrator.tune import ray_adapter

    ray_adapter.enable_token_auth()


def auth_headers() -> dict[str, str]:
    token = auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def dashboard_address(address: str | None) -> str:
    """The dashboard (Jobs API) URL: ``address``, else $RAY_API_SERVER_ADDRESS, else 127.0.0.1:8265."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or DEFAULT_DASHBOARD
    if "://" not in address:
        address = "http://" + address
    if not address.startswith(("http://", "https://")):
        raise UserError(f"--address: '{address}' is not the dashboard's http://HOST:PORT")
    host, port = split_address(address)
    if not host or port == -1:
        raise UserError(f"--address: '{address}' is not the dashboard's http://HOST:PORT")
    return address.rstrip("/")


# -- resources for one trial ----------------------------------------------------------------------

RESOURCE_POLL_S = 5.0  # how often a sweep waiting for a big enough node asks the cluster again


def _amount(n: float, what: str) -> str:
    return f"{n:g} {what}" + ("" if n == 1 else "s")


def check_machine(cfg: SweepConfig, cpus: float, gpus: float, what: str = "this machine") -> None:
    """A user error unless one trial's CPUs and GPUs fit ``cpus`` and ``gpus`` (an embedded Ray's)."""
    r = cfg.resources
    if r.cpu_per_trial > cpus:
        why = "ray.num_cpus" if cfg.ray.num_cpus is not None else "its cores; ray.num_cpus sets it"
        raise UserError(f"resources.cpu_per_trial: {_amount(r.cpu_per_trial, 'CPU')} per trial, "
                        f"but {what} has {cpus:g} ({why})")
    if r.gpu_per_trial > gpus:
        why = ("ray.num_gpus" if cfg.ray.num_gpus is not None
               else "its GPUs" if gpus else "no GPU found; ray.num_gpus sets it")
        raise UserError(f"resources.gpu_per_trial: {_amount(r.gpu_per_trial, 'GPU')} per trial, "
                        f"but {what} has {gpus:g} ({why})")


def check_resources(cfg: SweepConfig, joined: bool, echo: Callable[[str], None] = print,
                    poll_s: float = RESOURCE_POLL_S) -> None:
    """Stop a sweep whose trials no node of its Ray could ever run (Tune would wait forever).

    On the embedded Ray: a user error naming the key, the value and what this machine's Ray has.
    On a cluster (``joined``): wait up to ``resources.wait_s`` for a node with the CPUs and GPUs of
    one trial to be alive (the cluster may scale up), asking every ``poll_s`` seconds.

    Raises:
        UserError: the embedded Ray is too small for one trial.
        SweepFailed: no node of the cluster was big enough by the end of ``resources.wait_s``.
    """
    import ray

    r = cfg.resources
    if not joined:
        have = ray.cluster_resources()
        check_machine(cfg, have.get("CPU", 0.0), have.get("GPU", 0.0), "this machine's Ray")
        return
    need = f"{_amount(r.cpu_per_trial, 'CPU')} (resources.cpu_per_trial)"
    if r.gpu_per_trial:
        need += f" and {_amount(r.gpu_per_trial, 'GPU')} (resources.gpu_per_trial)"
    t0 = time.monotonic()
    waiting = False
    while True:
        nodes = [n.get("Resources") or {} for n in ray.nodes() if n.get("Alive")]
        if any(n.get("CPU", 0.0) >= r.cpu_per_trial and n.get("GPU", 0.0) >= r.gpu_per_trial
               for n in nodes):
            if waiting:
                echo(f"A node with {need} is alive after {time.monotonic() - t0:.0f}s.")
            return
        most = (f"{_amount(len(nodes), 'alive node')} with at most "
                f"{_amount(max((n.get('CPU', 0.0) for n in nodes), default=0.0), 'CPU')} and "
                f"{_amount(max((n.get('GPU', 0.0) for n in nodes), default=0.0), 'GPU')} each")
        left = r.wait_s - (time.monotonic() - t0)
        if left <= 0:
            raise SweepFailed(f"no node of the Ray cluster has {need} for one trial after waiting "
                              f"{r.wait_s:g}s (resources.wait_s): {most}")
        if not waiting:
            echo(f"No node of the Ray cluster has {need} for one trial ({most}); waiting up to "
                 f"{r.wait_s:g}s (resources.wait_s) for one to join")
            waiting = True
        time.sleep(min(poll_s, left))


def current_job() -> str | None:
    """The Ray Job name this process runs as (orch submit's ``orch:<study>:<sweep_id>``), if any."""
    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "") or "{}")
    except ValueError:
        return None
    return (config.get("metadata") or {}).get("job_name")
