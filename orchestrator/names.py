"""Names that become paths, and the rule that every path orch writes stays inside its store.

A study, a sweep id, a trial id: each ends up as a directory or file name in the results store
(``trials/study=<study>/``, ``_ray/<sweep_id>/``, ``reports/<study>/<sweep_id>/``,
``best/<study>.yaml``). :func:`check_name` is the one check they all pass, wherever they enter
(config, command line, store); :func:`inside` is the last check before orch writes a path under
a store: it must resolve (symbolic links followed) to a place below the store's own root.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeGuard

from orchestrator.errors import StoreError, UserError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_NAME = 100  # well below file systems' 255 bytes, with room for the prefixes and suffixes orch adds
NAME_RULE = f"letters, digits, '_', '-' and '.', starting with a letter or digit, at most {MAX_NAME} characters"


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (an error never prints a whole file or value)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, (str, bytes, list, dict, tuple)) else "cut"
    return f"{text[:limit]}... ({size})"


def is_name(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) <= MAX_NAME and bool(NAME.match(value))


def check_name(value: object, key: str, error: type[UserError] = UserError) -> str:
    """``value`` if it is a valid study, sweep or trial name, else a one-line error naming ``key``."""
    if not is_name(value):
        raise error(f"{key}: use {NAME_RULE} (got {shown(value)})")
    return value


def inside(root: Any, path: Any) -> Any:
    """``path``, once checked to resolve to a place inside ``root`` (raises StoreError otherwise).

    Symbolic links are followed, so a link planted in the store cannot send a write elsewhere. In
    object storage (no links; '..' is refused when a path is made) the key must start with the
    store's prefix.
    """
    if hasattr(root, "is_relative_to") and not isinstance(root, Path):  # an ObjectPath
        if not (hasattr(path, "bucket") and path.is_relative_to(root)):
            raise StoreError(f"refusing to write {path}: it is outside the store {root}")
        return path
    base = Path(root).resolve()
    target = Path(path).resolve()
    if target != base and base not in target.parents:
        raise StoreError(f"refusing to write {path}: it resolves to {target}, outside the store {base}")
    return Path(path)
