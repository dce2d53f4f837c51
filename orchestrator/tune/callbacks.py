"""Driver-side Tune callbacks: the store writer and the progress line.

Trials report; the driver writes. ``StoreWriter`` turns Tune results into store rows and writes
them in batches (on a timer, at every experiment checkpoint, and at the end). ``Progress`` prints
one line a person wants to read instead of Ray's tables.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from ray.tune import Callback

from orchestrator.store import trials as trial_rules
from orchestrator.store.tables import Store
from orchestrator.store.trials import TrialStatus
from orchestrator.train.metrics import METRIC_DIRECTIONS
from orchestrator.tune.searchers import STAGE_KEY

if TYPE_CHECKING:
    from ray.tune.experiment import Trial
    from ray.tune.stopper import Stopper

# Columns every metrics row has (null where they do not apply), so that every file of a sweep has
# the same schema and a reader that takes the first file's schema (pandas) sees them all.
METRIC_ROW = {"generation": 0, "resumed_val_loss": None}
METRIC_TYPES = {"generation": pa.int64(), "epoch": pa.int64(), "batch_size": pa.int64(),
                "resumed_val_loss": pa.float64(), "lr": pa.float64()}
FLUSH_INTERVAL_S = float(os.environ.get("ORCH_STORE_FLUSH_S", "10"))  # most seconds a row waits in the driver
FLUSH_ROWS = 5000
# What a finished trial keeps of its last result in the driver, where Tune holds every trial to the
# end of the sweep and writes each into every experiment snapshot: what the progress line, the status
# file and a resumed sweep read back (with the objective's value). The rest is in the store.
KEPT_RESULT = ("final", "trial_status", "stop_reason", "best", "best_epoch", "epoch", "collapsed", "done",
               "training_iteration", "time_total_s", "trial_id")


def trial_status(trial: Trial) -> tuple[str, str]:
    """(status, reason) of a finished trial, from its last result and Tune's status."""
    last = trial.last_result or {}
    if trial.status == "ERROR":
        err = getattr(trial, "error_msg", None) or ""
        if not err:  # Tune keeps the traceback in the trial's error file
            try:
                err = Path(trial.error_file).read_text() if trial.error_file else ""
            except (OSError, TypeError):
                err = ""
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        return TrialStatus.ERROR.value, lines[-1][:500] if lines else "trial raised an error"
    if last.get("final"):
        return last.get("trial_status", TrialStatus.COMPLETED.value), last.get("stop_reason", "")
    return TrialStatus.STOPPED_EARLY.value, "scheduler"


class StoreWriter(Callback):
    """Writes every epoch (metrics) and every finished trial (trials) of one sweep to the store.

    Once a result's epochs are buffered for the store, its ``history`` is taken out of it (Tune
    lets callbacks change a result before it keeps it), and once a trial's row is, the trial keeps
    only :data:`KEPT_RESULT` of its results: the driver's memory and Tune's experiment snapshots
    then stay the same size per trial however long the sweep runs.
    """

    def __init__(self, store_root: str, study: str, sweep_id: str, base: dict[str, Any],
                 config_types: dict[str, pa.DataType], knobs: list[str] | tuple[str, ...] = (),
                 flush_interval_s: float = FLUSH_INTERVAL_S, time_budget_s: float | None = None,
                 metric: str | None = None) -> None:
        self.time_budget_s = time_budget_s
        self.metric = metric  # the objective: a finished trial keeps its value
        self._t_setup: float | None = None
        self.store_root = store_root
        self.study = study
        self.sweep_id = sweep_id
        self.base = base
        self.knobs = tuple(knobs)  # the space's knobs: one a trial does not carry is stored as null
        self.config_types = config_types
        self.flush_interval_s = flush_interval_s
        self._reset()

    def _reset(self) -> None:
        self._metrics: list[dict[str, Any]] = []
        self._trials: list[dict[str, Any]] = []
        self._seen_metrics: set[tuple] = set()  # (sweep, trial, generation, epoch) in the store before this run
        self._epochs: dict[str, set[tuple[int, int]]] = {}  # trial id -> (generation, epoch) buffered or written
        self._seen_trials: set[tuple] = set()
        self._started: dict[str, datetime] = {}
        self._last_flush = time.monotonic()
        self.trials_written = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for k in ("_metrics", "_trials", "_seen_metrics", "_epochs", "_seen_trials", "_started"):
            state[k] = type(state[k])()
        return state

    @property
    def store(self) -> Store:
        return Store(self.store_root)

    # -- Tune hooks ------------------------------------------------------------------------------
    def setup(self, stop: Stopper | None = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        self._t_setup = time.monotonic()
        # On resume, rows written before the crash are in the store: never write them again.
        self._seen_metrics = self.store.existing_keys("metrics", self.study, self.sweep_id)
        self._seen_trials = self.store.existing_keys("trials", self.study, self.sweep_id)
        self.trials_written = len(self._seen_trials)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._started.setdefault(trial.trial_id, datetime.now(timezone.utc))

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        epochs = self._epochs.setdefault(trial.trial_id, set())
        for row in result.pop("history", None) or ():
            key = (int(row.get("generation", 0)), int(row["epoch"]))
            if key in epochs or (self.sweep_id, trial.trial_id, *key) in self._seen_metrics:
                continue
            epochs.add(key)
            self._metrics.append({"sweep_id": self.sweep_id, "trial_id": trial.trial_id, **METRIC_ROW,
                                  **{k: v for k, v in row.items() if k != "epoch_time_s"},
                                  "time_s": row.get("epoch_time_s")})
        if len(self._metrics) >= FLUSH_ROWS:
            self.flush()

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial)
        self._epochs.pop(trial.trial_id, None)  # (it reports no more)
        self._forget(trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial)  # (its epochs stay known: a resume may run it again from a checkpoint)
        self._forget(trial)

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        budget = self.time_budget_s
        if budget and self._t_setup is not None and time.monotonic() - self._t_setup >= budget:
            # The time budget stopped the trials still running: they are results too (a Ctrl-C
            # leaves them out, so that --resume runs them on).
            for trial in trials:
                last = trial.last_result or {}
                if last and trial.status != "ERROR":  # (_finish skips trials already written)
                    self._finish(trial, reason=None if last.get("final") else "time budget")
        self.flush()

    def get_state(self) -> dict[str, Any] | None:
        # Called when Tune saves its experiment state: make the store at least as new as that
        # state, so a resume never loses rows (and never repeats them: see setup()).
        self.flush()
        return None

    # -- rows --------------------------------------------------------------------------------------
    def _finish(self, trial: Trial, reason: str | None = None) -> None:
        key = (self.sweep_id, trial.trial_id)
        if key in self._seen_trials:
            return
        self._seen_trials.add(key)
        last = trial.last_result or {}
        status, reason = (TrialStatus.STOPPED_EARLY.value, reason) if reason else trial_status(trial)
        config = trial.config or {}
        hp = {**self.base, **{k: v for k, v in config.items() if not k.startswith("_")}}
        for knob in self.knobs:
            if knob not in config:  # a conditional knob that does not apply to this trial
                hp[knob] = None
        row: dict[str, Any] = {
            "sweep_id": self.sweep_id, "trial_id": trial.trial_id, "status": status, "stop_reason": reason,
            "stage": int(config.get(STAGE_KEY, 1)),
            "generation": int(config.get("_generation", 0)),
        }
        row.update(trial_rules.encode_config(hp))
        for name in METRIC_DIRECTIONS:
            if name in last:
                row[f"final_{name}"] = _finite_or_none(last[name]) if status == TrialStatus.DIVERGED else last[name]
            best = (last.get("best") or {}).get(name)
            if best is not None or name in last:
                row[f"best_{name}"] = best
        row.update(last.get("test") or {})  # the held-out scores of the trial's best epoch (its weights)
        row["collapsed"] = bool(last.get("collapsed", False)) if status != TrialStatus.ERROR else None
        row.update({
            "best_epoch": last.get("best_epoch"),  # the epoch of the weights it hands over and of its test_ scores
            "n_params": last.get("n_params"),
            "epochs": last.get("epoch", 0),
            "train_time_s": last.get("train_time_s"),
            "started_at": self._started.pop(trial.trial_id, None),
            "ended_at": datetime.now(timezone.utc),
            "node": last.get("node_id") or last.get("hostname") or last.get("node_ip"),  # the Ray node
            "host": last.get("hostname") or last.get("node_ip"),
            "device": last.get("device"),
            "gpu_ids": last.get("gpu_ids"),
            "retries": int(getattr(trial, "num_failures", 0) or 0),  # restarts after a lost worker or node
        })
        self._trials.append(row)

    def _forget(self, trial: Trial) -> None:
        """The finished ``trial``'s row is buffered: it keeps only :data:`KEPT_RESULT` of its results."""
        from orchestrator.tune import ray_adapter

        metric = (self.metric,) if self.metric else ()
        ray_adapter.forget_results(trial, (*KEPT_RESULT, *metric), analysed=metric)

    def flush(self) -> None:
        """Write buffered rows: one file per table, metrics first (a trial row implies its epochs)."""
        store = self.store
        if self._metrics:
            store.append("metrics", self.study, self._metrics, self.sweep_id, types=METRIC_TYPES)
            self._metrics = []
        if self._trials:
            store.append("trials", self.study, self._trials, self.sweep_id, types=self.config_types)
            self.trials_written += len(self._trials)
            self._trials = []
        self._last_flush = time.monotonic()


def _finite_or_none(v: Any) -> Any:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def best_so_far(best: tuple[float, str] | None, trial_id: str, result: dict[str, Any], metric: str,
                mode: str) -> tuple[float, str] | None:
    """(value, trial) of the best objective so far, given one more result: the trial's own best so
    far (the number the store and the summary give), else this report's value."""
    value = (result.get("best") or {}).get(metric, result.get(metric))
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        return best
    if best is None or trial_rules.better(value, best[0], mode):
        return float(value), trial_id
    return best


class Progress(Callback):
    """One line of progress: trials done / running / stopped early, best so far, elapsed time.

    Counted from Tune's list of trials, not from completion events: a resumed sweep's trials that
    finished before the interruption are in the list (restored), and never complete again.
    """

    def __init__(self, total: int, metric: str, mode: str, interval_s: float | None = None) -> None:
        self.total = total
        self.metric = metric
        self.mode = mode
        self.interval_s = interval_s
        self._reset()

    def _reset(self) -> None:
        self.counts = {s.value: 0 for s in trial_rules.FINISHED}
        self.best: tuple[float, str] | None = None
        self.running = 0
        self._ended: dict[str, str] = {}  # trial id -> status of the trials that finished
        self._t0 = time.monotonic()
        self._last = 0.0
        self._line_len = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"total": self.total, "metric": self.metric, "mode": self.mode, "interval_s": self.interval_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def _tty(self) -> bool:
        return sys.stdout.isatty()

    def setup(self, stop: Stopper | None = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        self._t0 = time.monotonic()

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        self.best = best_so_far(self.best, trial.trial_id, result, self.metric, self.mode)

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        # Counted when shown: Tune's list holds every trial of the sweep, and steps come many a second.
        interval = self.interval_s if self.interval_s is not None else (0.5 if self._tty else 10.0)
        if time.monotonic() - self._last >= interval:
            self.update(trials)
            self.show()

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.update(trials)

    def update(self, trials: list[Trial]) -> None:
        """Counts (and the best, for trials restored finished) from Tune's trials."""
        counts = dict.fromkeys(self.counts, 0)
        running = 0
        for t in trials:
            if t.status in ("TERMINATED", "ERROR"):
                state = self._ended.get(t.trial_id)
                if state is None:  # a finished trial's status is final: read it once
                    state = self._ended[t.trial_id] = trial_status(t)[0]
                    if t.last_result:
                        self.best = best_so_far(self.best, t.trial_id, t.last_result, self.metric,
                                                self.mode)
                counts[state] = counts.get(state, 0) + 1
            elif t.status == "RUNNING":
                running += 1
        self.counts, self.running = counts, running

    def line(self) -> str:
        c = self.counts
        done = sum(c.values())
        elapsed = time.monotonic() - self._t0
        parts = [f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}]",
                 f"trials {done}/{self.total} done", f"{self.running} running",
                 f"{c[TrialStatus.STOPPED_EARLY]} stopped early"]
        if c[TrialStatus.DIVERGED]:
            parts.append(f"{c[TrialStatus.DIVERGED]} diverged")
        if c[TrialStatus.ERROR]:
            parts.append(f"{c[TrialStatus.ERROR]} failed")
        if self.best is not None:
            parts.append(f"best {self.metric} {self.best[0]:.4g} ({self.best[1]})")
        return " | ".join([parts[0] + " " + parts[1], *parts[2:]])

    def show(self, final: bool = False) -> None:
        self._last = time.monotonic()
        text = self.line()
        if self._tty:
            pad = " " * max(0, self._line_len - len(text))
            sys.stdout.write("\r" + text + pad + ("\n" if final else ""))
            self._line_len = len(text)
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()


TRIAL_STATES = tuple(s.value for s in trial_rules.STATES)


class SweepStatus(Callback):
    """What a running sweep is doing, for whoever watches from outside the driver.

    - Ray metrics (``ray.util.metrics``, exported at every node's Prometheus endpoint with Ray's own,
      prefixed ``ray_``): ``orch_trials{study, sweep_id, state}``, ``orch_trials_planned``,
      ``orch_trial_results_total`` (a counter: its rate is results per second) and
      ``orch_best_objective{metric}``. Ray's dashboard has no Tune view; these fill the gap in
      Prometheus and Grafana.
    - ``<experiment>/orch_status.json``, rewritten every few seconds, which ``orch status`` reads.
    """

    def __init__(self, study: str, sweep_id: str, total: int, metric: str, mode: str, status_file: str,
                 info: dict[str, Any] | None = None, interval_s: float = 2.0) -> None:
        self.study, self.sweep_id, self.total = study, sweep_id, total
        self.metric, self.mode = metric, mode
        self.status_file = status_file
        self.info = dict(info or {})
        self.interval_s = interval_s
        self._reset()

    def _reset(self) -> None:
        self.best: tuple[float, str] | None = None
        self.results = 0
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._last = 0.0
        self._metrics: dict[str, Any] | None = None
        self._ended: dict[str, str] = {}  # trial id -> status of the trials that finished

    def __getstate__(self) -> dict[str, Any]:
        keep = ("study", "sweep_id", "total", "metric", "mode", "status_file", "info", "interval_s")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def tags(self) -> dict[str, str]:
        return {"study": self.study, "sweep_id": self.sweep_id}

    def setup(self, stop: Stopper | None = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        self._metrics = _ray_metrics()
        if self._metrics:
            self._metrics["planned"].set(self.total, tags=self.tags)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        self.results += 1
        if self._metrics:
            self._metrics["results"].inc(1, tags=self.tags)
        self.best = best_so_far(self.best, trial.trial_id, result, self.metric, self.mode)

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if time.monotonic() - self._last >= self.interval_s:
            self.update(trials)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.update(trials, state="ended")

    def counts(self, trials: list[Trial]) -> dict[str, int]:
        counts = dict.fromkeys(TRIAL_STATES, 0)
        for t in trials:
            if t.status in ("TERMINATED", "ERROR"):
                # A finished trial's status is final: read it (for an error, from its file) once.
                state = self._ended.get(t.trial_id)
                if state is None:
                    state = self._ended[t.trial_id] = trial_status(t)[0]
            else:
                state = t.status.lower()
            counts[state] = counts.get(state, 0) + 1
        return counts

    def update(self, trials: list[Trial], state: str = "running") -> None:
        self._last = time.monotonic()
        counts = self.counts(trials)
        if self._metrics:
            for name, n in counts.items():
                self._metrics["trials"].set(n, tags={**self.tags, "state": name})
            if self.best is not None:
                self._metrics["best"].set(self.best[0], tags={**self.tags, "metric": self.metric})
        done = sum(counts[s.value] for s in trial_rules.FINISHED)
        status = {
            "study": self.study, "sweep_id": self.sweep_id, "state": state, "trials": self.total,
            "done": done, "counts": counts, "results": self.results, "metric": self.metric,
            "mode": self.mode, "best": self.best[0] if self.best else None,
            "best_trial_id": self.best[1] if self.best else None, "started_at": self.started_at,
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(), "pid": os.getpid(), **self.info,
        }
        from orchestrator.errors import StoreError
        from orchestrator.store import fs

        with contextlib.suppress(OSError, StoreError):  # progress is a courtesy: never stop a sweep over it
            # (Its directory is the sweep's: one that is gone is not made again.)
            fs.write_bytes_atomic(fs.as_path(self.status_file), json.dumps(status, indent=1).encode(), parents=False)


def _ray_metrics() -> dict[str, Any] | None:
    """orch's metrics in Ray's metrics system, or None where it cannot record them."""
    try:
        from ray.util.metrics import Counter, Gauge

        keys = ("study", "sweep_id")
        return {
            "trials": Gauge("orch_trials", description="Trials of an orch sweep by state.",
                            tag_keys=(*keys, "state")),
            "planned": Gauge("orch_trials_planned", description="Trials an orch sweep will run.", tag_keys=keys),
            "results": Counter("orch_trial_results", description="Results reported by the trials of an orch sweep.",
                               tag_keys=keys),
            "best": Gauge("orch_best_objective", description="Best value of the objective so far in an orch sweep.",
                          tag_keys=(*keys, "metric")),
        }
    except Exception:  # noqa: BLE001 - metrics are optional; the sweep is not
        return None
