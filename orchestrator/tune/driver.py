"""Run one sweep: load data once, start (or join) Ray, run the Tuner, write the store.

The environment settings of :func:`~orchestrator.tune.connect.ray_environment` (set as Ray starts)
are the difference between Ray Tune's defaults and a sweep of many short trials that costs little
more than the training itself (see BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import __version__
from orchestrator.config import load as config_mod
from orchestrator.config.schema import SweepConfig
from orchestrator.errors import SweepFailed, UserError
from orchestrator.phases import mark
from orchestrator.store import fs
from orchestrator.store import trials as trial_rules
from orchestrator.store.fs import AnyPath
from orchestrator.store.tables import Store, new_sweep_id, store_root
from orchestrator.store.trials import TrialStatus
from orchestrator.train import data as data_mod
from orchestrator.train.metrics import METRIC_DIRECTIONS
from orchestrator.tune import schedulers, searchers
from orchestrator.tune.compile import SweepPlan, code_version, compile_sweep
from orchestrator.tune.files import STAGES_FILE, STATUS_FILE, SWEEP_CONFIG_FILE

if TYPE_CHECKING:
    from orchestrator.space.space import Space
    from orchestrator.tune.state_guard import StateKey

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    study: str
    sweep_id: str
    store: Store
    finished: bool
    metric: str = ""
    best_trial_id: str | None = None
    best_value: float | None = None
    best_config: dict[str, Any] = field(default_factory=dict)
    searched: list[str] = field(default_factory=list)  # the knobs the sweep sampled
    best_metrics: dict[str, float] = field(default_factory=dict)  # the best trial's best values
    counts: dict[str, int] = field(default_factory=dict)
    dashboard_url: str | None = None
    warm: bool = False  # it ran on the warm local Ray of `orch up` (whose dashboard stays up)
    elapsed_s: float = 0.0
    config_path: str = "CONFIG"
    space_ranges: dict[str, Any] = field(default_factory=dict)  # knob -> [low, high] or choices
    stages: list[dict[str, Any]] | None = None  # coarse-to-fine: each stage's trials and ranges
    collapsed: int = 0  # trials whose model ended predicting (nearly) a constant
    all_collapsed: bool = False  # every usable trial collapsed: no best
    budget_hit: bool = False  # search.time_budget_s ended the sweep
    promoted: bool = False  # its best became the study's best
    reference: float | None = None  # the value it had to beat
    report: AnyPath | None = None  # the report's page, when finish wrote one
    report_warning: str | None = None  # why there is no report, when writing it failed
    models: list[AnyPath] = field(default_factory=list)  # the kept trials' model artefacts, best first
    models_warning: str | None = None  # why no model was kept, when writing them failed


# -- Ray ---------------------------------------------------------------------------------------------


def start_ray(cfg: SweepConfig, address: str | None, verbose: bool) -> tuple[str | None, bool]:
    """Start an embedded Ray on 127.0.0.1 or join the cluster at ``address``. Returns (dashboard URL, owned).

    ``address`` is a resolved one (see :func:`ray_address`); None starts a Ray of this process's
    own, whatever cluster a ``ray start`` on this machine last recorded. Every wait on Ray has a
    deadline and a one-line message, Ctrl-C and SIGTERM stop it at any moment, and Ray's own log
    lines go to a file, not the terminal, unless ``verbose`` (see orchestrator/tune/stopping.py).
    """
    import tempfile

    from orchestrator.tune import connect, stopping

    connect.ray_environment()  # before Ray starts: its processes inherit the environment
    if address is None or address == "auto" or connect.is_loopback(connect.split_address(address)[0]):
        connect.keep_loopback()  # a loopback cluster stays on loopback
    import ray

    if ray.is_initialized():
        return None, False
    if not verbose:
        # Ray Tune's own progress tables and banners: orch prints its own progress line.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # Ray's C++ retry warnings
        logging.getLogger("ray").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=r"ray\..*")
    kwargs: dict[str, Any] = dict(
        log_to_driver=verbose,
        logging_level=logging.INFO if verbose else logging.ERROR,
        configure_logging=True,
    )
    # Ray's C++ code logs to file descriptor 2 (a line on its log level at every start, retries
    # while it connects): into this file, moved into Ray's session directory once there is one.
    output = None
    if not verbose:
        fd, output = tempfile.mkstemp(prefix=f"orch-ray-{os.getpid()}-", suffix=".log")
        os.close(fd)
    try:
        with stopping.quiet_stderr(output) if output else contextlib.nullcontext():
            ctx = _join_ray(address, kwargs) if address else _start_local_ray(cfg, kwargs, output)
    except SweepFailed:
        raise  # (its message names the file with Ray's output)
    except BaseException:
        if output:
            with contextlib.suppress(OSError):
                os.remove(output)
        raise
    if output:
        _keep_output(output, ctx)
    url = getattr(ctx, "dashboard_url", None)
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return url or None, True


def _join_ray(address: str, kwargs: dict[str, Any]) -> Any:
    """``ray.init`` on the cluster at ``address``: a cluster that does not answer, or refuses the
    token, is a one-line UserError in seconds (Ray itself would retry for minutes)."""
    import ray

    from orchestrator.tune import connect, ray_adapter, stopping

    connect.use_token()
    if address == "auto":
        try:
            address = ray_adapter.resolve_auto()
        except ConnectionError:
            raise UserError("--address auto: no Ray cluster runs on this machine "
                            "(deploy/ray-head starts one)") from None
    connect.reachable(address)
    cannot = f"cannot join the Ray cluster at {address}"
    refused = (f"{cannot}: it refused this machine's token (set RAY_AUTH_TOKEN or "
               "RAY_AUTH_TOKEN_PATH to the cluster's token)")
    timeout = connect.connect_timeout_s()
    with stopping.native(f"joining the Ray cluster at {address}", timeout,
                         f"the Ray cluster at {address} did not answer within {timeout:g}s "
                         "(is that a Ray head's GCS port? ORCH_RAY_TIMEOUT_S waits longer)"):
        try:
            ray_adapter.probe_gcs(address)  # ray.init retries a refused token for 20 s
        except ray.exceptions.AuthenticationError:
            raise UserError(refused) from None
        except Exception as err:  # noqa: BLE001 - Ray raises several kinds for a failed connection
            why = _first_line(err)
            raise UserError(f"{cannot}: {why} (is that a Ray head's GCS port?)") from None
    cwd = os.getcwd()
    join_s = max(connect.JOIN_TIMEOUT_S, 4 * timeout)
    with stopping.native(f"joining the Ray cluster at {address}", join_s,
                         f"joining the Ray cluster at {address} did not finish within {join_s:g}s "
                         "(is this machine a node of the cluster?)"):
        try:
            ctx = ray.init(address=address, **kwargs)
        except ray.exceptions.AuthenticationError:
            raise UserError(refused) from None
        except ConnectionError as err:
            raise UserError(f"{cannot}: {_first_line(err)} (is the address right, and is "
                            "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH the cluster's token?)") from None
    try:
        os.getcwd()
    except FileNotFoundError:
        # In a Ray Job, joining the cluster can unpack the job's working directory afresh and
        # leave this process in the deleted copy: back to the same path, now the new copy.
        with contextlib.suppress(OSError):
            os.chdir(cwd)
    return ctx


def _start_local_ray(cfg: SweepConfig, kwargs: dict[str, Any], output: str | None) -> Any:
    """``ray.init`` of a Ray of this process's own on 127.0.0.1, one orch process at a time."""
    import tempfile

    import ray
    from filelock import FileLock, Timeout

    from orchestrator.tune import connect, ray_adapter, stopping

    # Choosing the dashboard's port and Ray binding it are two steps: orch processes on this
    # machine take turns from one to the other (ray.init returns once the dashboard is up).
    lock = FileLock(os.path.join(tempfile.gettempdir(), f"orch-ray-start-{os.getuid()}.lock"))
    wait_s = connect.START_TIMEOUT_S + 60
    try:
        lock.acquire(timeout=wait_s)
    except Timeout:
        raise SweepFailed(f"another orch process on this machine has been starting Ray for over "
                          f"{wait_s:g}s (lock {lock.lock_file})") from None
    start_s = connect.START_TIMEOUT_S
    where = f" (Ray's output: {output})" if output else ""
    try:
        late = f"Ray did not start on this machine within {start_s:g}s{where}"
        with stopping.native("starting Ray", start_s, late, timeout_status=1):
            try:
                # "local": a Ray of its own, never the cluster a stopped `ray start` recorded.
                return ray.init(
                    address="local",
                    num_cpus=cfg.ray.num_cpus,
                    num_gpus=cfg.ray.num_gpus,
                    include_dashboard=True,
                    dashboard_host=cfg.ray.dashboard_host,
                    dashboard_port=connect.free_port(cfg.ray.dashboard_host, cfg.ray.dashboard_port),
                    **ray_adapter.local_node_kwargs(),
                    **kwargs,
                )
            except Exception as err:  # noqa: BLE001 - Ray raises several kinds for a failed start
                why = _first_line(err)
                raise SweepFailed(f"Ray did not start on this machine: {why}{where}") from err
    finally:
        lock.release()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _keep_output(path: str, ctx: Any) -> None:
    """Move Ray's output while it started (``path``) into its session's log directory (or drop it
    when empty)."""
    session = (getattr(ctx, "address_info", None) or {}).get("session_dir")
    with contextlib.suppress(OSError):  # (on another file system, it stays where it is)
        if os.path.getsize(path) == 0:
            os.remove(path)
        elif session and os.path.isdir(os.path.join(session, "logs")):
            os.replace(path, os.path.join(session, "logs", f"orch-driver-{os.getpid()}.err"))


# -- Sweep ------------------------------------------------------------------------------------------


def find_resumable(store: Store, study: str, sweep_id: str | None) -> str:
    """The sweep id to resume: the one named, else the newest unfinished sweep of ``study``.

    Its Tune state, if any, must be signed by this machine's key (checked here, before Ray starts,
    and again before Tune reads it).
    """
    ray_dir = store.ray_dir()
    finished = set(store.sweeps(study)["sweep_id"]) if store.files("sweeps", study) else set()
    if sweep_id and sweep_id != "latest":
        if not (store.sweep_dir(sweep_id, "--resume") / SWEEP_CONFIG_FILE).is_file():
            raise UserError(f"--resume: no sweep '{sweep_id}' under {ray_dir}")
        if sweep_id in finished:
            raise UserError(f"--resume: sweep '{sweep_id}' already finished; see `orch results --study {study}`")
        return _check_tune_state(store, sweep_id)
    candidates = []
    for d in sorted(ray_dir.glob("*/" + SWEEP_CONFIG_FILE)) if ray_dir.is_dir() else []:
        sid = d.parent.name
        if sid in finished:
            continue
        saved = config_mod.from_yaml(d.read_text())
        if saved.study == study:
            candidates.append(sid)
    if not candidates:
        raise UserError(f"--resume: no unfinished sweep of study '{study}' under {ray_dir}")
    return _check_tune_state(store, sorted(candidates)[-1])


def _trust_saved_config(store: Store, sweep_id: str, text: str) -> None:
    """Refuse to resume a sweep whose saved config names code unless this machine signed it."""
    from orchestrator.tune import state_guard

    exp_dir = store.sweep_dir(sweep_id)
    key = state_guard.load_key(store.root)
    try:
        signatures = state_guard.read_signatures(exp_dir).get(SWEEP_CONFIG_FILE, [])
    except state_guard.SignaturesError:
        signatures = []
    state_guard.trust_config(key, sweep_id, SWEEP_CONFIG_FILE, text, signatures, f"--resume: sweep {sweep_id}")


def _own_files() -> tuple[str, ...]:
    """orch's files in a sweep's experiment directory (Tune never reads them: not signed)."""
    return SWEEP_CONFIG_FILE, STATUS_FILE, STAGES_FILE, f"{STAGES_FILE}.tmp"


def _check_tune_state(store: Store, sweep_id: str, key: StateKey | None = None) -> str:
    """``sweep_id``, once the Tune state it would restore (if any) is found signed by ``key``
    (default: this machine's; see orchestrator/tune/state_guard.py).

    Raises:
        UserError: a state file that is not signed, or no signatures.
    """
    from orchestrator.tune import ray_adapter, state_guard

    exp_dir = store.sweep_dir(sweep_id)
    if ray_adapter.restorable(exp_dir):
        state_guard.verify(exp_dir, key or state_guard.load_key(store.root), sweep_id=sweep_id,
                           context=f"--resume: sweep {sweep_id}", exempt=_own_files())
    return sweep_id


def run(cfg: SweepConfig, *, store: Store | None = None, address: str | None = None, resume: str | None = None,
        verbose: bool = False, progress_interval_s: float | None = None,
        echo: Callable[[str], None] = print, reason: str = "manual", parent_sweep_id: str | None = None,
        reference: float | None = None, sweep_id: str | None = None, report: bool = False,
        summary: Callable[[SweepResult], None] | None = None) -> SweepResult:
    """Run (or resume) the sweep described by ``cfg`` and record it in the store.

    ``reason`` and ``parent_sweep_id`` are the sweep's lineage (a re-tune names why and what it
    re-tunes); the sweep is promoted (``orch best`` returns it) when its best beats ``reference``,
    else the study's current best value. ``sweep_id``: the new sweep's id (``orch submit`` picks it).
    ``report``: also write the sweep's report (:func:`announce_report` says where it went);
    ``summary``: called with the result once the store has it, before the report is built.

    Raises:
        UserError: bad data, a metric the task does not report, nothing to resume.
        SweepFailed: every trial failed.
    """
    t_start = time.monotonic()
    store = store or Store(store_root(cfg))
    if resume:
        sweep_id = find_resumable(store, cfg.study, resume)
        saved = store.sweep_dir(sweep_id) / SWEEP_CONFIG_FILE
        text = saved.read_text()
        cfg = dataclasses.replace(config_mod.from_yaml(text), source_file=cfg.source_file)
        if config_mod.uses_project_code(cfg):
            _trust_saved_config(store, sweep_id, text)
        echo(f"Resuming sweep {sweep_id} of {cfg.study} (config as saved when it started)")
    else:
        sweep_id = sweep_id or new_sweep_id()
        if store.sweep_dir(sweep_id, "--sweep-id").exists():
            raise UserError(f"--sweep-id: sweep '{sweep_id}' already exists under {store.ray_dir()}")

    # Everything that can be wrong with the input is found before Ray starts or a file is written:
    # a bad table is reported in seconds, not after Ray's start and shutdown.
    from orchestrator.config.imports import project_on_path

    project_on_path(cfg.project)  # the code the config names (Ray's local workers inherit sys.path)
    if resume:
        from orchestrator.config.schema import check_tracking

        check_tracking(cfg)  # the saved config's trackers and callbacks (a new one's were checked as it loaded)
    from orchestrator.tune import connect
    from orchestrator.tune import warm as warm_ray

    asked_local = connect.local_asked(cfg, address)
    address = warm_ray.ray_address(cfg, address)
    warm = warm_ray.joins(address)
    if address is None and not asked_local and (why := warm_ray.passed_over()):
        echo(f"Note: {why}; this sweep starts a Ray of its own")
    if warm and (cfg.ray.num_cpus is not None or cfg.ray.num_gpus is not None):
        echo("Note: ray.num_cpus and ray.num_gpus size a Ray of the sweep's own; the local Ray of `orch up` "
             "has its own (--address local starts one)")
    store.check_writable()
    dataset = data_mod.load(cfg)
    mark("data")
    # The space inline from here on: files are read before Ray starts (in a Ray Job, joining the
    # cluster can replace the working directory the relative paths point into).
    cfg = dataclasses.replace(cfg, search_space=config_mod.load_space(cfg) or None)
    exp_dir = store.sweep_dir(sweep_id)
    plan = compile_sweep(cfg, dataset, str(store.root), sweep_id, str(exp_dir.resolve()))
    mark("plan")
    started_at = datetime.now(timezone.utc)

    dashboard, owned = None, False
    try:
        dashboard, owned = start_ray(cfg, address, verbose)
        mark("ray")
        if dashboard:
            echo(f"Ray dashboard: {dashboard}")
        if warm:
            echo(f"Ray: the local Ray of `orch up` at {address}, {_cluster_line(warm=True)} (orch down stops it)")
        elif address:
            echo(_cluster_line())
        from orchestrator.tune.connect import check_resources

        # A trial no node can run would wait forever: stop (or wait for one) before any starts.
        check_resources(cfg, joined=address is not None and not warm, echo=echo)
        echo(f"Sweep {sweep_id} of {cfg.study}: {plan.n_trials} trials ({cfg.search.algorithm} search), "
             f"{cfg.scheduler.name} scheduler, up to {cfg.scheduler.max_epochs} epochs, {dataset.describe()}")
        if cfg.scheduler.name in schedulers.POPULATION:
            echo(_population_line(cfg, plan.space, plan.n_trials))
        result = _run_tuner(plan, store, sweep_id, resume is not None, verbose, progress_interval_s,
                            joined=address is not None and not warm, dashboard=dashboard)
    finally:
        mark("tuner_end")
        if owned:
            import ray

            ray.shutdown()
            mark("ray_shutdown")
        elif address is not None:
            _forget_trainable()

    result.dashboard_url = dashboard
    result.warm = warm
    result.config_path = _shown_path(cfg.source_file) if cfg.source_file else "CONFIG"
    result.elapsed_s = time.monotonic() - t_start
    if result.finished:
        keep_models(plan, store, result)
        mark("models")
        finish(cfg, store, result, dataset.fingerprint, started_at, reason=reason,
               parent_sweep_id=parent_sweep_id, reference=reference, report=report, summary=summary)
        from orchestrator.tune import tracking

        tracking.after_sweep(cfg, store.root, result, echo)  # the best and its model on the MLflow run
    return result


def _forget_trainable() -> None:
    """Remove the sweep's trainable from a joined cluster's key-value store (Tune does it only at
    the interpreter's exit, after orch has left the cluster): a warm local Ray would keep one per
    sweep for as long as it runs."""
    with contextlib.suppress(Exception):  # (private; a cluster that went away has nothing to keep)
        from ray.tune.registry import _unregister_trainables

        _unregister_trainables()


def _cluster_line(warm: bool = False) -> str:
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = ray.cluster_resources()
    gpus = f", {res['GPU']:g} GPUs" if res.get("GPU") else ""
    if warm:
        return f"{res.get('CPU', 0):g} CPUs{gpus}"
    return f"Ray cluster: {len(nodes)} node{'s' if len(nodes) != 1 else ''}, {res.get('CPU', 0):g} CPUs{gpus}"


def _trainable(cfg: SweepConfig, sweep_id: str, base: Callable[..., Any], per_trial_actors: bool) -> type:
    """Tune's class for ``base`` (a function trainable), whose actors say which sweep they train.

    The dashboard's actor list shows ``orch:<study>:<sweep_id>:<trial_id>``, or
    ``orch:<study>:<sweep_id>`` where one actor trains several trials in turn.
    """
    from orchestrator.tune import ray_adapter

    name = f"orch:{cfg.study}:{sweep_id}"

    class OrchTrial(ray_adapter.function_trainable(base, name)):  # type: ignore[misc]  # (a class made at run time)
        def __repr__(self) -> str:
            trial = getattr(self, "trial_id", None) if per_trial_actors else None
            return f"{name}:{trial}" if trial and trial != "default" else name

    OrchTrial.__name__ = OrchTrial.__qualname__ = "OrchTrial"
    return OrchTrial


def _tune_path(path: Any) -> str:
    """Where Tune keeps a sweep's state, as its ``storage_path`` takes it: an absolute local path
    (a relative one is no URI to pyarrow), or the bucket and key of the store's filesystem."""
    return path.fs_path if fs.is_remote(path) else str(path.resolve())


def _tune_fs(path: Any) -> Any:
    """The store's own pyarrow filesystem for a store in object storage (its options: one request
    per small object), else None (Tune's local one)."""
    return path.fs if fs.is_remote(path) else None


def _run_tuner(plan: SweepPlan, store: Store, sweep_id: str, resuming: bool, verbose: bool,
               progress_interval_s: float | None, joined: bool = False,
               dashboard: str | None = None) -> SweepResult:
    from ray import tune

    from orchestrator.tune import ray_adapter, state_guard, tracking
    from orchestrator.tune.callbacks import Progress, StoreWriter, SweepStatus
    from orchestrator.tune.connect import current_job

    cfg = plan.cfg
    ray_dir = store.ray_dir()
    exp_dir = store.sweep_dir(sweep_id)
    exp_dir.mkdir(parents=True, exist_ok=True)
    key = state_guard.load_key(store.root)
    if not resuming:
        (exp_dir / SWEEP_CONFIG_FILE).write_text(config_mod.to_yaml(cfg))
        # Signed: a resume imports the code it names only if this machine wrote it.
        state_guard.sign(exp_dir, {SWEEP_CONFIG_FILE: exp_dir / SWEEP_CONFIG_FILE}, key, sweep_id)

    reuse = cfg.ray.reuse_actors
    # Resources on the function, so that the actor class (the one the dashboard shows) stays OrchTrial.
    from orchestrator.tune.trial import trial_name, tune_trainable

    data_config = cfg if plan.data is None else None  # data.load_in: trial
    trainable = _trainable(cfg, sweep_id, tune.with_resources(
        tune.with_parameters(tune_trainable, data=plan.data, setup=plan.setup, data_config=data_config),
        {"cpu": cfg.resources.cpu_per_trial, "gpu": cfg.resources.gpu_per_trial},
    ), per_trial_actors=not reuse)
    space, n_trials = plan.space, plan.n_trials
    # Tune lets a custom searcher keep only one trial pending: each finished trial then waits for
    # the next to be created and placed. Keep enough pending to refill every free slot at once
    # (few, so that TPE still learns from the latest results).
    if not _USER_PENDING:
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(max(2, 2 * _trial_slots(cfg)))
    progress = Progress(n_trials, cfg.objective.metric, cfg.objective.mode, progress_interval_s)
    writer = StoreWriter(str(store.root), cfg.study, sweep_id, plan.setup.base, plan.columns, list(space),
                         time_budget_s=cfg.search.time_budget_s, metric=cfg.objective.metric)
    status = SweepStatus(cfg.study, sweep_id, n_trials, cfg.objective.metric, cfg.objective.mode,
                         str(exp_dir / STATUS_FILE), info={"store": str(store.root.resolve()), "dashboard": dashboard,
                                                           "cluster": joined, "job": current_job()})
    # Trackers read each result's epochs before the store writer takes them out; the user's own come last.
    callbacks = [*tracking.trackers(cfg, store.root, sweep_id, space.searched), writer, progress, status,
                 *tracking.user_callbacks(cfg)]
    # Restoring unpickles Tune's files of the store: only those this machine's key signed (see
    # orchestrator/tune/state_guard.py), checked before Tune reads any and again as it reads them.
    if resuming and ray_adapter.restorable(exp_dir):
        _check_tune_state(store, sweep_id, key)
        try:
            tuner = tune.Tuner.restore(_tune_path(exp_dir), trainable, storage_filesystem=_tune_fs(exp_dir),
                                       resume_unfinished=True,
                                       resume_errored=True)  # (a relative path is no URI to pyarrow)
        except (ModuleNotFoundError, AttributeError) as err:
            # Tune's state names orch's classes by module path: those of an older orch are gone.
            if "orchestrator" not in str(err):
                raise
            raise UserError(f"--resume: sweep {sweep_id} was started by an older version of orch and "
                            f"cannot be resumed by this one ({err}); start a new sweep") from None
        # The restored callbacks, scheduler and searcher hold the paths of when the sweep
        # started: the store may have moved since.
        search_alg = ray_adapter.rebind_restored(tuner, callbacks=callbacks,
                                                 scheduler=plan.scheduler.scheduler)
        searchers.relocate(search_alg, exp_dir)
    else:
        search_alg = searchers.create(cfg, plan.search, str(exp_dir))
        tuner = tune.Tuner(
            trainable,
            param_space={},
            tune_config=tune.TuneConfig(
                metric=cfg.objective.metric,
                mode=cfg.objective.mode,
                scheduler=plan.scheduler.scheduler,
                search_alg=search_alg,
                num_samples=n_trials,
                time_budget_s=cfg.search.time_budget_s,
                reuse_actors=reuse,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
            ),
            run_config=tune.RunConfig(
                name=sweep_id,
                storage_path=_tune_path(ray_dir),
                storage_filesystem=_tune_fs(ray_dir),
                verbose=0 if not verbose else 1,
                callbacks=callbacks,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                failure_config=tune.FailureConfig(max_failures=cfg.failure.max_retries),
                log_to_file=not verbose,
            ),
        )
        ray_adapter.sign_tuner_state(exp_dir, key)
    t_fit = time.monotonic()
    mark("tuner_start")
    try:
        with ray_adapter.guarded(exp_dir, key, exempt=_own_files(),
                                 context=f"--resume: sweep {sweep_id}"):
            grid = tuner.fit()
    except ray_adapter.StateRejected as rejected:
        raise rejected.error from None
    writer.flush()
    progress.show(final=True)
    trials = store.trials(cfg.study, sweep_id=sweep_id)
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    finished = len(trials) >= n_trials and grid.num_terminated + grid.num_errors >= len(grid)
    budget = cfg.search.time_budget_s
    if not finished and budget and time.monotonic() - t_fit >= budget:
        finished = budget_hit = True  # the time budget ended it (a Ctrl-C comes before): its trials are the result
    else:
        budget_hit = False
    if finished and cfg.scheduler.name in schedulers.POPULATION:
        from orchestrator.tune.pbt import cleanup

        cleanup(exp_dir)  # the checkpoint copies its exploits restored from
    searched = space.searched
    result = SweepResult(cfg.study, sweep_id, store, finished, metric=cfg.objective.metric, budget_hit=budget_hit,
                         counts=counts, searched=searched, space_ranges=space.ranges(),
                         stages=searchers.read_stages(exp_dir) if cfg.search.stages > 1 else None)
    result.collapsed = trial_rules.collapsed_count(trials)
    best = trial_rules.best(trials, f"best_{cfg.objective.metric}", cfg.objective.mode)
    if best is not None:
        result.best_trial_id = best["trial_id"]
        result.best_value = float(best[f"best_{cfg.objective.metric}"])
        result.best_config = trial_rules.decode_config(best)
        result.best_metrics = {c[len("best_"):]: float(best[c]) for c in best.index
                               if c.startswith("best_") and c[len("best_"):] in METRIC_DIRECTIONS
                               and not trial_rules.is_missing(best[c])}
    elif finished and result.collapsed:
        result.all_collapsed = True
    elif finished and len(trials):
        errors = trials[trials["status"] == TrialStatus.ERROR]["stop_reason"].dropna()
        why = f": {errors.iloc[0]}" if len(errors) else ""
        if len(errors) and errors.str.match(r"trial \S+: ").all():
            # Every trial broke the trial contract the same way: the training function is wrong (exit 2).
            raise UserError(f"trainable: {errors.iloc[0]}")
        raise SweepFailed(f"sweep {sweep_id}: no trial produced a usable result{why}")
    return result


def _population_line(cfg: SweepConfig, space: Space, population: int) -> str:
    from orchestrator.tune.pbt import mutable_knobs

    s = cfg.scheduler
    mutable = mutable_knobs(space)
    fixed = [k for k in space.searched if k not in mutable]
    what = (f"every {s.perturbation_interval} epochs the bottom {s.quantile_fraction:.0%} copy the top "
            f"{s.quantile_fraction:.0%} and perturb {', '.join(mutable) or '(no knob)'}"
            + (f"; {', '.join(fixed)} fixed per trial" if fixed else ""))
    if population <= 4:
        return f"Babysitting a population of {population} with {s.name}: {what}."
    return f"Population of {population} with {s.name}: {what}."


_USER_PENDING = "TUNE_MAX_PENDING_TRIALS_PG" in os.environ  # a user's own setting wins


def _trial_slots(cfg: SweepConfig) -> int:
    """How many trials the cluster can run at once."""
    import ray

    res = ray.cluster_resources()
    slots = res.get("CPU", 1.0) / cfg.resources.cpu_per_trial
    if cfg.resources.gpu_per_trial:
        slots = min(slots, res.get("GPU", 0.0) / cfg.resources.gpu_per_trial)
    return max(1, int(slots))


def _shown_path(path: str) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def keep_models(plan: SweepPlan, store: Store, result: SweepResult) -> None:
    """The artefacts of the sweep's best ``store.keep_models`` trials (a failure is a warning: the
    results are in the store either way)."""
    from orchestrator.tune import artefacts

    cfg = plan.cfg
    trials = store.trials(cfg.study, sweep_id=result.sweep_id)
    try:
        warnings_: list[str] = []
        result.models = artefacts.keep_best(cfg, store, result.sweep_id, trials, plan.data,
                                            store.sweep_dir(result.sweep_id), warn=warnings_.append)
        if warnings_:
            result.models_warning = warnings_[0]
    except Exception as err:  # noqa: BLE001
        why = " ".join(str(err).split())[:300]
        result.models_warning = f"orch: warning: no model kept: {type(err).__name__}: {why}"


def finish(cfg: SweepConfig, store: Store, result: SweepResult, data_fingerprint: str,
           started_at: datetime, *, reason: str = "manual", parent_sweep_id: str | None = None,
           reference: float | None = None, report: bool = False,
           summary: Callable[[SweepResult], None] | None = None) -> None:
    """Everything that follows a finished sweep, for ``orch sweep`` and ``orch retune`` alike: the
    sweeps row, promotion (when its best beats ``reference``, else the study's current best), the
    study's best file, ``summary`` (what the user reads first) and, with ``report``, the report (a
    report that fails is a warning: the results are in the store either way)."""
    from orchestrator.report import page as report_mod
    from orchestrator.store import queries
    from orchestrator.tune import state_guard

    sweep_id = result.sweep_id
    # The config, signed with this machine's key: a re-tune imports the code it names only then.
    config_yaml = config_mod.to_yaml(cfg)
    config_sig = state_guard.text_digest(state_guard.load_key(store.root), sweep_id, "config_yaml", config_yaml)

    current = queries.current_best(store.root, cfg.study)
    if reference is None and current is not None:
        reference = float(current["best_value"])
    # Promoted only on a real improvement (a re-run of the same config that matches the best to the
    # last bit of float noise is not one).
    better = trial_rules.better(result.best_value, reference, cfg.objective.mode, rel_margin=1e-9)
    result.promoted = bool(better)
    result.reference = reference
    store.append("sweeps", cfg.study, [{
        "sweep_id": sweep_id,
        "reason": reason,
        "parent_sweep_id": parent_sweep_id,
        "scheduler": cfg.scheduler.name,
        "searcher": cfg.search.algorithm,
        "config_yaml": config_yaml,
        "config_sig": config_sig,
        "config_path": cfg.source_file,
        "started_at": started_at,
        "ended_at": datetime.now(timezone.utc),
        "num_trials": sum(result.counts.values()),
        "best_trial_id": result.best_trial_id,
        "metric": cfg.objective.metric,
        "mode": cfg.objective.mode,
        "best_value": result.best_value,
        "promoted": bool(better),
        "data_fingerprint": data_fingerprint,
        "code_version": code_version(cfg),
        "search_space": json.dumps(result.space_ranges, default=str),
        "stages": json.dumps(result.stages, default=str) if result.stages else None,
        "orch_version": __version__,
    }], sweep_id)
    if better:
        queries.write_best_file(store.root, cfg.study)
        from orchestrator.tune import artefacts

        # The model with its config; a best that kept no model promotes its config alone (a reader of
        # best/<study>/ never gets an older sweep's model for a newer config).
        model = result.models[0] if result.models and result.models[0].name == result.best_trial_id else None
        try:
            artefacts.promote(store, cfg.study, model, queries.best_yaml(store.root, cfg.study))
        except Exception as err:  # noqa: BLE001 - the sweep's results are in the store either way
            why = " ".join(str(err).split())[:300]
            result.models_warning = f"orch: warning: the study's model was not promoted: {type(err).__name__}: {why}"
    if summary is not None:
        summary(result)
    if report:
        try:
            result.report = report_mod.build(store.root, cfg.study, sweep_id).html
        except Exception as err:  # noqa: BLE001
            result.report_warning = (f"orch: warning: no report: {' '.join(str(err).split())[:300]} "
                                     f"(orch report {cfg.study} --sweep {sweep_id} retries)")


def announce_report(result: SweepResult, echo: Callable[[str], None] = print) -> None:
    """Say where the sweep's report went (or why there is none)."""
    if result.report is not None:
        echo(f"Report: {result.report}")
    elif result.report_warning:
        echo(result.report_warning)


def print_summary(result: SweepResult, echo: Callable[[str], None] = print) -> None:
    import yaml

    counts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(result.counts.items()))
    echo("")
    if not result.finished:
        echo(f"Sweep {result.sweep_id} interrupted after {result.elapsed_s:.0f}s ({counts or 'no trials finished'}).")
        echo(f"Resume it with: orch sweep {result.config_path} --resume {result.sweep_id}")
    else:
        why = " (its time budget ran out)" if result.budget_hit else ""
        echo(f"Sweep {result.sweep_id} finished in {result.elapsed_s:.0f}s{why}: {counts}.")
    if result.all_collapsed:
        echo(f"No best trial: all {result.collapsed} trials that finished collapsed to a constant output "
             f"(one class for nearly every input, or predictions with almost no spread). "
             f"Check the data and the model with: orch check {result.config_path}")
    elif result.collapsed:
        echo(f"{result.collapsed} trial{'s' if result.collapsed != 1 else ''} collapsed to a constant output "
             "(left out of the best).")
    if result.best_trial_id:
        others = ", ".join(f"{k} {v:.4g}" for k, v in sorted(result.best_metrics.items()) if k != result.metric)
        echo(f"Best trial {result.best_trial_id}: {result.metric} {result.best_value:.6g}"
             + (f" (best {others})" if others else ""))
        shown = {k: result.best_config[k] for k in result.searched if k in result.best_config}
        if shown:
            echo(yaml.safe_dump(shown, sort_keys=True).rstrip())
        echo(f"Full config: orch best {result.study}")
    if result.models:
        echo(f"Model: {_shown_path(str(result.models[0]))}  (orch export {result.study} --out DIR; "
             f"orch predict {result.study} DATA.csv)")
    if result.models_warning:
        echo(result.models_warning)
    echo(f"Results: {result.store.root}  (orch results --study {result.study})")
    if result.dashboard_url and result.warm:
        echo(f"Ray dashboard: {result.dashboard_url}  (the local Ray of `orch up` stays up; orch down stops it)")
    elif result.dashboard_url:
        echo(f"Ray dashboard was at {result.dashboard_url}")
    sys.stdout.flush()
