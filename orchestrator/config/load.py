"""Sweep configs: YAML (with base configs) merged onto a typed schema, then command-line overrides.

``load(path, overrides)`` returns a validated :class:`SweepConfig`. Every problem is a
:class:`~orchestrator.errors.ConfigError` whose one-line message names the file, the full key and
the bad value, so the CLI can print it and exit 2 before anything is started or written.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml
from omegaconf import Container, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from orchestrator import shipped
from orchestrator.config import models, schema
from orchestrator.config.addresses import check_address
from orchestrator.config.checks import check_choice, check_range, did_you_mean, fail
from orchestrator.config.imports import import_callable, project_dir, project_on_path
from orchestrator.config.schema import (
    BUNDLED_DATASETS,
    CLASSIFICATION_LOSSES,
    FILE_FORMATS,
    SCHEDULER_NAMES,
    SEARCHER_NAMES,
    TASKS,
    TIERS,
    SweepConfig,
)
from orchestrator.errors import ConfigError
from orchestrator.names import check_name, shown

if TYPE_CHECKING:
    from orchestrator.shipped import Traversable

# Each hyperparameter field's value check, train and data alike (the schema declares them).
_RULES = {name: rule.check for section in ("train", "data")
          for name, rule in schema.rules(section).items() if rule.check is not None}
MAPPING = "config"  # what errors call a config given as a mapping or an object instead of a file
# A shipped search space's name (search_space: mlp_adam): no folder, no suffix.
_SPACE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

def _schema_at(path: list[str]) -> type | None:
    """The dataclass that holds the keys under ``path`` (e.g. ["train"] -> TrainConfig)."""
    cls: Any = SweepConfig
    for part in path:
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if part not in fields:
            return None
        cls = fields[part].type
        cls = vars(schema).get(cls, cls) if isinstance(cls, str) else cls
    return cls if isinstance(cls, type) and dataclasses.is_dataclass(cls) else None


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


def _mapping_layers(data: Mapping[str, Any]) -> list[tuple[Path | str, dict[str, Any]]]:
    """A config given as a mapping and its base configs (paths from the working directory), base first."""
    data = dict(data)
    bases = data.pop("base", None)
    if bases is None:
        bases = []
    elif isinstance(bases, (str, PathLike)):
        bases = [bases]
    elif not isinstance(bases, (list, tuple)) or not all(isinstance(b, (str, PathLike)) for b in bases):
        raise ConfigError(f"{MAPPING}: base: expected a path or a list of paths, got {bases!r}")
    layers: list[tuple[Path | str, dict[str, Any]]] = []
    for base in bases:
        if not Path(base).is_file():
            raise ConfigError(f"{MAPPING}: base: file not found: {base} (looked at {Path(base).resolve()})")
        layers.extend(_layers(Path(base)))
    layers.append((MAPPING, data))
    return layers


def load(source: str | PathLike[str] | Mapping[str, Any] | SweepConfig,
         overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Load a sweep config: base configs, then the file, then ``key=value`` overrides; validate.

    Args:
        source: the YAML config file; or its contents as a mapping (the same structure: relative
            paths in it, base configs included, resolve from the working directory); or a config
            object (checked again, with ``overrides`` applied to a copy).
        overrides: dotlist overrides from the command line, applied last.

    Raises:
        ConfigError: on any unknown key, wrong type, out-of-range value or missing file.
    """
    merged: Container = OmegaConf.structured(SweepConfig)
    layers: list[tuple[Path | str, dict[str, Any]]] = []
    if isinstance(source, SweepConfig):
        where, source_file = MAPPING, source.source_file
        merged = OmegaConf.structured(source)
    elif isinstance(source, Mapping):
        where, source_file = MAPPING, None
        layers = _mapping_layers(source)
    else:
        path = Path(source)
        where, source_file = str(path), str(path.resolve())
        layers = list(_layers(path))
    for layer_path, data in layers:
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(data))
        except OmegaConfBaseException as err:
            raise ConfigError(_omegaconf_message(err, str(layer_path))) from None
    try:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(_parse_overrides(overrides)))
    except OmegaConfBaseException as err:
        raise ConfigError(_omegaconf_message(err, "command line")) from None
    try:
        cfg = cast(SweepConfig, OmegaConf.to_object(merged))
    except OmegaConfBaseException as err:
        raise ConfigError(_omegaconf_message(err, where)) from None
    cfg.source_file = source_file
    _plain_fields(cfg)
    validate(cfg)
    return cfg


def _plain_fields(cfg: SweepConfig) -> None:
    cfg.model = _plain(cfg.model)
    cfg.params = _plain(cfg.params) or {}
    cfg.data.args = _plain(cfg.data.args) or {}
    cfg.search_space = _plain(cfg.search_space)
    cfg.search.points_to_evaluate = _plain(cfg.search.points_to_evaluate)
    cfg.model_signature = _plain(cfg.model_signature)


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def to_yaml(cfg: SweepConfig) -> str:
    """The resolved config as YAML text (what the store records for each sweep)."""
    data = dataclasses.asdict(cfg)
    # Inline the search space, so the text alone reproduces the sweep (resume, re-tune, `orch best`).
    data["search_space"] = load_space(cfg) or None
    data.pop("base", None)
    data.pop("source_file", None)
    if cfg.data.path:  # absolute, so that the text works from any directory (re-tunes from cron)
        data["data"]["path"] = str(resolve_path(cfg, cfg.data.path).resolve())
    if uses_project_code(cfg):  # ... and the code it names imports from there too
        data["project"] = project_dir(cfg.project)
    if models.is_path(models.model_id(cfg.model)):  # readers of the store import none of it
        data["model_signature"] = json.loads(json.dumps(
            {k: list(v) for k, v in schema.model_signature(cfg).items()}, default=str))
    return yaml.safe_dump(data, sort_keys=False)


def uses_project_code(cfg: SweepConfig) -> bool:
    """Whether the config names code by import path (a model or data factory, a trainable, callbacks)."""
    return bool(cfg.model.get("factory") or cfg.data.factory or cfg.trainable or cfg.callbacks)


def from_yaml(text: str) -> SweepConfig:
    """Rebuild a config from :func:`to_yaml` output (used on resume and by ``orch best``)."""
    merged = OmegaConf.merge(OmegaConf.structured(SweepConfig), OmegaConf.create(yaml.safe_load(text)))
    cfg = cast(SweepConfig, OmegaConf.to_object(merged))
    _plain_fields(cfg)  # (nothing imported: see uses_project_code and state_guard.trust_config)
    return cfg


# ---------------------------------------------------------------------------------------------
# Validation: each check names the full key and the bad value.


def check_train_value(key: str, name: str, value: Any) -> None:
    """Apply the schema's rule for ``train.<name>`` or ``data.<name>`` (if it has one) to ``value``."""
    check = _RULES.get(name)
    if check is not None:
        try:
            check(key, value)
        except TypeError:
            fail(key, "wrong type for this knob", value)


def check_hyperparameter(key: str, name: str, value: Any, model: str | None = None) -> None:
    """Apply ``train.<name>``'s rule (if it has one) to ``value``, naming ``key`` in the error;
    a hyperparameter of ``model`` goes through the model's own check."""
    if model is not None and name not in _RULES and name in models.hyperparameters(model):
        models.check_value(model, key, name, value)
        return
    check_train_value(key, name, value)


def check_source(source: str) -> None:
    """Raise ConfigError unless ``source`` names a known bundled dataset."""
    kind, _, name = source.partition(":")
    if kind != "sklearn" or not name:
        raise ConfigError(f"data.source: expected 'sklearn:<name>' (got {source!r}); "
                          "for a file use data.path")
    if name not in BUNDLED_DATASETS:
        valid = ", ".join(f"sklearn:{n}" for n in BUNDLED_DATASETS)
        raise ConfigError(f"data.source: unknown dataset{did_you_mean(name, list(BUNDLED_DATASETS))}; "
                          f"valid: {valid} (got {source!r})")


def check_dashboard_host(host: Any, expose: bool, key: str = "ray.dashboard_host") -> None:
    """The dashboard's bind address: an IP address (or localhost); loopback unless ``expose``."""
    import ipaddress

    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        fail(key, "must be an IP address such as 127.0.0.1 (or localhost)", host)
    if not address.is_loopback and not expose:
        fail(key, "would expose the Ray dashboard and its Jobs API beyond this machine; set "
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


def load_space(cfg: SweepConfig) -> dict[str, Any]:
    """The raw space of a config: inline mapping, a YAML file, a shipped space by name, or nothing."""
    spec = cfg.search_space
    if spec is None:
        return {}
    if isinstance(spec, str):
        path = _space_file(cfg, spec)
        # Errors name the file and the line, never its contents (it may be any file the user can read).
        try:
            text = path.read_text()
            spec = yaml.safe_load(text) or {}
        except (OSError, UnicodeDecodeError) as err:
            why = getattr(err, "strerror", None) or type(err).__name__
            raise ConfigError(f"search_space: cannot read {path}: {why}") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"search_space: {path}:{where} is not valid YAML") from None
        if not isinstance(spec, dict):
            raise ConfigError(f"search_space: {path} holds a {type(spec).__name__}, not a mapping of knobs "
                              "(knob: {distribution: ...})")
    if not isinstance(spec, dict):
        raise ConfigError(f"search_space: expected a mapping of knobs or a file path (got {shown(spec)})")
    return spec


def _space_file(cfg: SweepConfig, spec: str) -> Path | Traversable:
    """The file ``search_space: spec`` names: a path (see :func:`resolve_path`), else, for a bare
    name such as ``mlp_adam`` (no folder, no .yaml suffix), the search space orch ships under it."""
    path = resolve_path(cfg, spec)
    if path.is_dir():
        raise ConfigError(f"search_space: {shown(spec)} is a directory; name a YAML file")
    if path.is_file():
        return path
    if not _SPACE_NAME.fullmatch(spec) or spec.lower().endswith((".yaml", ".yml")):
        raise ConfigError(f"search_space: file not found (got {shown(spec)})")
    spaces = shipped.search_spaces()
    if spec not in spaces:
        raise ConfigError(f"search_space: no file {spec!r} and no shipped search space of that name"
                          f"{did_you_mean(spec, list(spaces))}; shipped: {', '.join(spaces)}")
    return spaces[spec]


def validate(cfg: SweepConfig) -> None:
    """Check every value of ``cfg``; raise ConfigError naming the first bad key.

    The search space is checked against the config by :func:`orchestrator.tune.plan.check`
    (``plan.load`` does both).
    """
    if cfg.study == "???" or not cfg.study:
        fail("study", "a study name is required", cfg.study)
    check_name(cfg.study, "study", ConfigError)

    if cfg.project is not None and not Path(cfg.project).expanduser().is_dir():
        fail("project", "not a directory", cfg.project)
    project_on_path(cfg.project)
    d = cfg.data
    given = {k: v for k, v in (("source", d.source), ("path", d.path), ("factory", d.factory)) if v is not None}
    if len(given) != 1:
        fail("data", "give exactly one of data.source (e.g. sklearn:digits), data.path (a CSV or Parquet file) or "
             "data.factory (a function of yours, 'package.module:function')", given)
    if d.factory is not None:
        import_callable(d.factory, "data.factory")
        if d.target is not None:
            fail("data.target", "is for data.path; a data factory returns its targets itself", d.target)
    elif d.args:
        fail("data.args", "are a data factory's keyword arguments: set data.factory too", d.args)
    check_choice("data.load_in", d.load_in, schema.DATA_LOAD_IN)
    if d.load_in == "trial" and d.factory is None:
        fail("data.load_in", "trial: each trial calls data.factory; tables (data.source, data.path) load in "
             "the driver", d.load_in)
    check_range("data.num_workers", d.num_workers, 0, 64)
    if not isinstance(d.args, dict):
        fail("data.args", "a mapping of keyword arguments", d.args)
    if cfg.trainable is not None:
        import_callable(cfg.trainable, "trainable")
    if not isinstance(cfg.params, dict):
        fail("params", "a mapping of name: default value", cfg.params)
    for name, value in cfg.params.items():
        if not (isinstance(name, str) and name.isidentifier()):
            fail(f"params.{name}", "a hyperparameter name is a Python identifier", name)
        if not isinstance(value, (bool, int, float, str)) and value is not None:
            fail(f"params.{name}", "a default is a number, a string, true/false or null", value)
    if d.source is not None:
        check_source(d.source)
    if d.path is not None:
        p = resolve_path(cfg, d.path)
        if p.is_dir():
            fail("data.path", "is a directory; name a CSV or Parquet file", d.path)
        if not p.is_file():
            fail("data.path", "file not found", d.path)
        if p.suffix.lower() not in FILE_FORMATS:
            fail("data.path", f"unknown file format; valid: {', '.join(FILE_FORMATS)}", d.path)
        if not d.target:
            fail("data.target", "name the target column of data.path", d.target)
    if d.task is not None:
        check_choice("data.task", d.task, TASKS)
    check_range("data.val_fraction", d.val_fraction, 0, 1, lo_open=True, hi_open=True)
    check_range("data.test_fraction", d.test_fraction, 0, 1, hi_open=True)
    if d.val_fraction + d.test_fraction >= 1:
        fail("data.test_fraction", "val_fraction + test_fraction must be below 1", d.val_fraction + d.test_fraction)

    if not isinstance(cfg.model, dict):
        fail("model", "a mapping: name (or factory) and the model's hyperparameters", cfg.model)
    models.check(cfg.model, "model")
    clash = sorted(set(cfg.params) & (set(_RULES) | set(models.hyperparameters(models.model_id(cfg.model)))))
    if clash:
        fail(f"params.{clash[0]}", "is already a hyperparameter of orch's or the model's; set it there", clash[0])

    for section, values in (("train", cfg.train), ("data", cfg.data)):
        for name, rule in schema.rules(section).items():
            if rule.check is not None:
                rule.check(f"{section}.{name}", getattr(values, name))
    if cfg.train.loss in CLASSIFICATION_LOSSES and d.task == "regression":
        fail("train.loss", "is a classification loss, but data.task is regression; use mse, mae or huber",
             cfg.train.loss)
    if cfg.train.loss in ("mse", "mae", "huber") and d.task == "classification":
        fail("train.loss", "is a regression loss, but data.task is classification; use cross_entropy or bce",
             cfg.train.loss)

    check_choice("objective.mode", cfg.objective.mode, ("min", "max"))
    if not cfg.objective.metric:
        fail("objective.metric", "a metric name is required", cfg.objective.metric)

    s = cfg.scheduler
    check_choice("scheduler.name", s.name, SCHEDULER_NAMES)
    check_range("scheduler.max_epochs", s.max_epochs, 1)
    if s.grace_period is not None:
        check_range("scheduler.grace_period", s.grace_period, 1)
    if s.grace_period is not None and s.grace_period > s.max_epochs and s.name in ("asha", "median"):
        fail("scheduler.grace_period", f"must not exceed scheduler.max_epochs ({s.max_epochs})", s.grace_period)
    check_range("scheduler.reduction_factor", s.reduction_factor, 1, None, lo_open=True)
    check_range("scheduler.min_samples", s.min_samples, 1)
    check_range("scheduler.perturbation_interval", s.perturbation_interval, 1)
    check_range("scheduler.quantile_fraction", s.quantile_fraction, 0, 0.5, lo_open=True)
    check_range("scheduler.resample_probability", s.resample_probability, 0, 1)
    if not s.perturbation_factors or any(not isinstance(f, (int, float)) or f <= 0 or f == 1
                                         for f in s.perturbation_factors):
        fail("scheduler.perturbation_factors", "a list of positive factors other than 1 (e.g. [1.2, 0.8])",
              s.perturbation_factors)
    if s.name in ("pbt", "pb2"):
        if s.perturbation_interval >= s.max_epochs:
            fail("scheduler.perturbation_interval", f"must be below scheduler.max_epochs ({s.max_epochs}) "
                  "for any exploit to happen", s.perturbation_interval)
        if cfg.search.num_samples < 2:
            fail("search.num_samples", f"{s.name} needs a population of at least 2 trials", cfg.search.num_samples)
        if cfg.search.stages > 1:
            fail("search.stages", f"coarse-to-fine stages do not combine with {s.name}", cfg.search.stages)
        if cfg.search.algorithm == "tpe":
            fail("search.algorithm", f"{s.name} draws its population at the start and then evolves it: "
                  "use random or grid", cfg.search.algorithm)

    q = cfg.search
    check_choice("search.algorithm", q.algorithm, SEARCHER_NAMES)
    check_range("search.num_samples", q.num_samples, 1)
    check_range("search.max_concurrent", q.max_concurrent, 1, allow_none=True)
    check_range("search.stages", q.stages, 1)
    check_range("search.top_k", q.top_k, 1, allow_none=True)
    check_range("search.zoom_margin", q.zoom_margin, 0, 1, lo_open=True)
    check_range("search.time_budget_s", q.time_budget_s, 0, None, lo_open=True, allow_none=True)
    if q.tiers is not None:
        if not q.tiers:
            fail("search.tiers", f"name at least one tier of {', '.join(TIERS)}, or leave it out", q.tiers)
        for tier in q.tiers:
            check_choice("search.tiers", tier, TIERS)

    r = cfg.resources
    check_range("resources.cpu_per_trial", r.cpu_per_trial, 0, None, lo_open=True)
    check_range("resources.gpu_per_trial", r.gpu_per_trial, 0)
    check_range("resources.wait_s", r.wait_s, 0)
    check_range("ray.num_cpus", cfg.ray.num_cpus, 1, allow_none=True)
    check_range("ray.num_gpus", cfg.ray.num_gpus, 0, allow_none=True)
    check_range("ray.dashboard_port", cfg.ray.dashboard_port, 1, 65535)
    check_dashboard_host(cfg.ray.dashboard_host, cfg.ray.expose_dashboard)
    if cfg.ray.address is not None:
        check_address(cfg.ray.address, "ray.address")
    check_range("failure.max_retries", cfg.failure.max_retries, 0)

    if not cfg.store.path:
        fail("store.path", "a directory is required", cfg.store.path)
    check_range("store.keep_models", cfg.store.keep_models, 0)
    check_range("retune.max_age_days", cfg.retune.max_age_days, 0, None, lo_open=True)
    check_range("retune.drift_tolerance", cfg.retune.drift_tolerance, 0)
    check_range("retune.num_samples", cfg.retune.num_samples, 1, allow_none=True)
    check_range("retune.top_k", cfg.retune.top_k, 1)
    schema.check_tracking(cfg)  # its trackers' packages are installed; its callbacks import
