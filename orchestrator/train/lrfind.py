"""The learning-rate range test (``orch lr-find``): where training diverges, and the lr range to search.

One short training run from the config's starting point (every knob at its ``default``, else the
config's value, else the middle of its range on its own scale) while the learning rate grows
exponentially from ``min_lr`` to ``max_lr``, one step per mini-batch (Smith, "Cyclical learning
rates", 2017; fastai's ``lr_find``). The run stops once an exponential moving average of the loss
is far above its minimum.

The curve is then read with a centred running median (no lag, unlike the moving average, which
puts the divergence half a decade or more too late on a 100-step run): training diverged where it
first rises over 4x its lowest value so far, or back above its start after having halved. The best
learning rate is usually about half the one at which training diverges, so the suggested ``lr``
range ends there and reaches two decades below. The run is short (about 3 epochs) on purpose: a
longer one memorises the training rows, and a memorised loss no longer reacts to the learning rate.
The config's ``lr_schedule``, warm-up and batch growth play no part: the test sets the learning
rate of every step itself.

This module has no Ray import, and imports torch only to train.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from orchestrator.config import models
from orchestrator.errors import UserError

if TYPE_CHECKING:
    from orchestrator.config.schema import SweepConfig

BETA = 0.98  # the moving average that decides when to stop (about 50 steps: late, but only stops)
STOP_FACTOR = 4.0  # stop once that average is over this multiple of its minimum
DIVERGENCE_FACTOR = 4.0  # diverged: the centred running median is over this multiple of its minimum
WINDOW = 20  # the running median spans about 1/WINDOW of the steps (at least 5)
EPOCHS = 3  # the default number of steps covers about this many epochs ...
MIN_STEPS, MAX_STEPS = 100, 400  # ... within these bounds
FEWEST_STEPS = 10
SKIP_START = 10  # the steepest descent is looked for after the first 1/SKIP_START of the steps
BELOW_DIVERGENCE = 2.0  # the range ends at the divergence lr over this ...
DECADES = 2  # ... and starts this many decades lower
OUT_DIR = "lr_find"  # under the store root
HEADER = "# lr range found by `orch lr-find"


# -- the test ------------------------------------------------------------------------------------


def check_options(min_lr: float, max_lr: float, steps: int | None) -> None:
    """Raise UserError naming the option for a learning-rate range or step count that cannot run."""
    for option, value in (("--min-lr", min_lr), ("--max-lr", max_lr)):
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"{option}: must be a positive number (got {value:g})")
    if min_lr >= max_lr:
        raise UserError(f"--min-lr: must be below --max-lr (got --min-lr {min_lr:g}, --max-lr {max_lr:g})")
    if steps is not None and steps < FEWEST_STEPS:
        raise UserError(f"--steps: must be at least {FEWEST_STEPS} (got {steps})")


def starting_point(cfg: SweepConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The hyperparameters the test trains with, and the knobs among them that it chose
    (:meth:`Space.typical <orchestrator.space.space.Space.typical>`, without ``lr``)."""
    from orchestrator.space import space as spaces

    space = spaces.compile_space(cfg)
    point = space.typical()
    point.pop("lr", None)  # what the test varies
    return {**space.base, **point}, point


def default_steps(n_train: int, batch_size: int) -> int:
    """About ``EPOCHS`` epochs of full batches, at least ``MIN_STEPS``, at most ``MAX_STEPS``."""
    per_epoch = max(1, n_train // max(1, batch_size))
    return min(MAX_STEPS, max(MIN_STEPS, EPOCHS * per_epoch))


class Smoother:
    """Exponential moving average of the loss, bias-corrected (the first values are not pulled to 0)."""

    def __init__(self, beta: float = BETA) -> None:
        self.beta, self.avg, self.n = beta, 0.0, 0

    def __call__(self, loss: float) -> float:
        self.n += 1
        self.avg = self.beta * self.avg + (1.0 - self.beta) * loss
        return self.avg / (1.0 - self.beta**self.n)


def smooth(losses: Sequence[float] | np.ndarray) -> list[float]:
    """A centred running median over about 1/WINDOW of the steps: robust to single bad batches,
    and without the lag of a moving average. A non-finite loss counts as infinitely large."""
    import pandas as pd

    values = np.asarray(losses, dtype=np.float64)
    values = np.where(np.isnan(values), np.inf, values)
    width = max(5, len(values) // WINDOW) | 1  # odd
    return pd.Series(values).rolling(width, center=True, min_periods=1).median().tolist()


def stop_now(average: float, lowest: float) -> bool:
    """Stop the run: the moving average is not finite, or over ``STOP_FACTOR`` x its lowest so far."""
    return not math.isfinite(average) or average > STOP_FACTOR * lowest


def divergence_index(smoothed: Sequence[float] | np.ndarray) -> int | None:
    """The first step at which training diverged (the smoothed loss over ``DIVERGENCE_FACTOR`` x its
    lowest so far, or back above its start after having halved); None if it never did."""
    best, start = math.inf, None
    for i, value in enumerate(smoothed):
        if not math.isfinite(value) or value > DIVERGENCE_FACTOR * best:
            return i
        if start is None:
            start = value
        elif best < start / 2 and value > start:
            return i
        best = min(best, value)
    return None


@dataclass
class RangeTest:
    """What one range test recorded: per step the learning rate, the batch's loss and its smoothing."""

    study: str
    hp: dict[str, Any]  # the hyperparameters it trained with (``lr`` is min_lr)
    chosen: dict[str, Any]  # the knobs of the space among them, as chosen by starting_point
    min_lr: float
    max_lr: float
    steps: int  # planned; fewer were run when training diverged
    n_train: int
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0  # training time


def range_test(cfg: SweepConfig, min_lr: float, max_lr: float, steps: int | None = None) -> RangeTest:
    """Train on shuffled mini-batches of the training split (reshuffled every epoch), raising the
    learning rate from ``min_lr`` to ``max_lr`` exponentially; stop once training diverged."""
    import torch
    from torch import nn

    from orchestrator.train import data as data_mod
    from orchestrator.train import trainer
    from orchestrator.train.optim import clip_gradients

    check_options(min_lr, max_lr, steps)
    hp, chosen = starting_point(cfg)
    hp["lr"] = min_lr
    if cfg.trainable:
        raise UserError(f"trainable: orch lr-find runs orch's own trainer; {cfg.trainable} is a training function "
                        "of yours (run a learning-rate range test inside it)")
    data = data_mod.load(cfg, hp.get("scale"), hp.get("target_scale"))
    if not data.in_memory:
        raise UserError(f"data.factory: orch lr-find needs in-memory splits; {cfg.data.factory} returns torch "
                        "Datasets (return (x, y) tensors to use it)")
    torch.set_num_threads(cfg.train.threads or max(1, int(cfg.resources.cpu_per_trial)))  # as a trial
    gen = trainer.seed_everything(int(hp["seed"]), bool(hp.get("deterministic")))
    dev = trainer.device()
    parts = trainer.build(hp, data, models.model_id(cfg.model), cfg.scheduler.max_epochs, dev=dev)
    model, optimizer, loss_fn = parts.model, parts.optimizer, parts.loss
    x_train = torch.as_tensor(np.array(parts.data.x_train)).to(dev)
    y_train = torch.as_tensor(np.array(parts.data.y_train)).to(dev)
    n_train = len(x_train)
    batch_size = min(max(1, int(hp["batch_size"])), n_train)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        batch_size = max(batch_size, min(2, n_train))  # batch norm cannot train on a single row
    steps = steps or default_steps(n_train, batch_size)
    test = RangeTest(cfg.study, hp, chosen, min_lr, max_lr, steps, n_train)
    started = time.perf_counter()

    model.train()
    average, lowest = Smoother(), math.inf
    batches: list[torch.Tensor] = []
    for step in range(steps):
        if not batches:  # a new epoch: reshuffled, full batches only (as many as fit)
            order = torch.randperm(n_train, generator=gen).to(dev)
            batches = [order[i:i + batch_size] for i in range(0, n_train - batch_size + 1, batch_size)]
        idx = batches.pop(0)
        lr = min_lr * (max_lr / min_lr) ** (step / max(steps - 1, 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = loss_fn(model(x_train[idx]), y_train[idx])
        value = loss.item()
        ema = average(value)
        test.lrs.append(lr)
        test.losses.append(value)
        if stop_now(ema, lowest):
            break
        lowest = min(lowest, ema)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model.parameters(), hp)
        optimizer.step()
    test.seconds = time.perf_counter() - started
    return test


# -- the suggestion ------------------------------------------------------------------------------


def round_sig(x: float, digits: int = 2) -> float:
    return float(f"{x:.{digits}g}")


def number(x: float) -> str:
    """``x`` to 2 significant digits, as YAML reads a float back (``5.0e-05``, not the string ``5e-05``)."""
    mantissa, _, exponent = f"{x:.2g}".partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}e{exponent}" if exponent else mantissa


@dataclass
class Suggestion:
    """What a range test's curve says, and the ``lr`` range it suggests."""

    divergence_lr: float  # where training diverged (see divergence_index), else the last lr
    diverged: bool
    divergence_step: int  # index into the recorded steps
    min_loss_lr: float  # the lr at the lowest smoothed loss
    min_loss: float
    steepest_lr: float | None  # the steepest descent of the smoothed loss in log lr, before its minimum
    low: float
    high: float
    smoothed: list[float] = field(default_factory=list)  # the curve it read


def suggest(lrs: Sequence[float] | np.ndarray, losses: Sequence[float] | np.ndarray) -> Suggestion:
    """Read a range test's curve: the divergence, minimum and steepest-descent learning rates, and
    the suggested ``lr`` range ``[high / 100, divergence_lr / 2]`` (2 significant digits)."""
    lrs = np.asarray(lrs, dtype=np.float64)
    smoothed = np.asarray(smooth(losses), dtype=np.float64)
    if len(lrs) == 0 or len(lrs) != len(smoothed):
        raise ValueError(f"need one loss per learning rate (got {len(lrs)} lrs, {len(smoothed)} losses)")
    stop = divergence_index(smoothed)
    bad = np.flatnonzero(~np.isfinite(np.asarray(losses, dtype=np.float64)))
    if len(bad) and (stop is None or bad[0] < stop):
        stop = int(bad[0])  # a non-finite loss is divergence, even in one batch the median hides
    if stop == 0:
        raise UserError(f"--min-lr: the loss is not finite at the first step (lr {lrs[0]:.3g}); lower --min-lr")
    reached = stop is not None
    if stop is None:
        stop = len(lrs) - 1
    before = smoothed[:stop] if reached else smoothed
    i_min = int(np.argmin(before))
    steepest = None
    skip = min(len(lrs) // SKIP_START, i_min)  # the first smoothed values rest on a few batches: noise
    if i_min - skip >= 1:
        slope = np.gradient(smoothed[skip:i_min + 1], np.log(lrs[skip:i_min + 1]))
        steepest = float(lrs[skip + int(np.argmin(slope))])
    divergence_lr = float(lrs[stop])
    high = round_sig(divergence_lr / BELOW_DIVERGENCE)
    low = round_sig(high / 10**DECADES)
    return Suggestion(divergence_lr, reached, stop, float(lrs[i_min]), float(smoothed[i_min]), steepest, low, high,
                      smoothed.tolist())


def lr_spec(low: float, high: float, old: Any = None) -> dict[str, Any]:
    """The ``lr`` knob for ``[low, high]``: the old knob's tier (else A), its other keys (``when``,
    ``default`` only if it lies in the new range); its distribution replaced."""
    from orchestrator.space.distributions import BY_NAME, OPTIONS

    old = old if isinstance(old, dict) else {}
    spec: dict[str, Any] = {"loguniform": [low, high], "tier": old.get("tier") or "A"}
    for key, value in old.items():
        if key in BY_NAME or key in OPTIONS or key == "tier":  # the old distribution and its options
            continue
        if key == "default" and not (isinstance(value, (int, float)) and low <= value <= high):
            continue
        spec[key] = value
    return spec


def flow(value: Any) -> str:
    """One knob spec as a one-line YAML flow mapping (floats written so YAML reads them back)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip().removesuffix("...").strip()


# -- files ---------------------------------------------------------------------------------------


def write_csv(test: RangeTest, found: Suggestion, path: Path) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["step", "lr", "loss", "smoothed"])
        for i, (lr, loss, s) in enumerate(zip(test.lrs, test.losses, found.smoothed, strict=True)):
            out.writerow([i + 1, repr(lr), repr(loss), repr(s)])


def plot(test: RangeTest, found: Suggestion, path: Path) -> None:
    """Loss against lr (log axis), raw and smoothed; the divergence lr and the suggested range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs, raw, smoothed = np.array(test.lrs), np.array(test.losses), np.array(found.smoothed)
    fig, ax = plt.subplots(figsize=(8, 5))
    try:
        ax.plot(lrs, raw, color="tab:blue", alpha=0.3, linewidth=1, label="loss (per batch)")
        ax.plot(lrs, smoothed, color="tab:blue", linewidth=2, label="running median")
        ax.axvspan(found.low, found.high, color="tab:green", alpha=0.15,
                   label=f"suggested lr [{number(found.low)}, {number(found.high)}]")
        ax.axvline(found.divergence_lr, color="tab:red", linestyle="--",
                   label=f"{'diverged' if found.diverged else 'last'} lr {number(found.divergence_lr)}")
        ax.plot([found.min_loss_lr], [found.min_loss], "o", color="tab:orange",
                label=f"lowest smoothed loss at lr {number(found.min_loss_lr)}")
        ax.set_xscale("log")
        finite = smoothed[np.isfinite(smoothed)]
        finite_raw = raw[np.isfinite(raw)]
        if len(finite) and len(finite_raw):
            # Up to a little above the start (or the divergence): the losses after it may be far
            # off the scale, and would flatten the part of the curve that matters.
            upto = smoothed[: found.divergence_step + 1]
            upto = upto[np.isfinite(upto)]
            lo = min(finite_raw.min(), finite.min())
            hi = 1.5 * max(upto.max() if len(upto) else finite.max(), smoothed[0] if np.isfinite(smoothed[0]) else 0)
            pad = 0.05 * (hi - lo or 1.0)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title(f"{test.study}: learning-rate range test ({test.hp['optimizer']}, "
                     f"batch_size {test.hp['batch_size']})")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def write_space(path: Path, cfg: SweepConfig, low: float, high: float, config_name: str) -> tuple[dict[str, Any], int]:
    """Write a search space with ``lr`` set to ``[low, high]`` to ``path``; return the lr spec and
    the number of other knobs kept.

    Starts from ``path`` if it exists (its leading comments kept), else from the config's own space;
    other knobs keep their order. Written to a temporary file and renamed into place.
    """
    from orchestrator.space.space import load_space, parse_knob

    path = Path(path)
    comments: list[str] = []
    if path.exists():
        try:
            text = path.read_text()
            raw = yaml.safe_load(text) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UserError(f"--write: cannot read {path}: {str(err).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise UserError(f"--write: {path} is not a search space (a mapping of knobs)")
        for line in text.splitlines():
            if line.strip() and not line.startswith("#"):
                break
            if not line.startswith(HEADER):
                comments.append(line)
    else:
        raw = dict(load_space(cfg))
    spec = lr_spec(low, high, raw.get("lr"))
    parse_knob("lr", spec, "search_space.lr")  # raises ConfigError
    knobs = {**raw, "lr": spec} if "lr" in raw else {"lr": spec, **raw}  # lr keeps its place, else comes first
    width = max(len(str(k)) for k in knobs) + 2
    stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [f"{HEADER} {config_name}` on {stamp}"] + comments
    lines += [f"{str(k) + ':':<{width}}{flow(v)}" for k, v in knobs.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return spec, len(knobs) - 1


# -- the command ---------------------------------------------------------------------------------


@dataclass
class LRFind:
    test: RangeTest
    found: Suggestion
    tier: str
    plot: Path
    csv: Path
    space: Path | None = None
    space_lr: dict[str, Any] | None = None
    space_kept: int = 0


def run(cfg: SweepConfig, min_lr: float, max_lr: float, steps: int | None, out: Path, write: Path | None = None,
        config_name: str = "") -> LRFind:
    """The range test, its suggestion, the plot and the CSV in ``out``, and the space ``write``."""
    from orchestrator.space.space import load_space

    check_options(min_lr, max_lr, steps)
    test = range_test(cfg, min_lr, max_lr, steps)
    found = suggest(test.lrs, test.losses)
    old = load_space(cfg).get("lr")
    tier = (old.get("tier") if isinstance(old, dict) else None) or "A"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = LRFind(test, found, tier, out / f"{cfg.study}-lr-find.png", out / f"{cfg.study}-lr-find.csv")
    write_csv(test, found, result.csv)
    plot(test, found, result.plot)
    if write is not None:
        result.space = Path(write)
        result.space_lr, result.space_kept = write_space(result.space, cfg, found.low, found.high,
                                                         config_name or str(cfg.source_file))
    return result


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary(r: LRFind) -> str:
    """What ``orch lr-find`` prints."""
    t, f = r.test, r.found
    knobs = ", ".join(f"{k}={_value(v)}" for k, v in r.test.chosen.items())
    lines = [f"LR range test of {t.study}: {len(t.lrs)} of {t.steps} steps (batch_size {t.hp['batch_size']}, "
             f"{t.n_train} training rows), lr {t.min_lr:g} .. {t.max_lr:g}, {t.seconds:.1f}s"]
    if knobs:
        lines.append(f"Knobs (default, else the config's value, else mid-range): {knobs}")
    lines.append(f"Loss at the start:     {f.smoothed[0]:.4g}")
    lines.append(f"Lowest smoothed loss:  {f.min_loss:.4g} at lr {number(f.min_loss_lr)}")
    if f.steepest_lr is not None:
        lines.append(f"Steepest descent:      lr {number(f.steepest_lr)}")
    else:
        lines.append("Steepest descent:      none (the loss never went down: lower --min-lr)")
    if f.diverged:
        lines.append(f"Diverged at:           lr {number(f.divergence_lr)} (the loss rose over "
                     f"{DIVERGENCE_FACTOR:g}x its minimum, or back above its start, at step {f.divergence_step + 1})")
    else:
        lines.append(f"Not diverged:          the loss stayed below {DIVERGENCE_FACTOR:g}x its minimum "
                     f"up to lr {number(f.divergence_lr)}; the range below assumes it diverges there: raise --max-lr")
    lines.append(f"Suggested lr range: loguniform [{number(f.low)}, {number(f.high)}]")
    lines.append(f"lr: {{loguniform: [{number(f.low)}, {number(f.high)}], tier: {r.tier}}}")
    lines.append(f"Plot: {r.plot}")
    lines.append(f"CSV:  {r.csv}")
    if r.space is not None:
        lines.append(f"Wrote {r.space}: lr: {flow(r.space_lr)} (and {r.space_kept} other knobs as they were)")
    return "\n".join(lines) + "\n"


__all__ = ["range_test", "suggest", "run", "summary", "starting_point", "check_options", "write_space",
           "RangeTest", "Suggestion", "LRFind"]
