"""Code a config names by import path: ``"package.module:function"``.

A config may name a model factory (``model.factory``), a data factory (``data.factory``) and a
training function (``trainable``). The module is imported from the project directory (the directory
orch runs in, put first on ``sys.path`` as ``python -m`` does) or from installed packages, so a
config can only name code the user's project or environment already contains: a config is code
the user trusts, as a Python script is.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.names import shown


def project_dir(project: str | None = None) -> str:
    """The directory import paths resolve from: a config's ``project``, else the working directory."""
    return str(Path(project).expanduser().resolve()) if project else os.getcwd()


def project_on_path(project: str | None = None) -> None:
    """Put the project directory first on ``sys.path``, once.

    Ray's workers on this machine start with the driver's ``sys.path``, so they import the same
    project modules.
    """
    directory = project_dir(project)
    if directory not in sys.path and not (project is None and "" in sys.path):
        sys.path.insert(0, directory)


def _is_path(spec: str) -> bool:
    module, sep, attr = spec.partition(":")
    parts = module.split(".") + attr.split(".")
    return bool(sep) and all(p.isidentifier() for p in parts)


def import_object(spec: Any, key: str) -> Any:
    """The object ``spec`` (``"package.module:attribute"``) names.

    Raises:
        ConfigError: naming ``key``: not an import path, a module that does not import (or raises
            while importing), or a missing attribute.
    """
    if not isinstance(spec, str) or not _is_path(spec):
        raise ConfigError(f"{key}: expected an import path 'package.module:function' (got {shown(spec)})")
    module_name, _, attr = spec.partition(":")
    project_on_path()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name.split(".")[0]) and module_name.startswith(err.name):
            raise ConfigError(f"{key}: no module named {err.name!r} in the project directory ({os.getcwd()}) "
                              f"or the installed packages (got {shown(spec)})") from None
        raise ConfigError(f"{key}: importing {module_name!r} failed: {_first_line(err)} (got {shown(spec)})") from None
    except Exception as err:  # noqa: BLE001 - the user's module raised while importing
        raise ConfigError(f"{key}: importing {module_name!r} failed: {_first_line(err)} (got {shown(spec)})") from None
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise ConfigError(f"{key}: module {module_name!r} has no {attr!r} (got {shown(spec)})")
        value = getattr(value, part)
    return value


def import_callable(spec: Any, key: str) -> Any:
    """:func:`import_object`, which must be callable."""
    value = import_object(spec, key)
    if not callable(value):
        raise ConfigError(f"{key}: {spec} is a {type(value).__name__}, not a function (got {shown(spec)})")
    return value


def _first_line(err: BaseException) -> str:
    text = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
    return f"{type(err).__name__}: {text}"[:300] if text else type(err).__name__
