"""Files orch ships beside its code: example configs, search spaces and the starter project.

The repository's ``conf/`` and ``search_spaces/`` folders are installed as the data packages
``orchestrator.conf`` and ``orchestrator.search_spaces`` (pyproject.toml maps them, as it maps
``models/`` to ``orchestrator.models``), and the starter project of ``orch init`` lives in
``orchestrator/templates/``: all of them are read with :mod:`importlib.resources`, so they work
the same from a wheel, an editable install or a source checkout.
"""

from __future__ import annotations

import importlib.resources
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import OrchError

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

SPACE_SUFFIX = ".yaml"


def folder(name: str) -> Traversable:
    """The shipped folder ``name``: "conf" or "search_spaces".

    An installed orch has ``orchestrator.<name>``. A source checkout first on ``sys.path`` (a
    container's working directory, a Ray Job's ``working_dir``, an editable install made before
    the folder was mapped) has the repository's top-level folder instead.

    Raises:
        OrchError: neither exists (a broken installation).
    """
    try:
        found = importlib.resources.files(f"orchestrator.{name}")
        if found.is_dir():
            return found
    except (ModuleNotFoundError, TypeError):
        pass
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    raise OrchError(f"orch's shipped {name}/ folder is missing: no package orchestrator.{name} and no {checkout}")


def search_spaces() -> dict[str, Traversable]:
    """The shipped search spaces by name (``mlp_adam`` -> ``search_spaces/mlp_adam.yaml``), sorted."""
    files = (f for f in folder("search_spaces").iterdir() if f.name.endswith(SPACE_SUFFIX) and f.is_file())
    return {f.name[: -len(SPACE_SUFFIX)]: f for f in sorted(files, key=lambda f: f.name)}


def template(*parts: str) -> Traversable:
    """A file or folder of the starter project ``orch init`` writes (``orchestrator/templates/project/``)."""
    found = importlib.resources.files("orchestrator") / "templates" / "project"
    for part in parts:
        found = found / part
    return found
