"""Sweep configs: YAML (with base configs) merged onto a typed schema, then command-line overrides.

``load(path, overrides)`` returns a validated :class:`SweepConfig`. Every problem is a
:class:`~orchestrator.errors.ConfigError` whose one-line message names the file, the full key and
the bad value, so the CLI can print it and exit 2 before anything is started or written.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from orchestrator.errors import ConfigError
from orchestrator.names import check_name, shown

TASKS = ("classification", "regression")
SCALERS = ("standard", "minmax", "quantile", "none")
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "step", "cosine", "onecycle", "plateau")
LOSSES = ("auto", "cross_entropy", "bce", "mse", "mae", "huber")
CLASSIFICATION_LOSSES = ("cross_entropy", "bce")
CLASS_WEIGHTS = ("none", "auto")
CLIP_MODES = ("norm", "value")
# The names of orchestrator.schedulers.SCHEDULERS and orchestrator.searchers.SEARCHERS, here so
# that loading a config does not import Ray (a test keeps them equal).
SCHEDULER_NAMES = ("asha", "fifo", "hyperband", "median", "pbt", "pb2")
SEARCHER_NAMES = ("random", "tpe", "grid")


@dataclass
class DataConfig:
    source: str | None = None  # "sklearn:<name>"
    path: str | None = None  # CSV or Parquet file
    target: str | None = None
    task: str | None = None  # classification | regression | None (inferred)
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    scale: str = "standard"  # features: standard | minmax | quantile | none
    target_scale: str = "standard"  # regression targets (metrics stay in the target's units)
    seed: int = 0


@dataclass
class TrainConfig:
    # Optimiser.
    optimizer: str = "adam"  # sgd | adam | adamw
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    beta1: float = 0.9  # adam, adamw
    beta2: float = 0.999
    eps: float = 1.0e-8
    # Learning-rate schedule, over scheduler.max_epochs; warm-up goes in front of any of them.
    lr_schedule: str = "constant"  # constant | step | cosine | onecycle | plateau
    warmup_epochs: float = 0.0  # linear warm-up from ~0 to lr
    lr_step_epochs: int = 10  # step: decay every this many epochs
    lr_gamma: float = 0.1  # step and plateau: the decay factor
    plateau_patience: int = 3  # plateau: epochs without improvement of the objective before decaying
    lr_min_ratio: float = 0.0  # cosine: the final lr as a fraction of lr
    grad_clip: float | None = 1.0  # None: no clipping
    grad_clip_by: str = "norm"  # norm (global L2 norm) | value (each element)
    # Loss.
    loss: str = "auto"  # auto | cross_entropy | bce | mse | mae | huber
    huber_delta: float = 1.0  # in standardised target units
    class_weights: str = "none"  # none | auto (inverse class frequency)
    label_smoothing: float = 0.0
    # Batches.
    batch_size: int = 64
    shuffle: bool = True  # reshuffle every epoch
    batch_growth_every: int | None = None  # double the batch size every N epochs ...
    batch_size_max: int = 1024  # ... up to this
    # Early stopping inside the trial, on the objective.
    patience: int | None = None  # in epochs; None: off
    min_delta: float = 0.0
    # Diagnostics: a trial whose training loss grows past this multiple of its first loss diverged.
    divergence_factor: float | None = 10.0
    # Determinism.
    seed: int = 0  # torch, numpy, python and the batch order
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    # How a trial runs, not what it learns (never searched or stored).
    checkpoint_every: int = 5  # epochs between checkpoints (resume granularity; pbt: its interval)
    keep_checkpoints: int | None = 1  # per trial; None keeps all (pbt exploits never lose one)
    threads: int | None = None  # torch threads per trial; default: the trial's CPUs


@dataclass
class ObjectiveConfig:
    metric: str = "val_loss"
    mode: str = "min"


@dataclass
class SchedulerConfig:
    name: str = "asha"
    max_epochs: int = 30
    grace_period: int = 2
    reduction_factor: float = 3.0
    min_samples: int = 3  # median stopping: trials needed before it compares
    # Population-based training (pbt, pb2): the population is search.num_samples trials.
    perturbation_interval: int = 4  # epochs between exploit/explore steps (and checkpoints)
    quantile_fraction: float = 0.25  # the bottom fraction copies the top fraction
    resample_probability: float = 0.25  # pbt: a mutable knob is resampled instead of perturbed
    perturbation_factors: list[float] = field(default_factory=lambda: [1.2, 0.8])  # pbt: x on the knob's scale
    synch: bool = False  # wait for the whole population at each step


@dataclass
class SearchConfig:
    algorithm: str = "random"
    num_samples: int = 64
    seed: int = 0
    max_concurrent: int | None = None
    # Known good configs (knob -> value) to try before sampling: a list of mappings.
    points_to_evaluate: Any = None
    tiers: list[str] | None = None  # tune only knobs of these tiers (A-D); hold the rest at their default
    stages: int = 1  # coarse-to-fine: each stage after the first zooms in on the best trials so far
    top_k: int | None = None  # trials a zoom keeps; default: the best 10% (at least 3)
    zoom_margin: float = 0.1  # a zoomed range is widened by this fraction of the full range on each side
    time_budget_s: float | None = None  # stop the sweep after this long (running trials stop too)


@dataclass
class ResourcesConfig:
    cpu_per_trial: float = 1.0
    gpu_per_trial: float = 0.0
    # On a cluster: how long a sweep waits for a node with one trial's resources (it may scale up).
    wait_s: float = 600.0


@dataclass
class RayConfig:
    address: str | None = None  # None: start an embedded Ray on 127.0.0.1 (or join $RAY_ADDRESS in a Ray Job)
    num_cpus: int | None = None  # embedded Ray only; default: all cores
    num_gpus: int | None = None
    dashboard_host: str = "127.0.0.1"  # an IP address; one other than loopback needs expose_dashboard
    dashboard_port: int = 8265
    # The dashboard (and its Jobs API) on an address other than loopback is reachable from other
    # machines: only when the user says so here (token authentication still applies).
    expose_dashboard: bool = False
    # One Ray actor trains many trials of a sweep in turn, or (false) each trial gets an actor of its
    # own, named for it in the dashboard, for a new worker process per trial (about 3.7 s each on a
    # 2-CPU machine, mostly importing torch: BENCHMARKS.md).
    reuse_actors: bool = True


@dataclass
class FailureConfig:
    # A trial whose worker or node is lost is restarted from its last checkpoint this many times.
    # An exception raised by the training itself is not retried: it is recorded as an error.
    max_retries: int = 2


@dataclass
class StoreConfig:
    path: str = "results"


@dataclass
class RetuneConfig:
    max_age_days: float = 90.0  # stale when the last sweep is older than this
    on_data_change: bool = True  # stale when the data's fingerprint changed
    drift_check: bool = True  # re-train the best config on today's data (one trial) and compare
    drift_tolerance: float = 0.02  # stale when that is worse than the recorded best by this (relative)
    drift_floor: float | None = None  # ... or worse than this absolute value of the objective
    on_code_change: bool = False  # stale when the model or trainer code changed
    num_samples: int | None = None  # trials of a re-tune sweep; default: the study's own
    top_k: int = 5  # previous best configs that go first, and that the space is zoomed around


@dataclass
class SweepConfig:
    study: str = "???"
    base: Any = None  # a path (or list of paths) of configs this one extends
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "mlp"})
    train: TrainConfig = field(default_factory=TrainConfig)
    search_space: Any = None  # path of a search-space YAML file, or the space inline
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    failure: FailureConfig = field(default_factory=FailureConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    retune: RetuneConfig = field(default_factory=RetuneConfig)

    # Filled by load(), not by the user.
    source_file: str | None = None


def _schema_at(path: list[str]) -> type | None:
    """The dataclass that holds the keys under ``path`` (e.g. ["train"] -> TrainConfig)."""
    cls: Any = SweepConfig
    for part in path:
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if part not in fields:
            return None
        cls = fields[part].type
        cls = globals().get(cls, cls) if isinstance(cls, str) else cls
    return cls if dataclasses.is_dataclass(cls) else None


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _omegaconf_message(err: OmegaConfBaseException, where: str) -> str:
    full_key = getattr(err, "full_key", None) or ""
    if isinstance(err, ConfigKeyError) and full_key:
        parts = full_key.split(".")
        schema = _schema_at(parts[:-1])
        valid = [f.name for f in dataclasses.fields(schema) if f.name != "source_file"] if schema else []
        prefix = ".".join(parts[:-1] + [""])
        hint = did_you_mean(parts[-1], valid).replace("'", f"'{prefix}", 1) if valid else ""
        if not hint and valid:
            hint = f" (valid keys: {', '.join(valid)})"
        return f"{where}: unknown key '{full_key}'{hint}"
    msg = str(err).splitlines()[0].strip()
    if isinstance(err, ValidationError) and full_key:
        return f"{where}: {full_key}: {msg}"
    return f"{where}: {f'{full_key}: ' if full_key else ''}{msg}"


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{line}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(data).__name__}")
    return data


def _layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """The config at ``path`` and its base configs, base first."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"{path}: base configs form a cycle: {chain}")
    data = _read_yaml(path)
    bases = data.pop("base", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: base: expected a path or a list of paths, got {bases!r}")
    layers: list[tuple[Path, dict[str, Any]]] = []
    for base in bases:
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            raise ConfigError(f"{path}: base: file not found: {base} (looked at {base_path})")
        layers.extend(_layers(base_path, (*seen, path)))
    layers.append((path, data))
    return layers


def _parse_overrides(overrides: list[str] | tuple[str, ...]) -> list[str]:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}': expected key=value (e.g. search.num_samples=8)")
    return list(overrides)


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Load a sweep config: base configs, then the file, then ``key=value`` overrides; validate.

    Args:
        path: the YAML config file.
        overrides: dotlist overrides from the command line, applied last.

    Raises:
        ConfigError: on any unknown key, wrong type, out-of-range value or missing file.
    """
    path = Path(path)
    merged: DictConfig = OmegaConf.structured(SweepConfig)
    for layer_path, data in _layers(path):
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(data))
        except OmegaConfBaseException as err:
            raise ConfigError(_omegaconf_message(err, str(layer_path))) from None
    try:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(_parse_overrides(overrides)))
    except OmegaConfBaseException as err:
        raise ConfigError(_omegaconf_message(err, "command line")) from None
    try:
        cfg: SweepConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise ConfigError(_omegaconf_message(err, str(path))) from None
    cfg.source_file = str(path.resolve())
    cfg.model = _plain(cfg.model)
    cfg.search_space = _plain(cfg.search_space)
    cfg.search.points_to_evaluate = _plain(cfg.search.points_to_evaluate)
    validate(cfg)
    return cfg


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def to_yaml(cfg: SweepConfig) -> str:
    """The resolved config as YAML text (what the store records for each sweep)."""
    from orchestrator.spaces import load_space

    data = dataclasses.asdict(cfg)
    # Inline the search space, so the text alone reproduces the sweep (resume, re-tune, `orch best`).
    data["search_space"] = load_space(cfg) or None
    data.pop("base", None)
    data.pop("source_file", None)
    if cfg.data.path:  # absolute, so that the text works from any directory (re-tunes from cron)
        data["data"]["path"] = str(resolve_path(cfg, cfg.data.path).resolve())
    return yaml.safe_dump(data, sort_keys=False)


def from_yaml(text: str) -> SweepConfig:
    """Rebuild a config from :func:`to_yaml` output (used on resume and by ``orch best``)."""
    merged = OmegaConf.merge(OmegaConf.structured(SweepConfig), OmegaConf.create(yaml.safe_load(text)))
    cfg: SweepConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    cfg.model = _plain(cfg.model)
    cfg.search_space = _plain(cfg.search_space)
    cfg.search.points_to_evaluate = _plain(cfg.search.points_to_evaluate)
    return cfg


# ---------------------------------------------------------------------------------------------
# Validation: each check names the full key and the bad value.


def _fail(key: str, problem: str, value: Any) -> None:
    raise ConfigError(f"{key}: {problem} (got {shown(value)})")


def _check_range(key: str, value: float | None, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False, allow_none: bool = False) -> None:
    if value is None:
        if allow_none:
            return
        _fail(key, "a value is required", value)
    ok = True
    if lo is not None:
        ok &= value > lo if lo_open else value >= lo
    if hi is not None:
        ok &= value < hi if hi_open else value <= hi
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        _fail(key, f"must be in {left}{lo_s}, {hi_s}{right}", value)


def _check_choice(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        hint = did_you_mean(str(value), choices)
        _fail(key, f"unknown value{hint}; valid: {', '.join(choices)}", value)


# The value rules of ``train:``, also applied to every value a search-space knob can take.
TRAIN_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "optimizer": lambda k, v: _check_choice(k, v, OPTIMIZERS),
    "lr": lambda k, v: _check_range(k, v, 0, None, lo_open=True),
    "weight_decay": lambda k, v: _check_range(k, v, 0),
    "momentum": lambda k, v: _check_range(k, v, 0, 1, hi_open=True),
    "nesterov": lambda k, v: _check_bool(k, v),
    "beta1": lambda k, v: _check_range(k, v, 0, 1, hi_open=True),
    "beta2": lambda k, v: _check_range(k, v, 0, 1, hi_open=True),
    "eps": lambda k, v: _check_range(k, v, 0, None, lo_open=True),
    "lr_schedule": lambda k, v: _check_choice(k, v, LR_SCHEDULES),
    "warmup_epochs": lambda k, v: _check_range(k, v, 0),
    "lr_step_epochs": lambda k, v: _check_range(k, v, 1),
    "lr_gamma": lambda k, v: _check_range(k, v, 0, 1, lo_open=True, hi_open=True),
    "plateau_patience": lambda k, v: _check_range(k, v, 1),
    "lr_min_ratio": lambda k, v: _check_range(k, v, 0, 1),
    "grad_clip": lambda k, v: _check_range(k, v, 0, None, lo_open=True, allow_none=True),
    "grad_clip_by": lambda k, v: _check_choice(k, v, CLIP_MODES),
    "loss": lambda k, v: _check_choice(k, v, LOSSES),
    "huber_delta": lambda k, v: _check_range(k, v, 0, None, lo_open=True),
    "class_weights": lambda k, v: _check_choice(k, v, CLASS_WEIGHTS),
    "label_smoothing": lambda k, v: _check_range(k, v, 0, 1, hi_open=True),
    "batch_size": lambda k, v: _check_range(k, v, 1),
    "shuffle": lambda k, v: _check_bool(k, v),
    "batch_growth_every": lambda k, v: _check_range(k, v, 1, allow_none=True),
    "batch_size_max": lambda k, v: _check_range(k, v, 1),
    "patience": lambda k, v: _check_range(k, v, 1, allow_none=True),
    "min_delta": lambda k, v: _check_range(k, v, 0),
    "divergence_factor": lambda k, v: _check_range(k, v, 1, None, lo_open=True, allow_none=True),
    "seed": lambda k, v: _check_range(k, v, 0),
    "deterministic": lambda k, v: _check_bool(k, v),
    "checkpoint_every": lambda k, v: _check_range(k, v, 1),
    "keep_checkpoints": lambda k, v: _check_range(k, v, 1, allow_none=True),
    "threads": lambda k, v: _check_range(k, v, 1, allow_none=True),
    # data: settings a search space may vary too
    "scale": lambda k, v: _check_choice(k, v, SCALERS),
    "target_scale": lambda k, v: _check_choice(k, v, SCALERS),
}
# ``data:`` settings that a search space may vary (the sweep prepares one copy of the data per value).
DATA_HYPERPARAMETERS = ("scale", "target_scale")


def _check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(key, "must be true or false", value)


def check_hyperparameter(key: str, name: str, value: Any, model: str | None = None) -> None:
    """Apply ``train.<name>``'s rule (if it has one) to ``value``, naming ``key`` in the error;
    a hyperparameter of ``model`` goes through the model's own check."""
    if model is not None and name not in TRAIN_CHECKS:
        from models import registry

        if name in registry.hyperparameters(model):
            registry.check_value(model, key, name, value)
            return
    check = TRAIN_CHECKS.get(name)
    if check is not None:
        try:
            check(key, value)
        except TypeError:
            _fail(key, "wrong type for this knob", value)


def check_dashboard_host(host: Any, expose: bool, key: str = "ray.dashboard_host") -> None:
    """The dashboard's bind address: an IP address (or localhost); loopback unless ``expose``."""
    import ipaddress

    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        _fail(key, "must be an IP address such as 127.0.0.1 (or localhost)", host)
    if not address.is_loopback and not expose:
        _fail(key, "would expose the Ray dashboard and its Jobs API beyond this machine; set "
              "ray.expose_dashboard: true to do that on purpose (clients still need the cluster's token)", host)


def resolve_path(cfg: SweepConfig, value: str) -> Path:
    """A path from the config: relative to the working directory, else to the config's directory
    or the nearest of its parents that has it (so ``search_spaces/x.yaml`` works from anywhere)."""
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists() or cfg.source_file is None:
        return p
    for directory in Path(cfg.source_file).parents:
        if (directory / p).exists():
            return directory / p
    return p


def validate(cfg: SweepConfig) -> None:
    """Check every value of ``cfg``; raise ConfigError naming the first bad key."""
    from models import registry as model_registry
    from orchestrator import data as data_mod

    if cfg.study == "???" or not cfg.study:
        _fail("study", "a study name is required", cfg.study)
    check_name(cfg.study, "study", ConfigError)

    d = cfg.data
    if (d.source is None) == (d.path is None):
        _fail("data", "give exactly one of data.source (e.g. sklearn:digits) or data.path", {"source": d.source, "path": d.path})
    if d.source is not None:
        data_mod.check_source(d.source)
    if d.path is not None:
        p = resolve_path(cfg, d.path)
        if p.is_dir():
            _fail("data.path", "is a directory; name a CSV or Parquet file", d.path)
        if not p.is_file():
            _fail("data.path", "file not found", d.path)
        if p.suffix.lower() not in data_mod.FILE_FORMATS:
            _fail("data.path", f"unknown file format; valid: {', '.join(data_mod.FILE_FORMATS)}", d.path)
        if not d.target:
            _fail("data.target", "name the target column of data.path", d.target)
    if d.task is not None:
        _check_choice("data.task", d.task, TASKS)
    _check_range("data.val_fraction", d.val_fraction, 0, 1, lo_open=True, hi_open=True)
    _check_range("data.test_fraction", d.test_fraction, 0, 1, hi_open=True)
    if d.val_fraction + d.test_fraction >= 1:
        _fail("data.test_fraction", "val_fraction + test_fraction must be below 1", d.val_fraction + d.test_fraction)

    if not isinstance(cfg.model, dict) or "name" not in cfg.model:
        _fail("model.name", "a model name is required", cfg.model)
    model_registry.check(cfg.model, "model")

    for name, check in TRAIN_CHECKS.items():
        if name in DATA_HYPERPARAMETERS:
            check(f"data.{name}", getattr(cfg.data, name))
        else:
            check(f"train.{name}", getattr(cfg.train, name))
    if cfg.train.loss in CLASSIFICATION_LOSSES and d.task == "regression":
        _fail("train.loss", "is a classification loss, but data.task is regression; use mse, mae or huber", cfg.train.loss)
    if cfg.train.loss in ("mse", "mae", "huber") and d.task == "classification":
        _fail("train.loss", "is a regression loss, but data.task is classification; use cross_entropy or bce", cfg.train.loss)

    _check_choice("objective.mode", cfg.objective.mode, ("min", "max"))
    if not cfg.objective.metric:
        _fail("objective.metric", "a metric name is required", cfg.objective.metric)

    s = cfg.scheduler
    _check_choice("scheduler.name", s.name, SCHEDULER_NAMES)
    _check_range("scheduler.max_epochs", s.max_epochs, 1)
    _check_range("scheduler.grace_period", s.grace_period, 1)
    if s.grace_period > s.max_epochs and s.name in ("asha", "median"):
        _fail("scheduler.grace_period", f"must not exceed scheduler.max_epochs ({s.max_epochs})", s.grace_period)
    _check_range("scheduler.reduction_factor", s.reduction_factor, 1, None, lo_open=True)
    _check_range("scheduler.min_samples", s.min_samples, 1)
    _check_range("scheduler.perturbation_interval", s.perturbation_interval, 1)
    _check_range("scheduler.quantile_fraction", s.quantile_fraction, 0, 0.5, lo_open=True)
    _check_range("scheduler.resample_probability", s.resample_probability, 0, 1)
    if not s.perturbation_factors or any(not isinstance(f, (int, float)) or f <= 0 or f == 1
                                         for f in s.perturbation_factors):
        _fail("scheduler.perturbation_factors", "a list of positive factors other than 1 (e.g. [1.2, 0.8])",
              s.perturbation_factors)
    if s.name in ("pbt", "pb2"):
        if s.perturbation_interval >= s.max_epochs:
            _fail("scheduler.perturbation_interval", f"must be below scheduler.max_epochs ({s.max_epochs}) "
                  "for any exploit to happen", s.perturbation_interval)
        if cfg.search.num_samples < 2:
            _fail("search.num_samples", f"{s.name} needs a population of at least 2 trials", cfg.search.num_samples)
        if cfg.search.stages > 1:
            _fail("search.stages", f"coarse-to-fine stages do not combine with {s.name}", cfg.search.stages)
        if cfg.search.algorithm == "tpe":
            _fail("search.algorithm", f"{s.name} draws its population at the start and then evolves it: "
                  "use random or grid", cfg.search.algorithm)

    q = cfg.search
    _check_choice("search.algorithm", q.algorithm, SEARCHER_NAMES)
    _check_range("search.num_samples", q.num_samples, 1)
    _check_range("search.max_concurrent", q.max_concurrent, 1, allow_none=True)
    _check_range("search.stages", q.stages, 1)
    _check_range("search.top_k", q.top_k, 1, allow_none=True)
    _check_range("search.zoom_margin", q.zoom_margin, 0, 1, lo_open=True)
    _check_range("search.time_budget_s", q.time_budget_s, 0, None, lo_open=True, allow_none=True)
    if q.tiers is not None:
        from orchestrator.spaces import TIERS

        if not q.tiers:
            _fail("search.tiers", f"name at least one tier of {', '.join(TIERS)}, or leave it out", q.tiers)
        for tier in q.tiers:
            _check_choice("search.tiers", tier, TIERS)

    r = cfg.resources
    _check_range("resources.cpu_per_trial", r.cpu_per_trial, 0, None, lo_open=True)
    _check_range("resources.gpu_per_trial", r.gpu_per_trial, 0)
    _check_range("resources.wait_s", r.wait_s, 0)
    _check_range("ray.num_cpus", cfg.ray.num_cpus, 1, allow_none=True)
    _check_range("ray.num_gpus", cfg.ray.num_gpus, 0, allow_none=True)
    _check_range("ray.dashboard_port", cfg.ray.dashboard_port, 1, 65535)
    check_dashboard_host(cfg.ray.dashboard_host, cfg.ray.expose_dashboard)
    if cfg.ray.address is not None:
        from orchestrator.cluster import check_address

        check_address(cfg.ray.address, "ray.address")
    _check_range("failure.max_retries", cfg.failure.max_retries, 0)

    if not cfg.store.path:
        _fail("store.path", "a directory is required", cfg.store.path)
    _check_range("retune.max_age_days", cfg.retune.max_age_days, 0, None, lo_open=True)
    _check_range("retune.drift_tolerance", cfg.retune.drift_tolerance, 0)
    _check_range("retune.num_samples", cfg.retune.num_samples, 1, allow_none=True)
    _check_range("retune.top_k", cfg.retune.top_k, 1)

    from orchestrator import spaces

    spaces.check_search(cfg)  # raises ConfigError naming the knob
