"""Experiment tracking: a sweep in MLflow and in TensorBoard, written by the driver.

Ray Tune callbacks that run in the driver beside the store writer (orchestrator/tune/callbacks.py)
and read what it reads: every epoch a trial reports (its ``history``), the trial's sampled
hyperparameters and how it ended. Trials log nothing themselves: the driver owns every write.

- :class:`MlflowTracker` (``tracking.mlflow``): one parent run per sweep, named by the sweep id,
  and one nested run per trial (every epoch's numbers at ``step=epoch``; FINISHED, KILLED when
  stopped early, FAILED when diverged or in error). A resumed sweep reuses its parent run (found
  by its ``sweep_id`` tag) and its trials' runs. :func:`after_sweep` adds the best trial and its
  model artefact to the parent once the sweep has kept it.
- :class:`TensorboardTracker` (``tracking.tensorboard``): each trial's event files, scalars by
  epoch and the hparams plugin's data (its hyperparameters and best metrics), so that
  TensorBoard's HParams tab shows the sweep.

Tracking never fails a sweep: a tracker's first error prints one warning line and turns it off for
the rest of the sweep. The user's own callbacks (``callbacks:``) are :func:`user_callbacks`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from orchestrator.config import schema
from orchestrator.config.schema import SweepConfig
from orchestrator.errors import ConfigError
from orchestrator.names import check_name

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

MLFLOW_DIR = "mlruns"  # <store>/mlruns/: the default MLflow database and its artefacts
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "artifacts"
TENSORBOARD_DIR = "tensorboard"  # <store>/tensorboard/<study>/<sweep_id>/<trial_id>/
# History columns that are no metric of an epoch: its step, its PBT generation, its wall clock.
NOT_METRICS = frozenset({"epoch", "generation", "timestamp"})
# A trial's status in the store -> its MLflow run's status.
RUN_STATUS = {"completed": "FINISHED", "stopped_early": "KILLED", "diverged": "FAILED", "error": "FAILED"}
TEXT_LIMIT = 500  # a param's or tag's value (MLflow's own limits are larger)
BATCH = 1000  # MLflow takes at most 1000 metrics, 100 params and 100 tags in one log_batch
# (tracker, sweep id) of the trackers an error turned off in this process: after_sweep leaves them
# alone (their warning was printed).
_STOPPED: set[tuple[str, str]] = set()


def warn(message: str) -> None:
    print(f"orch: warning: {message}", file=sys.stderr, flush=True)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"[:300] if text else type(err).__name__


def _text(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        value = json.dumps(value, default=str, sort_keys=True)
    return str(value)[:TEXT_LIMIT]


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            import numpy as np

            if isinstance(value, np.number) and not isinstance(value, np.bool_):
                return float(value)
        except ImportError:  # pragma: no cover - numpy comes with torch
            pass
        return None
    return float(value)


def _sampled(trial: Trial) -> dict[str, Any]:
    """The trial's sampled hyperparameters (orch's own ``_`` keys left out)."""
    return {str(k): v for k, v in (trial.config or {}).items() if not str(k).startswith("_")}


def _epoch_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in (result.get("history") or ()) if isinstance(r, dict) and "epoch" in r]


def _row_metrics(row: dict[str, Any]) -> Iterable[tuple[str, float]]:
    for key, value in row.items():
        number = _number(value)
        if number is not None and key not in NOT_METRICS:
            yield str(key), number


def _best_metrics(trial: Trial) -> dict[str, float]:
    """The trial's best value of each metric (finite ones), from its last result."""
    best = (trial.last_result or {}).get("best") or {}
    return {str(k): float(v) for k, v in best.items() if _number(v) is not None and math.isfinite(float(v))}


class _Tracker(Callback):
    """A tracker: Tune's hooks, each guarded so that the first error turns it off with one warning."""

    name = ""
    settings: tuple[str, ...] = ("budget_s",)  # the attributes pickled with it (Tune pickles its callbacks)

    def __init__(self, budget_s: float | None = None) -> None:
        self.budget_s = budget_s  # search.time_budget_s: trials it stops are results, not an interruption
        self._reset()

    def _reset(self) -> None:
        self._off = False
        self._t0 = time.monotonic()

    def _budget_hit(self) -> bool:
        return bool(self.budget_s) and time.monotonic() - self._t0 >= (self.budget_s or 0)

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._off:
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (the libraries' deprecation notices)
                return fn(*args)
        except Exception as err:  # noqa: BLE001 - tracking must never fail a sweep
            self._off = True
            _STOPPED.add((self.name, str(getattr(self, "sweep_id", ""))))
            warn(f"{self.name} tracking stopped: {_one_line(err)} (the sweep goes on)")
            with contextlib.suppress(Exception):
                self._close()
            return None

    def _close(self) -> None:
        """Release what is open after an error (nothing by default)."""

    # -- Tune's hooks ------------------------------------------------------------------------------
    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        self._t0 = time.monotonic()
        self._guard(self._setup)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        rows = _epoch_rows(result)
        if rows:
            self._guard(self._result, trial, rows)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._guard(self._end, trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._guard(self._end, trial)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._guard(self._experiment_end, trials)

    def _setup(self) -> None:
        raise NotImplementedError

    def _result(self, trial: Trial, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def _end(self, trial: Trial) -> None:
        raise NotImplementedError

    def _experiment_end(self, trials: list[Trial]) -> None:
        raise NotImplementedError


# -- MLflow ------------------------------------------------------------------------------------------


def _local_store(store_root: str | os.PathLike[str]) -> bool:
    return "://" not in str(store_root)


def mlflow_target(settings: schema.MlflowConfig, store_root: str | os.PathLike[str]
                  ) -> tuple[str | None, str | None]:
    """(tracking URI, artefact location of a new experiment) of ``tracking.mlflow``.

    The default on a local store: a SQLite database in ``<store>/mlruns/`` and the artefacts beside
    it (MLflow 3 keeps its file store for existing data only). A URI the user gives is MLflow's
    to read; a plain path or ``file:`` URI is a file store, which the user asked for by name.
    """
    if settings.uri:
        uri = settings.uri
        if "://" not in uri and not uri.startswith("file:"):
            uri = str(Path(uri).expanduser().resolve())
        if "://" not in uri or uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return uri, None
    if not _local_store(store_root):
        return None, None  # MLflow's own default ($MLFLOW_TRACKING_URI, ...)
    base = Path(store_root).resolve() / MLFLOW_DIR
    return f"sqlite:///{base / MLFLOW_DB}", (base / MLFLOW_ARTIFACTS).as_uri()


def _client(uri: str | None) -> Any:
    import logging

    for name in ("mlflow", "alembic"):  # (its database set-up logs at INFO on stderr)
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    if uri and uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str, artifact_location: str | None, create: bool = True) -> str | None:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None and create:
        try:
            return str(client.create_experiment(name, artifact_location=artifact_location))
        except MlflowException:  # another sweep created it meanwhile
            experiment = client.get_experiment_by_name(name)
    return None if experiment is None else str(experiment.experiment_id)


def _search(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    """Every run of the experiment that ``filter_string`` selects (page by page)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000,
                                  page_token=token)
        runs.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return runs


def _parent_run(client: Any, experiment_id: str, sweep_id: str) -> Any:
    """The sweep's parent run, or None (the sweep id is a checked name: safe inside quotes)."""
    runs = _search(client, experiment_id, f"tags.sweep_id = '{sweep_id}' and attributes.run_name = '{sweep_id}'")
    runs = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return min(runs, key=lambda r: r.info.start_time) if runs else None


def fixed_params(cfg: SweepConfig, searched: Iterable[str]) -> dict[str, str]:
    """The sweep's fixed config, flattened to ``section.key`` -> text: every setting that is not a
    searched knob (a trial's run has those)."""
    data = dataclasses.asdict(cfg)
    for key in ("base", "source_file", "model_signature", "search_space", "project", "tracking", "callbacks",
                "ray", "retune"):
        data.pop(key, None)
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[re.sub(r"[^\w\-. /]", "_", prefix)[:250]] = _text(value)

    walk("", data)
    for knob in searched:
        for section in ("train", "model", "data", "params"):
            out.pop(f"{section}.{knob}", None)
    return out


class MlflowTracker(_Tracker):
    """A sweep as MLflow runs: one parent run, and one nested run per trial (see the module's doc)."""

    name = "mlflow"
    settings = ("uri", "artifact_location", "experiment", "sweep_id", "tags", "params", "budget_s")

    def __init__(self, uri: str | None, artifact_location: str | None, experiment: str, sweep_id: str,
                 tags: dict[str, str], params: dict[str, str], budget_s: float | None = None) -> None:
        self.uri, self.artifact_location, self.experiment = uri, artifact_location, experiment
        self.sweep_id, self.tags, self.params = sweep_id, dict(tags), dict(params)
        super().__init__(budget_s)

    def _reset(self) -> None:
        super()._reset()
        self._client: Any = None
        self._experiment_id = ""
        self._parent: str | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._steps: dict[str, set[tuple[int, int]]] = {}  # trial id -> (generation, epoch) logged this run
        self._earlier: dict[str, set[int]] = {}  # trial id -> epochs its run holds from before a resume
        self._resumed: dict[str, Any] = {}  # trial id -> its run from before a resume
        self._ended: set[str] = set()

    def _close(self) -> None:
        self._client = None

    def _setup(self) -> None:
        from mlflow.entities import Param

        client = _client(self.uri)
        experiment_id = _experiment_id(client, self.experiment, self.artifact_location)
        assert experiment_id is not None
        self._experiment_id = experiment_id
        parent = _parent_run(client, experiment_id, self.sweep_id)
        if parent is None:
            run = client.create_run(experiment_id, run_name=self.sweep_id, tags=self.tags)
            self._parent = run.info.run_id
            params = [Param(k, v) for k, v in self.params.items()]
            for i in range(0, len(params), 100):
                client.log_batch(self._parent, params=params[i:i + 100])
        else:  # a resumed sweep: its run, and its trials' runs
            self._parent = parent.info.run_id
            if parent.info.status != "RUNNING":
                client.update_run(self._parent, status="RUNNING")
            for run in _search(client, experiment_id, f"tags.sweep_id = '{self.sweep_id}'"):
                trial_id = run.data.tags.get("trial_id")
                if trial_id and run.data.tags.get("mlflow.parentRunId") == self._parent:
                    self._runs[trial_id] = run.info.run_id
                    self._resumed[trial_id] = run
        self._client = client

    def _run(self, trial: Trial) -> str:
        """The trial's run: made at its first result (or end), or its run from before a resume."""
        client, trial_id = self._client, str(trial.trial_id)
        run_id = self._runs.get(trial_id)
        if run_id is None:
            from mlflow.entities import Param

            tags = {"mlflow.parentRunId": self._parent, "study": self.tags.get("study", ""),
                    "sweep_id": self.sweep_id, "trial_id": trial_id}
            run = client.create_run(self._experiment_id, run_name=trial_id, tags=tags)
            run_id = self._runs[trial_id] = run.info.run_id
            params = [Param(k[:250], _text(v)) for k, v in _sampled(trial).items()]
            for i in range(0, len(params), 100):
                client.log_batch(run_id, params=params[i:i + 100])
        elif trial_id in self._resumed:  # it runs again after a resume: its epochs so far are in its run
            run = self._resumed.pop(trial_id)
            metric = self.tags.get("metric", "")
            keys = [metric] if metric in run.data.metrics else [k for k in run.data.metrics
                                                                if not k.startswith("best_")]
            history = client.get_metric_history(run_id, keys[0]) if keys else []
            self._earlier[trial_id] = {int(m.step) for m in history}
            if run.info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
        return run_id

    def _result(self, trial: Trial, rows: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        if self._client is None:
            return
        run_id = self._run(trial)
        trial_id = str(trial.trial_id)
        seen = self._steps.setdefault(trial_id, set())
        earlier = self._earlier.get(trial_id, set())
        metrics: list[Metric] = []
        for row in rows:
            epoch = int(row["epoch"])
            key = (int(row.get("generation", 0) or 0), epoch)
            if key in seen or epoch in earlier:
                continue
            seen.add(key)
            stamp = int(float(row.get("timestamp") or time.time()) * 1000)
            metrics.extend(Metric(k, v, stamp, epoch) for k, v in _row_metrics(row))
        for i in range(0, len(metrics), BATCH):
            self._client.log_batch(run_id, metrics=metrics[i:i + BATCH])

    def _end(self, trial: Trial, status: str | None = None, reason: str | None = None) -> None:
        from mlflow.entities import Metric, RunTag

        from orchestrator.tune.callbacks import trial_status

        trial_id = str(trial.trial_id)
        if self._client is None or trial_id in self._ended:
            return
        if status is None:
            status, reason = trial_status(trial)
        run_id = self._run(trial)
        self._ended.add(trial_id)
        last = trial.last_result or {}
        step = int(last.get("best_epoch") or last.get("epoch") or 0)
        now = int(time.time() * 1000)
        metrics = [Metric(f"best_{k}", v, now, step) for k, v in _best_metrics(trial).items()]
        tags = [RunTag("status", status), RunTag("stop_reason", _text(reason or ""))]
        self._client.log_batch(run_id, metrics=metrics, tags=tags)
        self._client.set_terminated(run_id, RUN_STATUS.get(status, "FAILED"))

    def _experiment_end(self, trials: list[Trial]) -> None:
        from orchestrator.tune.callbacks import trial_status

        if self._client is None or self._parent is None:
            return
        budget_hit = self._budget_hit()
        statuses = []
        for trial in trials:
            trial_id = str(trial.trial_id)
            if trial.status in ("TERMINATED", "ERROR"):
                statuses.append(trial_status(trial)[0])
                if trial_id in self._runs and trial_id not in self._resumed:  # (not one that ended before a resume)
                    self._end(trial)
            elif trial_id in self._runs and trial_id not in self._resumed:  # still running: the time budget, or Ctrl-C
                last = trial.last_result or {}
                done = bool(last.get("final"))
                reason = last.get("stop_reason") if done else ("time budget" if budget_hit else "sweep interrupted")
                self._end(trial, last.get("trial_status") if done else "stopped_early", reason)
        if len(statuses) < len(trials) and not budget_hit:
            status = "KILLED"  # interrupted: --resume continues it (and this run)
        elif statuses and all(s in ("error", "diverged") for s in statuses):
            status = "FAILED"
        else:
            status = "FINISHED"
        self._client.set_terminated(self._parent, status)


# -- TensorBoard ----------------------------------------------------------------------------------------


def tensorboard_dir(settings: schema.TensorboardConfig, store_root: str | os.PathLike[str], study: str,
                    sweep_id: str) -> Path:
    """Where a sweep's trials write their event files: ``<dir>/<study>/<sweep_id>/`` (default dir
    ``<store>/tensorboard``, or ``tensorboard/`` in the working directory when the store is in
    object storage), one directory per trial below it."""
    if settings.dir:
        base = Path(settings.dir).expanduser()
    else:
        base = (Path(store_root) if _local_store(store_root) else Path.cwd()) / TENSORBOARD_DIR
    return base.resolve() / check_name(study, "study") / check_name(sweep_id, "sweep id")


def _hparam(value: Any) -> Any:
    """A value TensorBoard's hparams plugin takes: a number, a string or a bool."""
    if isinstance(value, (bool, str)):
        return value
    number = _number(value)
    return number if number is not None else _text(value)


def _session_end(status: str) -> Any:
    """The hparams plugin's end of a session (a trial), with its status (torch's helper says
    success for every one)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    failed = status in ("diverged", "error")
    info = SessionEndInfo(status=Status.Value("STATUS_FAILURE" if failed else "STATUS_SUCCESS"),
                          end_time_secs=time.time())
    content = HParamsPluginData(session_end_info=info, version=metadata.PLUGIN_DATA_VERSION)
    plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG,
                                        metadata=SummaryMetadata(plugin_data=plugin))])


class TensorboardTracker(_Tracker):
    """Each trial's event files (``<root>/<trial_id>/``): its epochs' scalars, and as it ends the
    hparams plugin's session of the trial: its sampled hyperparameters and status, its best metrics
    (``hparam/best_<metric>``) and its end (success, or failure when diverged or in error).

    No experiment summary is written: TensorBoard then builds the HParams table from every
    session it finds (the union of their hyperparameters, every scalar as a metric), so that
    conditional knobs, failed trials and several sweeps under one ``--logdir`` all show.
    """

    name = "tensorboard"
    settings = ("root", "budget_s")

    def __init__(self, root: str, budget_s: float | None = None) -> None:
        self.root = root
        super().__init__(budget_s)

    def _reset(self) -> None:
        super()._reset()
        self._writers: dict[str, Any] = {}
        self._steps: dict[str, set[tuple[int, int]]] = {}
        self._ended: set[str] = set()
        self._writer_class: Any = None

    def _close(self) -> None:
        writers, self._writers = self._writers, {}
        for w in writers.values():
            with contextlib.suppress(Exception):
                w.close()

    def _setup(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer_class = SummaryWriter

    def _writer(self, trial: Trial, first_epoch: int | None = None) -> Any:
        """The trial's writer. A new one, on a first epoch, starts with TensorBoard's mark of a
        (re)start at that epoch: after a resume, readers drop the epochs from there on that the
        trial had written before, which it now reports again."""
        trial_id = str(trial.trial_id)
        w = self._writers.get(trial_id)
        if w is None:
            from tensorboard.compat.proto.event_pb2 import Event, SessionLog

            directory = Path(self.root) / check_name(trial_id, "trial id")
            w = self._writers[trial_id] = self._writer_class(log_dir=str(directory), flush_secs=30)
            if first_epoch is not None:
                w.file_writer.add_event(Event(step=first_epoch, wall_time=time.time(),
                                              session_log=SessionLog(status=SessionLog.START)))
        return w

    def _result(self, trial: Trial, rows: list[dict[str, Any]]) -> None:
        if self._writer_class is None:
            return
        w = self._writer(trial, int(rows[0]["epoch"]))
        seen = self._steps.setdefault(str(trial.trial_id), set())
        for row in rows:
            epoch = int(row["epoch"])
            key = (int(row.get("generation", 0) or 0), epoch)
            if key in seen:
                continue
            seen.add(key)
            walltime = _number(row.get("timestamp"))
            for k, v in _row_metrics(row):
                w.add_scalar(k, v, global_step=epoch, walltime=walltime)
        w.flush()

    def _end(self, trial: Trial, status: str | None = None) -> None:
        from torch.utils.tensorboard.summary import hparams

        from orchestrator.tune.callbacks import trial_status

        trial_id = str(trial.trial_id)
        if self._writer_class is None or trial_id in self._ended:
            return
        self._ended.add(trial_id)
        status = status or trial_status(trial)[0]
        last = trial.last_result or {}
        step = int(last.get("epoch") or 0)
        w = self._writer(trial)
        values = {k: _hparam(v) for k, v in _sampled(trial).items()}
        values["status"] = status  # (completed, stopped_early, diverged, error: a column to filter by)
        w.file_writer.add_summary(hparams(values, {})[1], step)  # the session's start (no experiment summary)
        for k, v in _best_metrics(trial).items():
            w.add_scalar(f"hparam/best_{k}", v, global_step=step)
        w.file_writer.add_summary(_session_end(status), step)
        w.close()
        self._writers.pop(trial_id, None)

    def _experiment_end(self, trials: list[Trial]) -> None:
        budget_hit = self._budget_hit()
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR"):
                if str(trial.trial_id) in self._writers:
                    self._end(trial)
            elif str(trial.trial_id) in self._writers and budget_hit:  # stopped by the time budget: a result
                last = trial.last_result or {}
                self._end(trial, last.get("trial_status") if last.get("final") else "stopped_early")
        # (A trial a Ctrl-C stopped gets its session when a resume finishes it: TensorBoard keeps
        # the first one it reads.)
        self._close()


# -- wiring (orchestrator/tune/driver.py) --------------------------------------------------------------------


def trackers(cfg: SweepConfig, store_root: str | os.PathLike[str], sweep_id: str,
             searched: Iterable[str] = ()) -> list[Callback]:
    """The trackers ``cfg.tracking`` asks for, for the sweep ``sweep_id`` of the store at
    ``store_root``: they go before the store writer in Tune's callbacks (they read each result's
    epochs before the writer takes them out)."""
    out: list[Callback] = []
    searched = tuple(searched)
    mlflow = schema.tracker(cfg, "mlflow")
    if mlflow is not None:
        uri, artifacts = mlflow_target(mlflow, store_root)
        tags = {"study": cfg.study, "sweep_id": sweep_id, "scheduler": cfg.scheduler.name,
                "searcher": cfg.search.algorithm, "metric": cfg.objective.metric, "mode": cfg.objective.mode}
        out.append(MlflowTracker(uri, artifacts, mlflow.experiment or cfg.study, sweep_id, tags,
                                 fixed_params(cfg, searched), cfg.search.time_budget_s))
    tensorboard = schema.tracker(cfg, "tensorboard")
    if tensorboard is not None:
        out.append(TensorboardTracker(str(tensorboard_dir(tensorboard, store_root, cfg.study, sweep_id)),
                                      cfg.search.time_budget_s))
    return out


def user_callbacks(cfg: SweepConfig) -> list[Callback]:
    """The user's own callbacks (``callbacks:``), each instantiated with no arguments.

    Raises:
        ConfigError: naming ``callbacks[i]``: it does not import, is not a ray.tune.Callback
            subclass, or its constructor raised.
    """
    out = []
    for i, cls in enumerate(schema.callback_classes(cfg)):
        try:
            out.append(cls())
        except Exception as err:  # noqa: BLE001 - the user's constructor
            raise ConfigError(f"callbacks[{i}]: {cls.__name__}() raised {_one_line(err)} "
                              f"(got {cfg.callbacks[i]!r})") from None
    return out


def after_sweep(cfg: SweepConfig, store_root: str | os.PathLike[str], result: Any,
                echo: Callable[[str], None] = print) -> None:
    """Once a sweep finished and kept its models: its best trial and value, and the best trial's
    model artefact, on its MLflow parent run; where to look. A failure is one warning line.

    ``result``: the driver's SweepResult (``sweep_id``, ``metric``, ``best_trial_id``,
    ``best_value``, ``promoted``, ``models``; the driver imports this module, not the reverse).
    """
    mlflow = schema.tracker(cfg, "mlflow")
    if mlflow is not None and ("mlflow", result.sweep_id) not in _STOPPED:
        uri, artifacts = mlflow_target(mlflow, store_root)
        experiment = mlflow.experiment or cfg.study
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _log_best(uri, artifacts, experiment, result)
            if uri is None:
                where = " (MLflow's default tracking URI)"
            elif uri.startswith(("http://", "https://", "databricks")):
                where = f" at {uri}"
            else:
                where = f" (mlflow ui --backend-store-uri {uri})"
            echo(f"MLflow: run {result.sweep_id} of experiment {experiment!r}{where}")
        except Exception as err:  # noqa: BLE001 - tracking must never fail a sweep
            warn(f"mlflow tracking: the sweep's best was not logged: {_one_line(err)}")
    tensorboard = schema.tracker(cfg, "tensorboard")
    if tensorboard is not None:
        directory = tensorboard_dir(tensorboard, store_root, cfg.study, result.sweep_id)
        if directory.is_dir():
            echo(f"TensorBoard: tensorboard --logdir {directory}")


def _log_best(uri: str | None, artifacts: str | None, experiment: str, result: Any) -> None:
    from mlflow.entities import Metric, RunTag

    client = _client(uri)
    experiment_id = _experiment_id(client, experiment, artifacts, create=False)
    parent = _parent_run(client, experiment_id, result.sweep_id) if experiment_id else None
    if parent is None:
        raise LookupError(f"no run of sweep {result.sweep_id} in experiment {experiment!r}")
    run_id = parent.info.run_id
    metrics, tags = [], [RunTag("promoted", str(bool(result.promoted)).lower())]
    if result.best_trial_id and result.best_value is not None:
        tags.append(RunTag("best_trial_id", result.best_trial_id))
        metrics.append(Metric(f"best_{result.metric}", float(result.best_value), int(time.time() * 1000), 0))
    client.log_batch(run_id, metrics=metrics, tags=tags)
    model = result.models[0] if result.models else None
    if isinstance(model, Path) and model.name == result.best_trial_id and model.is_dir():  # (a local store's)
        client.log_artifacts(run_id, str(model), artifact_path="model")
    client.set_terminated(run_id, "FINISHED")
