"""Model factories: a model's hyperparameters are its factory's keyword arguments.

A model is named in a config by ``model.name`` (a shipped model, registered with :func:`register`)
or by ``model.factory``, the import path of any callable that returns an ``nn.Module``
(``"mypkg.nets:build"``, or ``"models.net:build"`` for a ``models/`` folder of the user's project).
Either way the factory sizes itself from the keyword arguments it declares among
:data:`SIZE_ARGUMENTS` (filled in by orch from the data); every other keyword argument is a
hyperparameter, with its default, settable in the model section and searchable.

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

# What a factory may declare to size itself: one sample's shape, its number of values, the model's
# outputs (classes; 1 for regression or a binary logit) and the task.
SIZE_ARGUMENTS = ("input_shape", "n_inputs", "n_outputs", "task")

DEFAULT_MODEL = "mlp"  # a model section that names neither a model nor a factory

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_MUTABLE: dict[str, frozenset[str]] = {}
_discovered = False


def register(name: str, mutable: tuple[str, ...] = ()
             ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``factory(<size arguments>, **hyperparameters) -> nn.Module`` as ``name``.

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


def model_id(model_cfg: dict[str, Any]) -> str:
    """The model of a config's model section: its ``factory`` import path, else its ``name``."""
    return str(model_cfg.get("factory") or model_cfg.get("name") or DEFAULT_MODEL)


def is_path(model: str) -> bool:
    return ":" in model


def get(name: str) -> Callable[..., nn.Module]:
    """The factory of a shipped model's name or of an import path ("package.module:function").

    Raises:
        ConfigError: an import path that does not import or is not callable.
        KeyError: an unknown shipped model's name.
    """
    if is_path(name):
        from orchestrator.config.imports import import_callable

        return import_callable(name, "model.factory")
    _discover()
    return _MODELS[name]


def signature(name: str) -> dict[str, tuple[Any, str]]:
    """The model's hyperparameters -> (default, annotation as text): its factory's keyword
    arguments other than :data:`SIZE_ARGUMENTS` (those without a default are left out: orch
    cannot choose them)."""
    sig = inspect.signature(get(name))
    out = {}
    for p in sig.parameters.values():
        if p.name in SIZE_ARGUMENTS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        if p.default is p.empty:
            continue
        annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        out[p.name] = (p.default, str(annotation) if p.annotation is not p.empty else "")
    return out


def required(name: str) -> list[str]:
    """The factory's arguments that have no default and that orch does not fill in."""
    sig = inspect.signature(get(name))
    return [p.name for p in sig.parameters.values()
            if p.default is p.empty and p.name not in SIZE_ARGUMENTS
            and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def hyperparameters(name: str) -> dict[str, Any]:
    """The model's hyperparameters and their defaults (its factory's keyword arguments)."""
    return {k: default for k, (default, _) in signature(name).items()}


def mutable(name: str) -> frozenset[str]:
    """The model's hyperparameters that PBT may change between two epochs: those it registered,
    or, for a factory named by import path, those in its ``mutable`` attribute."""
    if is_path(name):
        return frozenset(getattr(get(name), "mutable", ()) or ())
    _discover()
    return _MUTABLE.get(name, frozenset())


def sized_by_shape(name: str) -> bool:
    """Whether the factory needs one sample's shape (``input_shape``) to be built."""
    return "input_shape" in inspect.signature(get(name)).parameters


def check(model_cfg: dict[str, Any], key: str = "model") -> None:
    """Raise ConfigError for an unknown model, a factory that does not import, or an unknown or bad
    model hyperparameter."""
    from orchestrator.config.checks import did_you_mean
    from orchestrator.errors import ConfigError
    from orchestrator.names import shown

    given_keys = [k for k in ("name", "factory") if model_cfg.get(k) is not None]
    if len(given_keys) > 1:
        raise ConfigError(f"{key}: give exactly one of {key}.name (a shipped model: {', '.join(names())}) or "
                          f"{key}.factory (an import path such as 'mypkg.nets:build') (got {shown(model_cfg)})")
    if "factory" in given_keys:
        name = model_cfg["factory"]
        get(name)  # (ConfigError naming model.factory)
        missing = required(name)
        if missing:
            raise ConfigError(f"{key}.factory: {name} has arguments without a default that orch cannot fill in: "
                              f"{', '.join(missing)}; give them defaults (orch fills in only "
                              f"{', '.join(SIZE_ARGUMENTS)})")
        what = f"model factory {name}"
    else:
        name = model_cfg.get("name", DEFAULT_MODEL)
        valid = names()
        if name not in valid:
            raise ConfigError(
                f"{key}.name: unknown model{did_you_mean(str(name), valid)}; valid: {', '.join(valid)} (got {name!r}); "
                f"for a model of your own use {key}.factory: 'package.module:function'"
            )
        what = f"model '{name}'"
    known = hyperparameters(name)
    for k in model_cfg:
        if k not in ("name", "factory") and k not in known:
            raise ConfigError(
                f"{key}.{k}: not a hyperparameter of {what}{did_you_mean(k, list(known))}; "
                f"valid: {', '.join(known) or '(none)'}"
            )
    if sized_by_shape(name):
        return  # its values are checked once the data's shape is known (check_built)
    given = {k: v for k, v in model_cfg.items() if k not in ("name", "factory")}
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
    A factory that needs the data's shape is checked once the data is loaded (:func:`check_built`).
    """
    from orchestrator.errors import ConfigError
    from orchestrator.names import shown

    if sized_by_shape(name):
        return
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
        return build(name, (4,), 2, "classification", **hyperparameters)


def check_built(name: str, input_shape: tuple[int, ...], n_outputs: int, task: str, hyperparameters: dict[str, Any],
                key: str = "model", inputs: int = 1, example: list[Any] | None = None) -> None:
    """Build the model for the data's shape on PyTorch's meta device and run a batch of two through
    it (``example``: two samples of the data, one tensor per input): the factory's errors, something
    that is not an ``nn.Module``, or outputs of the wrong shape are one-line ConfigErrors naming
    ``key``."""
    import torch

    from orchestrator.errors import ConfigError
    from orchestrator.names import shown

    shown_hp = f" (got {shown(hyperparameters)})" if hyperparameters else ""
    try:
        with torch.device("meta"):
            model = build(name, input_shape, n_outputs, task, **hyperparameters)
    except (ValueError, TypeError, OverflowError) as err:
        raise ConfigError(f"{key}: {str(err).splitlines()[0]}{shown_hp}") from None
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's factory
        raise ConfigError(f"{key}: {name} raised {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                          f"{shown_hp}") from None
    # A batch of two of the data's own samples (each input's shape and dtype: token ids stay integers)
    # on the meta device, else float inputs of the first input's shape.
    batch = ([torch.as_tensor(t).to("meta") for t in example] if example is not None
             else [torch.empty((2, *input_shape), device="meta") for _ in range(inputs)])
    try:
        with torch.no_grad():
            out = model.train(False)(*batch)
    except NotImplementedError:
        return  # an operation PyTorch's meta device does not implement: the first real batch tells
    except Exception as err:  # noqa: BLE001 - the user's forward
        first = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(f"{key}: the model fails on a batch of the data's shape {tuple(input_shape)}: "
                          f"{type(err).__name__}: {first}"[:400]) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n_outputs):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{key}: the model's output for a batch of 2 samples of shape {tuple(input_shape)} is "
                          f"{got}, expected (2, {n_outputs}) ({n_outputs} output{'s' if n_outputs != 1 else ''} "
                          f"for {task})")


def build(name: str, input_shape: tuple[int, ...] | int, n_outputs: int, task: str = "classification",
          **hyperparameters: Any) -> nn.Module:
    """Call the model's factory with the size arguments it declares and ``hyperparameters``.

    Raises:
        TypeError: the factory returned something other than an ``nn.Module``.
    """
    import math

    from torch import nn

    factory = get(name)
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    sizes = {"input_shape": shape, "n_inputs": math.prod(shape), "n_outputs": n_outputs, "task": task}
    params = inspect.signature(factory).parameters
    model = factory(**{k: v for k, v in sizes.items() if k in params}, **hyperparameters)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
