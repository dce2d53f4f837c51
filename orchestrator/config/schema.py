"""The config schema: typed sections, and one declaration per hyperparameter.

Every field a search space may vary is declared once, on its dataclass field, with :func:`hp`: its
value check, whether PBT may change it between two epochs (``mutable``) and whether it only says
how a trial runs (``runtime``: never searched or stored). Its store column type follows from its
annotation. A model's hyperparameters are its factory's keyword arguments
(:mod:`orchestrator.config.models`): checked by the factory itself, typed by their annotations,
mutable when the model registers them so.

Everything that needs "which hyperparameters are there" (config checks, the search space, PBT, the
store's column types, ``orch best``) asks :func:`hyperparameters`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.config import models
from orchestrator.config.checks import Check, boolean, in_range, one_of

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class Rule:
    """What the schema declares about one hyperparameter field."""

    check: Check | None
    mutable: bool = False  # PBT may change it between two epochs (model and data keep their shape)
    runtime: bool = False  # how a trial runs, not what it learns: never searched or stored


def hp(default: Any, check: Check | None = None, *, mutable: bool = False,
       runtime: bool = False) -> Any:
    """A dataclass field that is a hyperparameter: its default, its check and its nature."""
    return field(default=default, metadata={"hp": Rule(check, mutable, runtime)})


TASKS = ("classification", "regression")
SCALERS = ("standard", "minmax", "quantile", "none")
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "step", "cosine", "onecycle", "plateau")
LOSSES = ("auto", "cross_entropy", "bce", "mse", "mae", "huber")
CLASSIFICATION_LOSSES = ("cross_entropy", "bce")
CLASS_WEIGHTS = ("none", "auto")
CLIP_MODES = ("norm", "value")
# The names of orchestrator.tune.schedulers.SCHEDULERS and orchestrator.tune.searchers.SEARCHERS,
# here so that loading a config does not import Ray (a test keeps them equal).
SCHEDULER_NAMES = ("asha", "fifo", "hyperband", "median", "pbt", "pb2")
SEARCHER_NAMES = ("random", "tpe", "grid")


DATA_LOAD_IN = ("driver", "trial")


@dataclass
class DataConfig:
    source: str | None = None  # "sklearn:<name>"
    path: str | None = None  # CSV or Parquet file
    # A function of the user's ("package.module:function") returning the splits (see
    # orchestrator/train/data.py, from_factory), called with ``args`` as keyword arguments.
    factory: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    # Driver: load once and share through Ray's object store; trial: each trial calls the factory
    # (data too large for the driver, read from a path every node sees).
    load_in: str = "driver"
    num_workers: int = 0  # DataLoader worker processes per trial (factory data as torch Datasets)
    target: str | None = None
    task: str | None = None  # classification | regression | None (inferred)
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    # Settings a search space may vary too (the sweep prepares one copy of the data per value).
    scale: str = hp("standard", one_of(SCALERS))  # features: standard | minmax | quantile | none
    # Regression targets (metrics stay in the target's units).
    target_scale: str = hp("standard", one_of(SCALERS))
    seed: int = 0


@dataclass
class TrainConfig:
    # Optimiser.
    optimizer: str = hp("adam", one_of(OPTIMIZERS))  # sgd | adam | adamw
    lr: float = hp(1.0e-3, in_range(0, lo_open=True), mutable=True)
    weight_decay: float = hp(0.0, in_range(0), mutable=True)
    momentum: float = hp(0.9, in_range(0, 1, hi_open=True), mutable=True)  # sgd
    nesterov: bool = hp(False, boolean, mutable=True)  # sgd
    beta1: float = hp(0.9, in_range(0, 1, hi_open=True), mutable=True)  # adam, adamw
    beta2: float = hp(0.999, in_range(0, 1, hi_open=True), mutable=True)
    eps: float = hp(1.0e-8, in_range(0, lo_open=True), mutable=True)
    # Learning-rate schedule, over scheduler.max_epochs; warm-up goes in front of any of them.
    # Constant | step | cosine | onecycle | plateau
    lr_schedule: str = hp("constant", one_of(LR_SCHEDULES))
    warmup_epochs: float = hp(0.0, in_range(0))  # linear warm-up from ~0 to lr
    lr_step_epochs: int = hp(10, in_range(1))  # step: decay every this many epochs
    # Step and plateau: the decay factor
    lr_gamma: float = hp(0.1, in_range(0, 1, lo_open=True, hi_open=True), mutable=True)
    # Plateau: epochs without improvement of the objective before decaying
    plateau_patience: int = hp(3, in_range(1))
    lr_min_ratio: float = hp(0.0, in_range(0, 1))  # cosine: the final lr as a fraction of lr
    # None: no clipping
    grad_clip: float | None = hp(1.0, in_range(0, lo_open=True, allow_none=True), mutable=True)
    # Norm (global L2 norm) | value (each element)
    grad_clip_by: str = hp("norm", one_of(CLIP_MODES))
    # Loss.
    loss: str = hp("auto", one_of(LOSSES))  # auto | cross_entropy | bce | mse | mae | huber
    # In standardised target units
    huber_delta: float = hp(1.0, in_range(0, lo_open=True), mutable=True)
    # None | auto (inverse class frequency)
    class_weights: str = hp("none", one_of(CLASS_WEIGHTS), mutable=True)
    label_smoothing: float = hp(0.0, in_range(0, 1, hi_open=True), mutable=True)
    # Batches.
    batch_size: int = hp(64, in_range(1), mutable=True)
    shuffle: bool = hp(True, boolean)  # reshuffle every epoch
    # Double the batch size every N epochs ...
    batch_growth_every: int | None = hp(None, in_range(1, allow_none=True))
    batch_size_max: int = hp(1024, in_range(1))  # ... up to this
    # Early stopping inside the trial, on the objective.
    patience: int | None = hp(None, in_range(1, allow_none=True))  # in epochs; None: off
    min_delta: float = hp(0.0, in_range(0))
    # Diagnostics: a trial whose training loss grows past this multiple of its first loss diverged.
    divergence_factor: float | None = hp(10.0, in_range(1, lo_open=True, allow_none=True))
    # Determinism.
    seed: int = hp(0, in_range(0))  # torch, numpy, python and the batch order
    deterministic: bool = hp(False, boolean)  # torch.use_deterministic_algorithms (slower on GPU)
    # How a trial runs, not what it learns (never searched or stored).
    # Epochs between checkpoints (resume granularity; pbt: its interval)
    checkpoint_every: int = hp(5, in_range(1), runtime=True)
    # Per trial; None keeps all (pbt exploits never lose one)
    keep_checkpoints: int | None = hp(1, in_range(1, allow_none=True), runtime=True)
    # Torch threads per trial; default: the trial's CPUs
    threads: int | None = hp(None, in_range(1, allow_none=True), runtime=True)




@dataclass
class ObjectiveConfig:
    metric: str = "val_loss"
    mode: str = "min"


@dataclass
class SchedulerConfig:
    name: str = "asha"
    max_epochs: int = 30
    # Epochs before ASHA's (or median stopping's) first decision; None: a fifth of max_epochs, at
    # least 2 (see grace_period_of)
    grace_period: int | None = None
    reduction_factor: float = 3.0
    min_samples: int = 3  # median stopping: trials needed before it compares
    # Population-based training (pbt, pb2): the population is search.num_samples trials.
    perturbation_interval: int = 4  # epochs between exploit/explore steps (and checkpoints)
    quantile_fraction: float = 0.25  # the bottom fraction copies the top fraction
    resample_probability: float = 0.25  # pbt: a mutable knob is resampled instead of perturbed
    # Pbt: x on the knob's scale
    perturbation_factors: list[float] = field(default_factory=lambda: [1.2, 0.8])
    synch: bool = False  # wait for the whole population at each step


@dataclass
class SearchConfig:
    algorithm: str = "random"
    num_samples: int = 64
    seed: int = 0
    max_concurrent: int | None = None
    # Known good configs (knob -> value) to try before sampling: a list of mappings.
    points_to_evaluate: Any = None
    # Tune only knobs of these tiers (A-D); hold the rest at their default
    tiers: list[str] | None = None
    stages: int = 1  # coarse-to-fine: each stage after the first zooms in on the best trials so far
    top_k: int | None = None  # trials a zoom keeps; default: the best 10% (at least 3)
    # A zoomed range is widened by this fraction of the full range on each side
    zoom_margin: float = 0.1
    time_budget_s: float | None = None  # stop the sweep after this long (running trials stop too)


@dataclass
class ResourcesConfig:
    cpu_per_trial: float = 1.0
    gpu_per_trial: float = 0.0
    # On a cluster: how long a sweep waits for a node with one trial's resources (it may scale up).
    wait_s: float = 600.0


@dataclass
class RayConfig:
    # None: join $RAY_ADDRESS in a Ray Job, else the warm local Ray of `orch up` if one runs, else
    # start an embedded Ray on 127.0.0.1; "local": always an embedded one; "auto" or HOST:PORT: a cluster
    address: str | None = None
    num_cpus: int | None = None  # embedded Ray only; default: all cores
    num_gpus: int | None = None
    # An IP address; one other than loopback needs expose_dashboard
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265
    # The dashboard (and its Jobs API) on an address other than loopback is reachable from other
    # machines: only when the user says so here (token authentication still applies).
    expose_dashboard: bool = False
    # One Ray actor trains many trials of a sweep in turn, or (false) each trial gets an actor of
    # its own, named for it in the dashboard, for a new worker process per trial (about 3.7 s each
    # on a 2-CPU machine, mostly importing torch: BENCHMARKS.md).
    reuse_actors: bool = True


@dataclass
class FailureConfig:
    # A trial whose worker or node is lost is restarted from its last checkpoint this many times.
    # An exception raised by the training itself is not retried: it is recorded as an error.
    max_retries: int = 2


@dataclass
class StoreConfig:
    path: str = "results"
    # The best trials whose model (weights, config, fitted preprocessing) the store keeps
    # (<store>/models/<study>/<sweep_id>/<trial_id>/); 0: none.
    keep_models: int = 3


@dataclass
class RetuneConfig:
    max_age_days: float = 90.0  # stale when the last sweep is older than this
    on_data_change: bool = True  # stale when the data's fingerprint changed
    drift_check: bool = True  # re-train the best config on today's data (one trial) and compare
    # Stale when that is worse than the recorded best by this (relative)
    drift_tolerance: float = 0.02
    drift_floor: float | None = None  # ... or worse than this absolute value of the objective
    on_code_change: bool = False  # stale when the model or trainer code changed
    num_samples: int | None = None  # trials of a re-tune sweep; default: the study's own
    top_k: int = 5  # previous best configs that go first, and that the space is zoomed around


@dataclass
class MlflowConfig:
    # MLflow's tracking URI (a server, a database, a path); None: a SQLite database in <store>/mlruns/
    # (artefacts beside it) when the store is local, else MLflow's own default.
    uri: str | None = None
    experiment: str | None = None  # None: the study name


@dataclass
class TensorboardConfig:
    # Each trial's event files go to <dir>/<study>/<sweep_id>/<trial_id>/; None: <store>/tensorboard.
    dir: str | None = None


@dataclass
class TrackingConfig:
    # Each: true (its defaults), a mapping of its keys (MlflowConfig, TensorboardConfig), or
    # false/null (off). Written by the driver as the sweep runs (orchestrator/tune/tracking.py).
    mlflow: Any = None
    tensorboard: Any = None


@dataclass
class SweepConfig:
    study: str = "???"
    base: Any = None  # a path (or list of paths) of configs this one extends
    data: DataConfig = field(default_factory=DataConfig)
    # name: a shipped model (default mlp), or factory: "package.module:function"; then its hyperparameters.
    model: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    # The training function, "package.module:function" called as fn(config, ctx) (see
    # orchestrator/train/context.py); None: orch's own trainer.
    trainable: str | None = None
    # Hyperparameters of the user's own code (a trainable's, a data factory's): name -> default.
    params: dict[str, Any] = field(default_factory=dict)
    # The directory the import paths above resolve from first; None: the directory orch runs in
    # (a sweep records it, so that a resume or a re-tune from elsewhere imports the same code).
    project: str | None = None
    # Written by orch with a sweep whose model is a factory of the user's: its hyperparameters
    # (name -> [default, annotation, mutable]), so that readers of the store need not import it.
    model_signature: dict[str, Any] | None = None
    search_space: Any = None  # path of a search-space YAML file, or the space inline
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    failure: FailureConfig = field(default_factory=FailureConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    retune: RetuneConfig = field(default_factory=RetuneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # The user's own Ray Tune callbacks: "package.module:Class" (a ray.tune.Callback subclass),
    # each instantiated with no arguments and run in the driver after orch's own.
    callbacks: list[str] = field(default_factory=list)

    # Filled by load(), not by the user.
    source_file: str | None = None


FILE_FORMATS = (".csv", ".parquet", ".pq")  # data.path
# scikit-learn datasets that ship inside its package (no download): data.source "sklearn:<name>".
BUNDLED_DATASETS = {"digits": "classification", "breast_cancer": "classification",
                    "iris": "classification", "wine": "classification", "diabetes": "regression"}
TIERS = ("A", "B", "C", "D")  # importance tiers of a search space's knobs (A: tune first)


def grace_period_of(s: SchedulerConfig) -> int:
    """The scheduler's grace period: ``scheduler.grace_period``, else a fifth of ``max_epochs``
    (at least 2, at most ``max_epochs``).

    A first rung too early stops the slow starters, which are often the eventual winners: a large
    batch or a small learning rate takes few steps per epoch. On digits (32 configs x 20 epochs),
    the config the full budget found best ranked 14th of 32 at epoch 2 and first from epoch 4;
    ASHA with a grace period of 2 stopped it, with 4 it kept it (BENCHMARKS.md, time to quality).
    """
    if s.grace_period is not None:
        return s.grace_period
    return max(1, min(s.max_epochs, max(2, round(s.max_epochs / 5))))


def asha_rungs(max_epochs: int, grace_period: int, reduction_factor: float) -> list[int]:
    """The epochs at which ASHA compares trials: Ray Tune's ``AsyncHyperBandScheduler`` with one
    bracket places its rungs at ``grace_period * reduction_factor**k`` up to ``max_epochs`` and
    decides at the first report at or past each, so a fractional rung is the next whole epoch.

    The scheduler's decision epochs and the report's rung lines both come from here.
    """
    n = int(math.log(max_epochs / grace_period) / math.log(reduction_factor) + 1)
    return sorted({math.ceil(grace_period * reduction_factor**k - 1e-9) for k in range(max(n, 0))})


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter of a config, whatever section holds it."""

    name: str
    section: str  # "train", "data" or "model"
    default: Any
    annotation: str  # the Python annotation, as text (decides the store column type)
    check: Check | None  # None for a model's: the model factory is its check
    mutable: bool = False
    declared: Any = None  # the default its declaration gives (the type's fallback: not the config's)


def _declared(cls: type) -> dict[str, tuple[dataclasses.Field, Rule]]:
    return {f.name: (f, f.metadata["hp"]) for f in dataclasses.fields(cls) if "hp" in f.metadata}


def rules(section: str) -> dict[str, Rule]:
    """The declared rule of each hyperparameter field of ``train`` or ``data`` (runtime ones too)."""
    cls = {"train": TrainConfig, "data": DataConfig}[section]
    return {name: rule for name, (_, rule) in _declared(cls).items()}


RUNTIME_FIELDS = tuple(n for n, r in rules("train").items() if r.runtime)


def hyperparameters(cfg: SweepConfig) -> dict[str, Hyperparameter]:
    """Every tunable hyperparameter of ``cfg``: train, data, then the model's, with its default as
    ``cfg`` sets it."""
    out: dict[str, Hyperparameter] = {}
    for section, cls, values in (("train", TrainConfig, cfg.train), ("data", DataConfig, cfg.data)):
        for name, (f, rule) in _declared(cls).items():
            if not rule.runtime:
                out[name] = Hyperparameter(name, section, getattr(values, name), str(f.type),
                                           rule.check, rule.mutable, f.default)
    for name, (default, annotation, is_mutable) in model_signature(cfg).items():
        value = cfg.model.get(name, default)
        out[name] = Hyperparameter(name, "model", value, annotation, None, is_mutable, default)
    for name, value in (cfg.params or {}).items():
        # The user's code applies them itself (after a PBT exploit too): any of them may change.
        out[name] = Hyperparameter(name, "params", value, type(value).__name__, None, True, value)
    return out


def model_signature(cfg: SweepConfig) -> dict[str, tuple[Any, str, bool]]:
    """The model's hyperparameters -> (default, annotation, mutable): as recorded with a sweep
    read from the store (no import of the user's code), else from the factory."""
    if cfg.model_signature is not None and models.is_path(models.model_id(cfg.model)):
        return {k: (v[0], str(v[1]), bool(v[2])) for k, v in cfg.model_signature.items()}
    model = models.model_id(cfg.model)
    mutable = models.mutable(model)
    return {name: (default, annotation, name in mutable)
            for name, (default, annotation) in models.signature(model).items()}


def hyperparameter_names(cfg: SweepConfig) -> dict[str, str]:
    """Every tunable name -> the config section that holds it ("train", "model", "data" or "params")."""
    return {name: h.section for name, h in hyperparameters(cfg).items()}


def base_hyperparameters(cfg: SweepConfig) -> dict[str, Any]:
    """The values every trial starts from: model defaults, the model section, train and data."""
    hps = hyperparameters(cfg)
    order = ("model", "train", "data", "params")  # the order trials have always seen them in
    return {n: h.default for s in order for n, h in hps.items() if h.section == s}


def mutable_names(cfg: SweepConfig) -> frozenset[str]:
    """Hyperparameters PBT may change between two epochs of a trial."""
    return frozenset(n for n, h in hyperparameters(cfg).items() if h.mutable)


def arrow_type(annotation: str, default: Any) -> pa.DataType | None:
    """The store column type of a hyperparameter (lists and mappings are stored as JSON text)."""
    import pyarrow as pa

    if "list" in annotation or "dict" in annotation:
        return pa.string()
    for word, typ in (("bool", pa.bool_()), ("float", pa.float64()), ("int", pa.int64()),
                      ("str", pa.string())):
        if word in annotation:
            return typ
    if isinstance(default, bool):
        return pa.bool_()
    if isinstance(default, (int, float)):
        return pa.float64() if isinstance(default, float) else pa.int64()
    return None


def hyperparameter_types(cfg: SweepConfig) -> dict[str, pa.DataType]:
    """Store column -> Arrow type for every ``config.<name>`` column (stable across sweeps)."""
    types = {f"config.{n}": arrow_type(h.annotation, h.declared)
             for n, h in hyperparameters(cfg).items()}
    return {k: v for k, v in types.items() if v is not None}


# -- experiment tracking and the user's callbacks ------------------------------------------------

# tracking.<name>: its settings class, the package it needs, and the extra that installs it.
TRACKERS: dict[str, tuple[type, str, str]] = {
    "mlflow": (MlflowConfig, "mlflow", "mlflow"),
    "tensorboard": (TensorboardConfig, "tensorboard", "tensorboard"),
}


def tracker(cfg: SweepConfig, name: str) -> Any:
    """``tracking.<name>`` as its settings (an :class:`MlflowConfig` or a :class:`TensorboardConfig`),
    or None when it is off.

    Raises:
        ConfigError: naming the key: not true/false/null or a mapping, an unknown key, a value
            that is not a non-empty string.
    """
    from collections.abc import Mapping

    from orchestrator.config.checks import did_you_mean, fail

    cls = TRACKERS[name][0]
    key = f"tracking.{name}"
    value = getattr(cfg.tracking, name)
    valid = [f.name for f in dataclasses.fields(cls)]
    if value is None or value is False:
        return None
    if value is True:
        return cls()
    if not isinstance(value, Mapping):
        fail(key, f"true, false, or a mapping of {', '.join(valid)}", value)
    for k, v in value.items():
        if k not in valid:
            fail(f"{key}.{k}", f"unknown key{did_you_mean(str(k), valid)}; valid: {', '.join(valid)}", k)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            fail(f"{key}.{k}", "a non-empty string (or null for the default)", v)
    return cls(**{str(k): v for k, v in value.items()})


def _installed(package: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # (a module set to None, or one without a spec)
        return False


def check_tracking(cfg: SweepConfig) -> None:
    """The ``tracking`` section and the ``callbacks`` list, before anything runs: each tracker's
    keys and its package (an extra of orch's), and each callback's import path, class and
    constructor.

    Raises:
        ConfigError: naming the key (``tracking.mlflow``, ``callbacks[1]``, ...).
    """
    from orchestrator.errors import ConfigError

    if not isinstance(cfg.tracking, TrackingConfig):
        from orchestrator.config.checks import fail

        fail("tracking", "a mapping of mlflow and tensorboard", cfg.tracking)
    for name, (_, package, extra) in TRACKERS.items():
        if tracker(cfg, name) is not None and not _installed(package):
            raise ConfigError(f"tracking.{name}: the {package} package is not installed; "
                              f"pip install 'orch[{extra}]'")
    callback_classes(cfg)


def callback_classes(cfg: SweepConfig) -> list[type]:
    """The classes ``callbacks`` names, in order: each a ``ray.tune.Callback`` subclass that takes
    no arguments.

    Raises:
        ConfigError: naming ``callbacks[i]`` and its value: an import path that does not import,
            something that is not such a class.
    """
    import inspect
    import sys

    from orchestrator.config.checks import fail
    from orchestrator.config.imports import import_object

    if not isinstance(cfg.callbacks, (list, tuple)):
        fail("callbacks", "a list of import paths 'package.module:Class'", cfg.callbacks)
    classes = []
    for i, spec in enumerate(cfg.callbacks):
        key = f"callbacks[{i}]"
        value = import_object(spec, key)
        # A subclass of Ray Tune's Callback was defined by a module that imported Ray Tune: when
        # none did, it cannot be one (and checking costs no import of Ray).
        tune_callback = getattr(sys.modules.get("ray.tune.callback"), "Callback", None)
        if not (isinstance(value, type) and tune_callback is not None and issubclass(value, tune_callback)):
            what = f"the class {value.__name__}" if isinstance(value, type) else f"a {type(value).__name__}"
            fail(key, f"is {what}, not a subclass of ray.tune.Callback", spec)
        try:
            inspect.signature(value).bind()
        except TypeError:
            fail(key, f"{value.__name__} must take no arguments (orch calls {value.__name__}())", spec)
        except ValueError:
            pass  # (no signature to read: it is called as it is)
        classes.append(value)
    return classes
