"""``orch init``: a starter project that ``orch sweep conf/sweep.yaml`` runs as it is.

Its files come from orch's package (``orchestrator/templates/project/``, and the shipped search
spaces the starter model and training loop can use), so an installed orch writes the same project
as a source checkout. Nothing is overwritten unless asked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator import shipped
from orchestrator.errors import UserError

if TYPE_CHECKING:
    from orchestrator.shipped import Traversable

TEMPLATE_FILES = ("conf/sweep.yaml", "models/__init__.py", "models/net.py", "train.py", "README.md")
# The shipped spaces whose knobs the starter model (models/net.py) and loop (train.py) all take.
SPACES = ("mlp_adam", "mlp_sgd", "mlp_any_optimizer")
CONFIG = "conf/sweep.yaml"


def files() -> dict[str, Traversable]:
    """The starter project: each file's path in the project -> the shipped file it copies."""
    spaces = shipped.search_spaces()
    out = {rel: shipped.template(*rel.split("/")) for rel in TEMPLATE_FILES}
    out.update({f"search_spaces/{name}.yaml": spaces[name] for name in SPACES})
    return out


def write(directory: str | os.PathLike[str], force: bool = False) -> list[str]:
    """Write the starter project into ``directory`` (made if missing); returns the files' paths in it.

    Every check comes before the first file is written: a refusal leaves the directory as it was.

    Raises:
        UserError: a file the project has exists (unless ``force``), or a path is in the way.
    """
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: not a directory")
    plan = files()
    existing = []
    for rel in plan:
        target = root / rel
        for parent in target.relative_to(root).parents:
            if parent != Path(".") and (root / parent).exists() and not (root / parent).is_dir():
                raise UserError(f"{root / parent} is a file; orch init would put {rel} under it")
        if target.is_dir():
            raise UserError(f"{target} is a directory; orch init would write the file {rel} there")
        if target.exists() or target.is_symlink():
            existing.append(target)
    if existing and not force:
        more = f" (and {len(existing) - 1} more of the project's files)" if len(existing) > 1 else ""
        raise UserError(f"{existing[0]} exists{more}; orch init overwrites nothing unless --force")
    for rel, source in plan.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        # A new file renamed into place: an existing file (or link) is replaced, never written through.
        tmp = target.with_name(f".{target.name}.orch-init.tmp")
        tmp.write_bytes(source.read_bytes())
        os.replace(tmp, target)
    return list(plan)
