"""The name -> model factory table: a model's hyperparameters are its factory's keyword arguments.

The shipped models live in the repository's ``models/`` folder, installed as
``orchestrator.models`` (so that a user's own top-level ``models`` package is never shadowed).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_MUTABLE: dict[str, frozenset[str]] = {}
_discovered = False


def register(name: str, mutable: tuple[str, ...] = ()
             ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``factory(n_inputs, n_outputs, **hyperparameters) -> nn.Module`` as ``name``.

    Args:
        name: the model's name in configs (``model.name``).
        mutable: hyperparameters the model lets PBT change between two epochs without rebuilding
            it (for example ``dropout``: the same weights, another rate).
    """

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS and _MODELS[name] is not factory:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = factory
        _MUTABLE[name] = frozenset(mutable)
        return factory

    return deco


def _discover() -> None:
    """Import every module of the ``models`` package so that its ``@register`` lines run."""
    global _discovered
    if _discovered:
        return
    models = _shipped_models()
    for info in pkgutil.iter_modules(models.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"orchestrator.models.{info.name}")
    _discovered = True


def _shipped_models() -> types.ModuleType:
    """The package of orch's shipped models, ``orchestrator.models``.

    An installed orch has it (the repository's ``models/`` folder is installed under that name).
    Where a source checkout comes first on ``sys.path`` instead (a container's working directory,
    a Ray Job's ``working_dir``), its ``orchestrator`` package has no ``models`` folder: the
    checkout's top-level ``models/`` is loaded as ``orchestrator.models`` then.
    """
    try:
        return importlib.import_module("orchestrator.models")
    except ModuleNotFoundError as err:
        if err.name != "orchestrator.models":
            raise
    import orchestrator

    folder = Path(orchestrator.__file__).resolve().parent.parent / "models"
    spec = importlib.util.spec_from_file_location(
        "orchestrator.models", folder / "__init__.py", submodule_search_locations=[str(folder)])
    if spec is None or spec.loader is None or not (folder / "__init__.py").is_file():
        raise ModuleNotFoundError("orch's shipped models are missing: no package orchestrator.models "
                                  f"and no {folder}", name="orchestrator.models")
    module = importlib.util.module_from_spec(spec)
    sys.modules["orchestrator.models"] = module
    spec.loader.exec_module(module)
    orchestrator.models = module  # type: ignore[attr-defined]
    return module


def names() -> list[str]:
    _discover()
    return sorted(_MODELS)


def get(name: str) -> Callable[..., nn.Module]:
    _discover()
    return _MODELS[name]


def signature(name: str) -> dict[str, tuple[Any, str]]:
    """The model's hyperparameters -> (default, annotation as text): its factory's keyword
    arguments after ``n_inputs`` and ``n_outputs``."""
    sig = inspect.signature(get(name))
    params = list(sig.parameters.values())[2:]
    return {p.name: (p.default, str(p.annotation)) for p in params if p.kind is not p.VAR_KEYWORD}


def hyperparameters(name: str) -> dict[str, Any]:
    """The model's hyperparameters and their defaults (its factory's keyword arguments)."""
    return {k: default for k, (default, _) in signature(name).items()}


def mutable(name: str) -> frozenset[str]:
    """The model's hyperparameters that PBT may change between two epochs."""
    _discover()
    return _MUTABLE.get(name, frozenset())


def check(model_cfg: dict[str, Any], key: str = "model") -> None:
    """Raise ConfigError for an unknown model name or an unknown model hyperparameter."""
    from orchestrator.config.checks import did_you_mean
    from orchestrator.errors import ConfigError
    from orchestrator.names import shown

    name = model_cfg.get("name")
    valid = names()
    if name not in valid:
        raise ConfigError(
            f"{key}.name: unknown model{did_you_mean(str(name), valid)}; valid: {', '.join(valid)} (got {name!r})"
        )
    known = hyperparameters(name)
    for k in model_cfg:
        if k != "name" and k not in known:
            raise ConfigError(
                f"{key}.{k}: not a hyperparameter of model '{name}'{did_you_mean(k, list(known))}; "
                f"valid: {', '.join(known)}"
            )
    given = {k: v for k, v in model_cfg.items() if k != "name"}
    for k, v in given.items():
        check_value(name, f"{key}.{k}", k, v)  # each value alone names its own key
    if len(given) > 1:
        try:
            probe(name, **given)
        except (ValueError, TypeError, OverflowError) as err:
            raise ConfigError(f"{key}: {str(err).splitlines()[0]} (got {shown(given)})") from None


def check_value(name: str, key: str, param: str, value: Any, others: dict[str, Any] | None = None) -> None:
    """Raise ConfigError (naming ``key``) if model ``name`` rejects ``param=value``.

    The model factory is the rule: it is called on a tiny input with the value, and whatever it
    raises (ValueError, TypeError) becomes the message. Users' models get the same check for free.
    """
    from orchestrator.errors import ConfigError
    from orchestrator.names import shown

    hp = {**(others or {}), param: value}
    try:
        probe(name, **hp)
    except (ValueError, TypeError, OverflowError) as err:
        raise ConfigError(f"{key}: {str(err).splitlines()[0]} (got {shown(value)})") from None


def probe(name: str, **hyperparameters: Any) -> nn.Module:
    """The model on a tiny input, on PyTorch's meta device: checked, but no memory allocated
    (a width of a million costs nothing to check)."""
    import torch

    with torch.device("meta"):
        return build(name, 4, 2, **hyperparameters)


def build(name: str, n_inputs: int, n_outputs: int, **hyperparameters: Any) -> nn.Module:
    return get(name)(n_inputs, n_outputs, **hyperparameters)
