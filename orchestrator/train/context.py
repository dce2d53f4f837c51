"""The trial contract: what a training function is given, and what orch does with what it reports.

A training function is ``fit(config, ctx)`` (config key ``trainable: "package.module:function"``;
orch's own trainer, :func:`orchestrator.train.trainer.fit`, is one such function). ``config`` is
the trial's hyperparameters: the sweep's base values with the sampled ones applied. ``ctx`` is a
:class:`TrialContext`:

- ``ctx.report(epoch, metrics, state=None)`` once per epoch (epochs count from 1, and on from the
  restored epoch after a resume). ``metrics`` are numbers by name; the objective must be among
  them. ``state`` (a dict of tensors and plain values, or a function returning one, called only
  when a checkpoint is due) is what :meth:`TrialContext.restore` gives back. The scheduler decides
  at reports; orch records every epoch in the store, keeps each metric's best, and ends the trial
  when a reported loss is not finite or grows past ``train.divergence_factor`` times its first
  value (``diverged``), or after ``train.patience`` epochs without improving the objective.
- ``ctx.should_stop``: true once the trial is over (its last epoch, divergence, patience): leave
  the loop. A report after that raises :class:`TrialStopped`. (A trial the scheduler stops early,
  ASHA's, is ended by Ray inside ``ctx.report``.)
- ``ctx.report(..., model=model)``: the ``nn.Module`` being trained. orch keeps a copy of its
  weights at the trial's best epoch (by the objective): the trial's model, from which the sweep
  writes the artefacts of its best trials (``keep_models``) and ``orch export`` reads.
- ``ctx.report(..., test=...)``: held-out scores (``test_<name>``), or a function computing them,
  called at each epoch that improves the objective: the store keeps those of the best epoch, so
  a trial's test scores are those of the weights it hands over.
- The objective must be one of the metrics orch knows for the task (``val_loss``, ``val_accuracy``,
  ``val_f1``, ``val_auc``; ``val_rmse``, ``val_mae``, ``val_r2``): those get best and final columns
  in the store. Any other metric is kept per epoch.
- ``ctx.restore()``: the state to resume from, or None. After a lost worker or node it is the
  trial's own last checkpoint; after a population-based-training exploit it is another trial's,
  and ``config`` holds the new hyperparameters (apply them after loading an optimizer's state).
- ``ctx.device`` (the trial's GPU when Ray gave it one, else the CPU), ``ctx.data`` (the splits:
  ``.train``, ``.val``, ``.test`` as torch Datasets of (x, y), ``.task``, ``.n_outputs``,
  ``.input_shape``), ``ctx.loader(split)`` (a DataLoader: ``batch_size`` from the config,
  ``data.num_workers``, pinned memory on CUDA), ``ctx.build_model()`` (the config's model with this
  trial's hyperparameters, on ``ctx.device``), ``ctx.max_epochs``, ``ctx.start_epoch``,
  ``ctx.trial_id``.

Everything else is orch's: scheduling, checkpoints and exploits, retries, GPU placement, the store,
re-tuning and the report. The backend (Ray Tune in a sweep, a plain callback in a benchmark or a
test) only carries results out and checkpoints in.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from orchestrator.store.trials import TrialStatus
from orchestrator.train.metrics import METRIC_DIRECTIONS

if TYPE_CHECKING:
    from orchestrator.train.data import Dataset, Variants

CHECKPOINT_FILE = "trial.pt"
# What a report carries besides the metrics, and the store's keys: no metric may take these names.
RESERVED = frozenset({"epoch", "generation", "timestamp", "epoch_time_s", "time_s", "history", "best", "best_epoch",
                      "final", "trial_status", "stop_reason", "train_time_s", "collapsed", "test", "done",
                      "training_iteration", "trial_id", "sweep_id", "study", "node_id", "device", "gpu_ids"})
BUILT_IN = "orchestrator.train.trainer:fit"  # orch's own trainer, the default trainable


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares (sent once with the trainable, not per trial)."""

    base: dict[str, Any]  # hyperparameters before the sampled ones are applied
    model: str  # a shipped model's name or a factory's import path
    metric: str
    mode: str
    max_epochs: int
    report_epochs: frozenset[int] | None  # None: report every epoch
    checkpoint_every: int
    threads: int = 1
    trainable: str = BUILT_IN
    num_workers: int = 0  # DataLoader workers
    project: str | None = None  # where the import paths resolve
    needs_state: bool = False  # population-based training: every checkpoint epoch must carry a state
    weights_dir: str | None = None  # where each trial writes its best epoch's weights (<trial_id>.pt)


class TrialStopped(Exception):
    """Raised by :meth:`TrialContext.report` after the trial has ended (see ``should_stop``)."""


class ContractError(Exception):
    """A training function broke the trial contract (the message names the trial and the rule)."""


class Backend(Protocol):
    """Where a trial's results go and its checkpoint comes from."""

    trial_id: str

    def report(self, result: dict[str, Any], checkpoint: dict[str, Any] | None) -> None: ...

    def checkpoint(self) -> dict[str, Any] | None: ...


class LocalBackend:
    """Results to a function, a checkpoint given up front (benchmarks, tests, ``orch check``)."""

    def __init__(self, report: Callable[[dict[str, Any], dict[str, Any] | None], None],
                 state: dict[str, Any] | None = None, trial_id: str = "local") -> None:
        self._report, self._state, self.trial_id = report, state, trial_id

    def report(self, result: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        self._report(result, checkpoint)

    def checkpoint(self) -> dict[str, Any] | None:
        return self._state


def hyperparameters(config: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's hyperparameters: the sweep's base, then the sampled values (``_``-keys are orch's)."""
    return {**base, **{k: v for k, v in config.items() if not k.startswith("_")}}


def default_device() -> torch.device:
    """CUDA when this process can see a GPU (Ray hides GPUs from trials it gave none), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_better(value: float, best: float | None, direction: int, min_delta: float = 0.0) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value - best) * direction > min_delta


class TrialContext:
    """One trial's side of the contract (see the module's docstring)."""

    def __init__(self, config: Mapping[str, Any], setup: TrialSetup, data: Dataset | Variants | None,
                 backend: Backend, device: torch.device | None = None,
                 load_data: Callable[[], Dataset | Variants] | None = None) -> None:
        self.config = hyperparameters(config, setup.base)
        self.generation = int(config.get("_generation", 0))  # exploits (population-based training) so far
        self.setup = setup
        self.device = device or default_device()
        self.trial_id = backend.trial_id
        self.should_stop = False
        # The loss the divergence check compares with: the first reported train_loss, unless the
        # training function sets it first (orch's trainer: its first batch's loss).
        self.first_loss: float | None = None
        self._data, self._load_data, self._backend = data, load_data, backend
        self._history: list[dict[str, Any]] = []
        self._best: dict[str, float] = {}
        self._best_epoch = self._since_best = self._epoch = 0
        self._patience_ref: float | None = None  # the objective patience compares with (min_delta)
        self._best_weights: dict[str, torch.Tensor] | None = None  # the best epoch's, on the CPU
        self._best_test: dict[str, float] = {}  # the best epoch's held-out scores
        self._weights_dirty = False
        self.n_params: int | None = None
        self.n_outputs: int | None = None  # the outputs of the model ctx.build_model() built
        self._last: dict[str, Any] = {}
        self._final: dict[str, Any] | None = None
        self._status, self._reason = TrialStatus.COMPLETED.value, ""
        self._restored: dict[str, Any] | None = None
        self._restored_epoch = 0
        self.reporting = False  # inside the backend's report (its exceptions are not the trial's)
        self._t_last = self._started = time.perf_counter()
        self.direction = METRIC_DIRECTIONS.get(setup.metric, -1 if setup.mode == "min" else +1)
        seed = int(self.config.get("seed", 0) or 0)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        checkpoint = backend.checkpoint()
        if checkpoint is not None:
            own = checkpoint.get("orch")
            if not isinstance(own, dict) or "epoch" not in own:
                raise ContractError(f"trial {self.trial_id}: the checkpoint to resume from is not one of this "
                                    "version of orch")
            self._restored = checkpoint.get("user")
            self._epoch = self._restored_epoch = int(own["epoch"])
            self._best = dict(own.get("best") or {})
            self._best_epoch, self._since_best = int(own.get("best_epoch", 0)), int(own.get("since_best", 0))
            self._patience_ref = own.get("patience_ref", self._best.get("_objective"))
            self.first_loss = own.get("first_loss")
            self._best_test = dict(own.get("best_test") or {})
            if own.get("best_weights") is not None:
                # The weights of the best epoch so far: this trial's own, or after an exploit the
                # donor's (whose best it inherits with them). Written as this trial's at the next report.
                self._best_weights, self._weights_dirty = own["best_weights"], True

    # -- what a training function reads ----------------------------------------------------------
    @property
    def max_epochs(self) -> int:
        return self.setup.max_epochs

    @property
    def start_epoch(self) -> int:
        """The first epoch to train: 1, or the one after the restored checkpoint's."""
        return self._restored_epoch + 1

    @property
    def data(self) -> Dataset:
        """The trial's data (for a table, prepared with this trial's scaling)."""
        from orchestrator.train.data import select

        if self._data is None:
            if self._load_data is None:
                raise ContractError(f"trial {self.trial_id}: this trial has no data")
            self._data = self._load_data()
        return select(self._data, self.config)

    def restore(self) -> dict[str, Any] | None:
        """The state to resume from (as given to :meth:`report`), or None for a fresh start."""
        return self._restored

    def loader(self, split: str = "train", batch_size: int | None = None, shuffle: bool | None = None,
               **kwargs: Any) -> torch.utils.data.DataLoader:
        """A DataLoader over ``split``: the config's ``batch_size``, shuffled for "train" (seeded by
        ``seed``), ``data.num_workers`` workers, pinned memory when training on CUDA."""
        from torch.utils.data import DataLoader

        if split not in ("train", "val", "test"):
            raise ValueError(f"ctx.loader: split is train, val or test (got {split!r})")
        kwargs.setdefault("num_workers", self.setup.num_workers)
        kwargs.setdefault("persistent_workers", kwargs["num_workers"] > 0)
        kwargs.setdefault("pin_memory", self.device.type == "cuda")
        if kwargs.get("generator") is None:
            kwargs["generator"] = torch.Generator().manual_seed(int(self.config.get("seed", 0) or 0) + self._epoch)
        if shuffle is None:
            shuffle = split == "train" and kwargs.get("sampler") is None and kwargs.get("batch_sampler") is None
        if kwargs.get("batch_sampler") is not None:
            return DataLoader(self.data.split(split), **kwargs)
        return DataLoader(self.data.split(split), batch_size=int(batch_size or self.config.get("batch_size", 64)),
                          shuffle=shuffle, **kwargs)

    def build_model(self, n_outputs: int | None = None) -> torch.nn.Module:
        """The config's model (``model.name`` or ``model.factory``) with this trial's
        hyperparameters, sized for the data, on ``ctx.device``."""
        from orchestrator.config import models

        data = self.data
        hp = {k: self.config[k] for k in models.hyperparameters(self.setup.model) if k in self.config}
        self.n_outputs = n_outputs or data.n_outputs  # how to build it again (a kept model's artefact)
        model = models.build(self.setup.model, data.input_shape, self.n_outputs, data.task, **hp)
        return model.to(self.device)

    # -- what a training function calls ----------------------------------------------------------
    def report(self, epoch: int, metrics: Mapping[str, Any],
               state: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
               test: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
               model: torch.nn.Module | None = None) -> None:
        """Record one epoch; see the module's docstring.

        ``model``: the module being trained; its weights are kept when this epoch is the trial's best.
        ``test``: held-out scores (``test_<name>``), or a function computing them, called when this
        epoch is the trial's best so far (the store keeps those of the best epoch).

        Raises:
            TrialStopped: the trial had already ended.
            ContractError: an epoch that does not follow the last one, a metric that is not a
                number, no objective among the metrics, a state that is not tensors and plain values.
        """
        if self._final is not None:
            raise TrialStopped(f"trial {self.trial_id} has ended (ctx.should_stop)")
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch <= self._epoch:
            after = f"after epoch {self._epoch}" if self._epoch else "as the first"
            raise ContractError(f"trial {self.trial_id}: ctx.report: epoch {epoch!r} {after}: epochs are whole "
                                f"numbers that grow from 1 (from ctx.start_epoch after a resume)")
        epoch = int(epoch)
        row: dict[str, Any] = {}
        tests: dict[str, float] = {}
        for name, value in metrics.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ContractError(f"trial {self.trial_id}: ctx.report: metric {name!r} is a "
                                    f"{type(value).__name__}, not a number")
            (tests if str(name).startswith("test_") else row)[str(name)] = float(value)
        reserved = sorted(set(row) & RESERVED)
        if reserved:
            raise ContractError(f"trial {self.trial_id}: ctx.report: {reserved[0]!r} is a name orch reports itself; "
                                f"name the metric otherwise (reserved: {', '.join(sorted(RESERVED))})")
        objective = row.get(self.setup.metric)
        if objective is None:
            raise ContractError(f"trial {self.trial_id}: ctx.report: epoch {epoch}'s metrics have no "
                                f"{self.setup.metric!r}, the sweep's objective (reported: {', '.join(row) or 'none'})")
        now = time.perf_counter()
        row["generation"] = self.generation
        row["epoch_time_s"] = now - self._t_last
        row["epoch"] = epoch
        row["timestamp"] = time.time()  # wall clock: when this epoch's numbers were known
        self._t_last = now
        self._epoch = epoch
        self._history.append(row)
        self._last = row
        if self._track(epoch, row, objective):  # (never a diverging epoch)
            self._keep_best(epoch, tests, test, model)
        last = epoch >= self.setup.max_epochs or self._status != TrialStatus.COMPLETED
        r = self.setup.report_epochs
        if last or r is None or epoch in r:
            result = self._result(row, last)
            checkpoint = None
            due = not last and (epoch % self.setup.checkpoint_every == 0 or r is None)
            if due and state is None and self.setup.needs_state:
                raise ContractError(f"trial {self.trial_id}: ctx.report: epoch {epoch} has no state: population-based "
                                    "training copies a trial's state to another at this epoch; pass "
                                    "state=... (the weights and optimizer) to ctx.report")
            if state is not None and due:
                checkpoint = self._checkpoint(epoch, state() if callable(state) else state)
            self._send(result, checkpoint)
        if last:
            self.should_stop = True

    def finish(self) -> dict[str, Any]:
        """After the training function returned: its final result (sent now if it stopped on its own).

        Raises:
            ContractError: it never reported an epoch.
        """
        if self._final is not None:
            return self._final
        if not self._last:
            raise ContractError(
                f"trial {self.trial_id}: {self.setup.trainable} returned without reporting an epoch: a training "
                f"function calls ctx.report(epoch, metrics) every epoch, with the objective {self.setup.metric!r}")
        self._status = TrialStatus.STOPPED_EARLY.value
        self._reason = f"the training function returned after epoch {self._epoch} of {self.setup.max_epochs}"
        result = self._result(self._last, True)
        self._send(result, None)
        return result

    # -- orch's side -------------------------------------------------------------------------------
    def _track(self, epoch: int, row: dict[str, Any], objective: float) -> bool:
        """Update the bests and the stop rules with one epoch; True when it is the trial's best.

        The best epoch is the first with the best objective (a later equal value does not replace
        it: fewer epochs). Patience counts epochs since the objective last improved by more than
        ``min_delta``.
        """
        improved = is_better(objective, self._best.get("_objective"), self.direction)
        if is_better(objective, self._patience_ref, self.direction, float(self.config.get("min_delta", 0.0) or 0.0)):
            self._patience_ref, self._since_best = objective, 0
        else:
            self._since_best += 1
        train_loss = row.get("train_loss")
        if self.first_loss is None and train_loss is not None and math.isfinite(train_loss):
            self.first_loss = train_loss
        factor = self.config.get("divergence_factor")
        patience = self.config.get("patience")
        lr = f" (lr {row['lr']:.3g})" if isinstance(row.get("lr"), float) else ""
        # The losses and the objective (a score such as AUC may be undefined on a split without
        # every class: that is no divergence).
        scored = [v for k, v in row.items() if k.endswith("_loss") or k == self.setup.metric]
        if not all(math.isfinite(v) for k, v in row.items() if k.endswith("_loss")):
            self._status = TrialStatus.DIVERGED.value
            self._reason = f"non-finite loss at epoch {epoch}{lr}: lower the learning rate"
        elif not all(math.isfinite(v) for v in scored):
            self._status = TrialStatus.DIVERGED.value
            self._reason = f"{self.setup.metric} is {objective} at epoch {epoch}: the objective must be a number"
        elif (factor and self.first_loss is not None and self.first_loss > 0 and train_loss is not None
              and train_loss > factor * self.first_loss):
            self._status = TrialStatus.DIVERGED.value
            self._reason = (f"training loss {train_loss:.4g} at epoch {epoch} is over {factor:g}x its "
                            f"first value {self.first_loss:.4g}{lr}: lower the learning rate")
        elif patience and self._since_best >= int(patience):
            self._status = TrialStatus.STOPPED_EARLY.value
            self._reason = f"no improvement of {self.setup.metric} for {self._since_best} epochs"
        if self._status == TrialStatus.DIVERGED:
            return False  # a diverging epoch is nobody's best: the bests stay those of the epochs before
        for name, value in row.items():
            d = METRIC_DIRECTIONS.get(name)
            if d is not None and is_better(value, self._best.get(name), d):
                self._best[name] = value
        if improved:
            self._best["_objective"], self._best_epoch = objective, epoch
        return improved

    def _keep_best(self, epoch: int, tests: dict[str, float],
                   test: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None,
                   model: torch.nn.Module | None) -> None:
        """This epoch is the trial's best: keep its held-out scores and its weights (on the CPU)."""
        extra = test() if callable(test) else (test or {})
        scores = dict(tests)
        for name, value in extra.items():
            if not str(name).startswith("test_"):
                raise ContractError(f"trial {self.trial_id}: ctx.report: test score {name!r} must be named "
                                    "test_<metric>")
            scores[str(name)] = float(value.item() if isinstance(value, torch.Tensor) else value)
        self._best_test = scores
        if model is not None:
            if not isinstance(model, torch.nn.Module):
                raise ContractError(f"trial {self.trial_id}: ctx.report: model is a {type(model).__name__}, "
                                    "not a torch.nn.Module")
            self._best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self._weights_dirty = True
            if self.n_params is None:
                self.n_params = sum(p.numel() for p in model.parameters())

    @property
    def best_weights(self) -> dict[str, torch.Tensor] | None:
        """The weights of the trial's best epoch (a state dict on the CPU), when ``model=`` was reported."""
        return self._best_weights

    @property
    def best_epoch(self) -> int:
        return self._best_epoch

    def _write_weights(self) -> None:
        """The best epoch's weights to ``<weights_dir>/<trial_id>.pt`` (atomic; only when changed)."""
        if not self._weights_dirty or self._best_weights is None or not self.setup.weights_dir:
            return
        import os

        from orchestrator.store import fs

        name = os.path.basename(str(self.trial_id))
        state = {"weights": self._best_weights, "epoch": self._best_epoch, "n_params": self.n_params,
                 "n_outputs": self.n_outputs, "test": self._best_test}
        # Local: a temporary file renamed into place; object storage: one upload.
        fs.write_atomic(fs.as_path(self.setup.weights_dir) / f"{name}.pt", lambda f: torch.save(state, f))
        self._weights_dirty = False

    def _result(self, row: dict[str, Any], last: bool) -> dict[str, Any]:
        result = dict(row)
        result["collapsed"] = bool(row.get("val_collapsed"))
        # Schedulers need a number: a diverged trial is the worst possible result (not NaN, and not
        # the huge but finite loss it stopped at).
        objective = result.get(self.setup.metric, float("nan"))
        if self._status == TrialStatus.DIVERGED or not math.isfinite(objective):
            result[self.setup.metric] = float("inf") if self.setup.mode == "min" else float("-inf")
        if self._best_test and self._status != TrialStatus.DIVERGED:
            result["test"] = dict(self._best_test)  # the best epoch's (those of the weights it hands over)
        result.update(
            history=self._history,
            best={k: v for k, v in self._best.items() if not k.startswith("_")},
            best_epoch=self._best_epoch,
            n_params=self.n_params,
            final=last,
            trial_status=self._status if last else TrialStatus.RUNNING.value,
            stop_reason=self._reason,
            train_time_s=time.perf_counter() - self._started,
        )
        return result

    def _checkpoint(self, epoch: int, state: Any) -> dict[str, Any]:
        if not isinstance(state, dict):
            raise ContractError(f"trial {self.trial_id}: ctx.report: state is a {type(state).__name__}; give a "
                                "dict of tensors and plain values")
        try:
            user = plain(state)
        except TypeError as err:
            raise ContractError(f"trial {self.trial_id}: ctx.report: state: {err} (a checkpoint is loaded with "
                                "torch.load(weights_only=True), which runs no code)") from None
        return {"user": user, "orch": plain({
            "epoch": epoch, "best": self._best, "best_epoch": self._best_epoch, "since_best": self._since_best,
            "patience_ref": self._patience_ref, "first_loss": self.first_loss, "hp": self.config,
            "best_test": self._best_test, "best_weights": self._best_weights})}

    def _send(self, result: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        self._write_weights()  # before the report: the scheduler may end the trial inside it
        self.reporting = True
        self._backend.report(result, checkpoint)
        self.reporting = False
        self._history = []
        if result["final"]:
            self._final = result


def plain(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers, arrays as tensors, and containers rebuilt
    from plain values: what ``torch.load(weights_only=True)`` reads back.

    Raises:
        TypeError: ``value`` holds something else (an object ``weights_only`` would refuse).
    """
    if isinstance(value, torch.Tensor) or value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):  # (an OrderedDict, such as a state_dict, stays one)
        return type(value)((plain(k), plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    for kind in (bool, int, float, str):  # a subclass (an IntEnum): its plain value
        if isinstance(value, kind):
            return kind(value)
    raise TypeError(f"a checkpoint holds only tensors and plain values, not {type(value).__name__}")


def load_checkpoint(path: str) -> dict[str, Any]:
    """A trial checkpoint as a trial wrote it: tensors and plain values only.

    Read with ``weights_only=True``: a file that holds anything else (a pickled object, which
    could run code when loaded) is refused.

    Raises:
        CheckpointError: the file is not such a checkpoint.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise CheckpointError(f"refusing to load checkpoint {path}: not a checkpoint of tensors "
                              f"and plain values ({first[:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"refusing to load checkpoint {path}: not a checkpoint of this "
                              "trainer")
    return state


class CheckpointError(Exception):
    """A trial checkpoint that cannot (or must not) be loaded."""
