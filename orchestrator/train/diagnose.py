"""Checks before a sweep: is the data, the model and the optimiser set up so that training can work?

``orch check`` runs these on one representative configuration of the space (each knob's default,
else the config's value, else the middle of its range), in seconds and without Ray:

- inputs are scaled (no feature with a huge mean or spread);
- the target looks like the configured task;
- the loss at initialisation is near its expected value (ln(classes) for cross-entropy);
- gradients reach every layer, none zero, none exploding;
- the model memorises a handful of rows (the loss falls close to zero), the classic test that the
  pipeline can learn at all;
- two epochs of the sweep's own training loop on all the training rows neither diverge (the
  trainer's rule: a non-finite loss, or one far above its start) nor fail to lower the loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from orchestrator.config import models
from orchestrator.store.trials import TrialStatus

if TYPE_CHECKING:
    from orchestrator.config.schema import SweepConfig
    from orchestrator.space.space import Space
    from orchestrator.train.data import Dataset, Variants
    from orchestrator.train.trainer import Parts

# Thresholds: chosen so that a correctly set-up model passes with a wide margin.
SCALE_LIMIT = 10.0  # a scaled feature's |mean| and std stay well below this
INIT_LOSS_RATIO = 3.0  # the initial loss within this factor of its expected value
GRAD_ZERO = 1.0e-10  # a layer whose weight gradient norm is below this gets nothing
GRAD_EXPLODING = 1.0e3  # ... above this (at initialisation, on scaled data) explodes
MEMORISE_ROWS = 16
MEMORISE_STEPS = 300
MEMORISE_TARGET = 0.05  # the plain loss must fall below this fraction of its start ...
MEMORISE_ABSOLUTE = 0.02  # ... or below this value
STABLE_EPOCHS = 2
STABLE_MIN_DROP = 0.01  # ... over which the training loss must fall by at least this fraction


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # passed, but worth a look

    @property
    def verdict(self) -> str:
        return "FAIL" if not self.ok else ("warn" if self.warning else "ok")


def check_inputs(data: Dataset) -> Check:
    x = np.asarray(data.x_train, dtype=np.float64)
    x = x.reshape(len(x), -1)  # images, sequences: every value a feature
    mean, std = np.abs(x.mean(axis=0)), x.std(axis=0)
    worst = int(np.argmax(np.maximum(mean, std)))
    name = data.feature_names[worst] if worst < len(data.feature_names) else str(worst)
    detail = (f"{x.shape[1]} features, largest |mean| {mean.max():.3g}, largest std {std.max():.3g} "
              f"(feature '{name}'; data.scale: {data.scale})")
    if not np.isfinite(x).all():
        return Check("inputs scaled", False, "inputs hold NaN or infinite values after preprocessing")
    if mean.max() > SCALE_LIMIT or std.max() > SCALE_LIMIT:
        return Check("inputs scaled", False, detail + ": unscaled inputs slow or break training; "
                     "set data.scale: standard (or quantile for skewed features)")
    return Check("inputs scaled", True, detail)


def check_target(data: Dataset) -> Check:
    if data.task == "classification":
        n = len(data.classes)
        if not data.target_integral:
            return Check("target fits the task", False,
                         f"classification, but the target has {data.target_distinct} distinct non-integer "
                         f"values: it looks like a regression target (set data.task: regression)")
        from orchestrator.train.data import MAX_INFERRED_CLASSES

        if n > MAX_INFERRED_CLASSES:
            return Check("target fits the task", False,
                         f"classification with {n} classes: the target looks continuous "
                         f"(set data.task: regression)")
        counts = np.bincount(np.asarray(data.y_train, dtype=np.int64), minlength=n)
        detail = f"classification, {n} classes, training rows per class {counts.min()}..{counts.max()}"
        if counts.min() < 2:
            return Check("target fits the task", True, detail + ": a class with fewer than 2 rows", warning=True)
        return Check("target fits the task", True, detail)
    if data.target_distinct <= 2:
        return Check("target fits the task", False,
                     f"regression, but the target has only {data.target_distinct} distinct values: "
                     f"it looks like a classification target (set data.task: classification)")
    detail = f"regression, {data.target_distinct} distinct target values (data.target_scale: {data.target_scale})"
    if data.target_integral and data.target_distinct <= 10:
        return Check("target fits the task", True, detail + ": few integer values, maybe classes", warning=True)
    return Check("target fits the task", True, detail)


def _plain_loss(parts: Parts, out: torch.Tensor, y: torch.Tensor) -> float:
    if parts.data.task == "classification":
        return parts.loss.plain(out, y)
    return float(torch.mean((out.squeeze(1) - y) ** 2))


def expected_initial_loss(parts: Parts) -> tuple[float, str]:
    """The loss a fresh model should start near, and how it is derived."""
    if parts.data.task == "classification":
        n = len(parts.data.classes)
        if parts.loss.kind == "bce":
            return math.log(2), "ln(2) for a sigmoid"
        return math.log(n), f"ln({n}) for a softmax over {n} classes"
    y = torch.as_tensor(np.asarray(parts.data.y_train, dtype=np.float32))
    var = float(y.var()) if len(y) > 1 else 1.0
    return var + float(y.mean()) ** 2, "the scaled target's mean square"


def check_initial_loss(parts: Parts, x: torch.Tensor, y: torch.Tensor) -> Check:
    parts.model.eval()
    with torch.no_grad():
        loss = _plain_loss(parts, parts.model(x), y)
    expected, why = expected_initial_loss(parts)
    detail = f"{loss:.4g}, expected about {expected:.4g} ({why})"
    if not math.isfinite(loss) or loss > INIT_LOSS_RATIO * max(expected, 1e-3) + 1.0:
        return Check("loss at initialisation", False, detail + ": the first outputs are far too large "
                     "(unscaled inputs, or an initialisation that does not fit the activation)")
    return Check("loss at initialisation", True, detail)


def check_gradients(parts: Parts, x: torch.Tensor, y: torch.Tensor) -> Check:
    model = parts.model
    model.train()
    model.zero_grad(set_to_none=True)
    parts.loss(model(x), y).backward()
    weighted = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    layers = [(f"{i + 1} ({_shape(m)})", m) for i, m in enumerate(weighted)]
    norms = []
    for name, layer in layers:
        g = layer.weight.grad
        norms.append((name, float(g.norm()) if g is not None else 0.0))
    model.zero_grad(set_to_none=True)
    dead = [n for n, v in norms if v <= GRAD_ZERO]
    wild = [n for n, v in norms if not math.isfinite(v) or v > GRAD_EXPLODING]
    shown = ", ".join(f"{n}: {v:.2g}" for n, v in norms)
    if dead:
        return Check("gradients flow", False, f"no gradient reaches layer {', '.join(dead)} (weight "
                     "gradient norm 0): dead units (a negative bias_init, dying ReLUs) or a broken model")
    if wild:
        return Check("gradients flow", False, f"exploding gradient at layer {', '.join(wild)} ({shown}): "
                     "scale the inputs, or lower the initial weights")
    return Check("gradients flow", True, f"to all {len(norms)} linear and convolution layers (weight gradient norms "
                 f"{shown})")


def _shape(layer: nn.Module) -> str:
    if isinstance(layer, nn.Linear):
        return f"{layer.in_features}->{layer.out_features}"
    return f"conv {layer.in_channels}->{layer.out_channels}"


def check_memorise(cfg: SweepConfig, hp: dict[str, Any], data: Dataset | Variants, model_name: str,
                   seed: int) -> Check:
    """Train on a few rows with regularisation off: the loss must fall close to zero."""
    from orchestrator.train.optim import clip_gradients
    from orchestrator.train.trainer import build, seed_everything

    small = {**hp, "dropout": 0.0, "weight_decay": 0.0, "label_smoothing": 0.0, "class_weights": "none"}
    small = {k: v for k, v in small.items() if k in hp}
    seed_everything(seed)
    parts = build(small, data, model_name, cfg.scheduler.max_epochs)
    d = parts.data
    rng = np.random.default_rng(seed)
    n = min(MEMORISE_ROWS, len(d.x_train))
    if d.task == "classification" and len(d.classes) <= n:  # every class present
        idx = np.concatenate([rng.permutation(np.flatnonzero(d.y_train == c))[:1] for c in range(len(d.classes))])
        rest = rng.permutation(np.setdiff1d(np.arange(len(d.x_train)), idx))[: max(0, n - len(idx))]
        idx = np.concatenate([idx, rest])[: max(n, len(idx))]
    else:
        idx = rng.permutation(len(d.x_train))[:n]
    x, y = torch.as_tensor(d.x_train[idx]), torch.as_tensor(d.y_train[idx])
    model, opt = parts.model, parts.optimizer
    model.eval()
    with torch.no_grad():
        start = _plain_loss(parts, model(x), y)
    loss = start
    steps = 0
    for steps in range(1, MEMORISE_STEPS + 1):  # noqa: B007 - steps is reported
        model.train()
        opt.zero_grad(set_to_none=True)
        train_loss = parts.loss(model(x), y)
        if not torch.isfinite(train_loss):
            loss = float("nan")
            break
        train_loss.backward()
        clip_gradients(model.parameters(), small)
        opt.step()
        if steps % 10 == 0:
            model.eval()
            with torch.no_grad():
                loss = _plain_loss(parts, model(x), y)
            if not math.isfinite(loss) or loss <= max(MEMORISE_TARGET * start, MEMORISE_ABSOLUTE):
                break
    lr = hp.get("lr")
    detail = f"{len(idx)} rows, lr {lr:.3g}: loss {start:.4g} -> {loss:.4g} in {steps} steps"
    if math.isfinite(loss) and loss <= max(MEMORISE_TARGET * start, MEMORISE_ABSOLUTE):
        return Check("memorises a few rows", True, detail)
    hint = ("the loss diverged: the learning rate is too high" if not math.isfinite(loss) or loss > start
            else "the model cannot fit them: too small a learning rate or model, or a bug in the data")
    return Check("memorises a few rows", False, f"{detail}: {hint}")


def check_stable(cfg: SweepConfig, point: dict[str, Any], space: Space, dataset: Dataset | Variants) -> Check:
    """A short run of the real training loop: it must not diverge, and the loss must fall."""
    from orchestrator.train.context import BUILT_IN
    from orchestrator.train.trainer import TrialSetup, run_trial

    setup = TrialSetup(base=space.base, model=models.model_id(cfg.model), metric=cfg.objective.metric,
                       mode=cfg.objective.mode, max_epochs=STABLE_EPOCHS, report_epochs=None,
                       checkpoint_every=STABLE_EPOCHS + 1, trainable=cfg.trainable or BUILT_IN,
                       num_workers=cfg.data.num_workers, project=cfg.project)
    history: list[dict[str, Any]] = []
    result = run_trial(point, dataset, setup, lambda r, _: history.extend(r["history"]))
    losses = [h["train_loss"] for h in history if "train_loss" in h]
    shown = " -> ".join(f"{v:.4g}" for v in losses)
    last = history[-1] if history else {}
    knobs = "".join(f", {name} {last[key]:.3g}" for key, name in (("lr", "lr"), ("batch_size", "batch"))
                    if isinstance(last.get(key), (int, float)))
    detail = f"{len(losses)} epoch{'s' if len(losses) > 1 else ''}{knobs}: training loss {shown}"
    if result["trial_status"] == TrialStatus.DIVERGED:
        return Check("trains stably", False, f"{detail}: diverged: {result['stop_reason']}")
    if len(losses) >= 2 and not losses[-1] < (1.0 - STABLE_MIN_DROP) * losses[0]:
        return Check("trains stably", False, f"{detail}: the loss does not fall (learning rate too high or too low)")
    return Check("trains stably", True, detail)


def run_checks(cfg: SweepConfig, dataset: Dataset | Variants,
               space: Space) -> tuple[dict[str, Any], list[Check], float]:
    """Every check on the space's representative configuration: (its knobs, checks, seconds)."""
    from orchestrator.train.trainer import build, hyperparameters, seed_everything

    t0 = time.perf_counter()
    point = space.typical()
    hp = hyperparameters(point, space.base)
    seed = int(hp.get("seed", 0))
    checks: list[Check] = []
    data_view = _select(dataset, hp)
    if data_view.inputs == 1:
        # Samples served by a torch Dataset: the model checks look at the first of them, in memory.
        sample = data_view if data_view.in_memory else _in_memory(data_view, SAMPLE_ROWS)
        checks.append(check_inputs(sample))
        checks.append(check_target(data_view))
        seed_everything(seed)
        parts = build(hp, sample, models.model_id(cfg.model), cfg.scheduler.max_epochs)
        d = parts.data
        rows = np.random.default_rng(seed).permutation(len(d.x_train))[:512]
        x, y = torch.as_tensor(d.x_train[rows]), torch.as_tensor(d.y_train[rows])
        checks.append(check_initial_loss(parts, x, y))
        checks.append(check_gradients(parts, x, y))
        checks.append(check_memorise(cfg, hp, sample, models.model_id(cfg.model), seed))
    else:
        checks.append(check_target(data_view))
    checks.append(check_stable(cfg, point, space, dataset))
    return point, checks, time.perf_counter() - t0


SAMPLE_ROWS = 2048  # of a Dataset's training split, for the model checks


def _in_memory(data: Dataset, n: int) -> Dataset:
    """The first ``n`` training samples of ``data``'s torch Dataset as arrays."""
    import dataclasses

    assert data.sets is not None
    train = data.sets["train"]
    items = [train[i] for i in range(min(n, len(train)))]
    x = np.stack([np.asarray(item[0]) for item in items]).astype(np.float32)
    y = np.asarray([np.asarray(item[1]) for item in items])
    return dataclasses.replace(data, sets=None, x_train=x, y_train=y, x_val=x[:0], y_val=y[:0], x_test=x[:0],
                               y_test=y[:0], sample_shape=tuple(x.shape[1:]))


def _select(dataset: Dataset | Variants, hp: dict[str, Any]) -> Dataset:
    from orchestrator.train.data import select

    return select(dataset, hp)


def render(point: dict[str, Any], checks: list[Check], seconds: float) -> str:
    shown = ", ".join(f"{k}={_short(v)}" for k, v in point.items())
    lines = [f"Checks on one configuration of the space{': ' + shown if shown else ''}"]
    width = max(len(c.name) for c in checks)
    for c in checks:
        lines.append(f"  {c.verdict:<4}  {c.name:<{width}}  {c.detail}")
    failed = [c for c in checks if not c.ok]
    if failed:
        lines.append(f"{len(failed)} of {len(checks)} checks failed ({seconds:.1f}s): fix the config before a sweep.")
    else:
        lines.append(f"All {len(checks)} checks passed ({seconds:.1f}s).")
    return "\n".join(lines) + "\n"


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
