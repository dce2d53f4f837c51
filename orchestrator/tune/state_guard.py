"""Signatures of Ray Tune's experiment state, with a key kept outside the results store.

Tune restores a sweep by unpickling files of its experiment directory (``tuner.pkl``,
``experiment_state-*.json``, searcher and callback states): whoever can write that directory could
run code as whoever resumes. The contract:

- every Tune state file orch lets Tune write is signed before it reaches the experiment directory:
  an HMAC-SHA256 over the sweep id, the file's name and its bytes, under this machine's key;
- the signatures live in ``<experiment>/orch_state.sig`` (JSON, replaced atomically), the last
  :data:`HISTORY` per file name, so that a file still holding its previous version verifies too;
- before anything of the directory is restored, every file at its top level except orch's own
  (and hidden ones, which Tune never reads) must match one of its name's signatures, else the
  resume is refused (:class:`~orchestrator.errors.UserError`).

The key: ``$ORCH_STATE_KEY`` (hex, or any string), else the file ``$ORCH_STATE_KEY_FILE``, else
``~/.config/orch/state.key``, created on first use (32 random bytes as hex, mode 0600). Never
inside the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.store import fs
from orchestrator.store.fs import AnyPath

SIGNATURES_FILE = "orch_state.sig"  # not .json/.pkl: Tune copies those back and forth on resume
HISTORY = 3  # signatures kept per file name
KEY_ENV = "ORCH_STATE_KEY"
KEY_FILE_ENV = "ORCH_STATE_KEY_FILE"
MIN_KEY_BYTES = 16
_FORMAT = "orch-state-signatures"
_DOMAIN = b"orch-state-v1\0"
_HEX = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class StateKey:
    """The signing key and where it came from (for messages)."""

    secret: bytes
    where: str


def default_key_file() -> Path:
    return Path.home() / ".config" / "orch" / "state.key"


def _decode(text: str, where: str) -> bytes:
    text = text.strip()
    is_hex = len(text) % 2 == 0 and re.fullmatch(r"[0-9a-fA-F]+", text)
    secret = bytes.fromhex(text) if is_hex else text.encode()
    if len(secret) < MIN_KEY_BYTES:
        raise UserError(f"the state key in {where} is too short ({len(secret)} bytes; at least "
                        f"{MIN_KEY_BYTES}): use e.g. `python -c 'import secrets; "
                        "print(secrets.token_hex(32))'`")
    return secret


def load_key(store_root: str | AnyPath | None = None) -> StateKey:
    """This machine's state key: ``$ORCH_STATE_KEY``, else ``$ORCH_STATE_KEY_FILE``, else the
    default file.

    The default file (and, when named by ``$ORCH_STATE_KEY_FILE``, that one) is created on first
    use with 32 random bytes, readable by its owner only.

    Args:
        store_root: the results store: a key file inside it is refused.

    Raises:
        UserError: a key that is too short, a key file inside the store or that others can read
            or write.
    """
    env = os.environ.get(KEY_ENV, "")
    if env.strip():
        return StateKey(_decode(env, f"${KEY_ENV}"), f"${KEY_ENV}")
    named = os.environ.get(KEY_FILE_ENV, "").strip()
    path = Path(named).expanduser() if named else default_key_file()
    where = f"{path} (${KEY_FILE_ENV})" if named else str(path)
    if store_root is not None and not fs.is_remote(store_root):
        root = Path(str(store_root)).resolve()
        if path.resolve() == root or root in path.resolve().parents:
            raise UserError(f"the state key file {path} is inside the results store {root}: "
                            "whoever can write the store could sign state with it; keep it "
                            f"elsewhere (${KEY_FILE_ENV})")
    try:
        if not path.exists():
            _create_key_file(path)
        mode = path.stat().st_mode
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read or create the state key file {where}: {err}; set "
                        f"{KEY_ENV} (a secret string) or {KEY_FILE_ENV}") from None
    if os.name == "posix" and mode & 0o077:
        raise UserError(f"the state key file {path} can be read or written by other users "
                        f"(mode {mode & 0o777:o}): `chmod 600 {path}`")
    return StateKey(_decode(text, where), where)


def _create_key_file(path: Path) -> None:
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        # Atomic (the key file never exists half-written); a key another process created
        # meanwhile stays.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def digest(key: StateKey, sweep_id: str, name: str, path: str | AnyPath) -> str:
    """HMAC-SHA256 of the file at ``path``, bound to its sweep and to its name in the experiment
    directory (a signed file copied under another name, or into another sweep, does not verify)."""
    prefix = _DOMAIN + sweep_id.encode() + b"\0" + name.encode() + b"\0"
    mac = hmac.new(key.secret, prefix, hashlib.sha256)
    if fs.is_remote(path):
        mac.update(path.read_bytes())
        return mac.hexdigest()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            mac.update(chunk)
    return mac.hexdigest()


def text_digest(key: StateKey, sweep_id: str, name: str, text: str) -> str:
    """:func:`digest` of ``text`` (a sweep's config as the store's sweeps table holds it)."""
    prefix = _DOMAIN + sweep_id.encode() + b"\0" + name.encode() + b"\0"
    return hmac.new(key.secret, prefix + text.encode(), hashlib.sha256).hexdigest()


def trust_config(key: StateKey, sweep_id: str, name: str, text: str, signatures: Iterable[object],
                 context: str) -> None:
    """Refuse a stored config that names code to import unless this machine's key signed it.

    A config read from the store (a resume, a re-tune) may name a model, a data factory or a
    training function by import path, and a project directory to import them from: importing
    runs code, so only a config this machine (or one holding its key) wrote is imported.
    ``signatures``: those recorded for it (the sweeps row's, or the signatures file's).

    Raises:
        UserError: the signature is missing or does not match.
    """
    expected = text_digest(key, sweep_id, name, text)
    if not any(isinstance(sig, str) and hmac.compare_digest(sig, expected) for sig in signatures):
        raise UserError(f"{context}: the config stored for sweep {sweep_id} names code to import (a model or data "
                        f"factory, a training function) and is not signed by this machine's key ({key.where}); "
                        "refusing to import it. Run the study's config file with orch sweep, or set "
                        f"{KEY_ENV} to the key of the machine that wrote the sweep")


class SignaturesError(ValueError):
    """The signatures file is missing or malformed."""


def read_signatures(exp_dir: str | AnyPath) -> dict[str, list[str]]:
    """File name -> its recorded signatures (oldest first).

    Raises:
        SignaturesError: no signatures file, or one that is not orch's format.
    """
    path = fs.as_path(exp_dir) / SIGNATURES_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise SignaturesError(f"no {SIGNATURES_FILE}") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise SignaturesError(f"{SIGNATURES_FILE} is malformed ({type(err).__name__})") from None
    files = doc.get("files") if isinstance(doc, dict) and doc.get("format") == _FORMAT else None
    if not isinstance(files, dict) or not all(
            isinstance(sigs, list) and all(isinstance(s, str) and _HEX.fullmatch(s) for s in sigs)
            for sigs in files.values()):
        raise SignaturesError(f"{SIGNATURES_FILE} is malformed")
    return files


def sign(exp_dir: str | AnyPath, files: Mapping[str, str | AnyPath], key: StateKey,
         sweep_id: str | None = None) -> None:
    """Record the signatures of ``files`` (name in ``exp_dir`` -> where its bytes are now).

    Called before the files reach ``exp_dir``. The signatures file is replaced atomically
    (temporary file, fsync, rename): a process killed at any moment leaves the previous one or
    the new one. ``sweep_id`` defaults to the name of ``exp_dir``.
    """
    exp_dir = fs.as_path(exp_dir)
    try:
        recorded = read_signatures(exp_dir)
    except SignaturesError:
        recorded = {}  # (a malformed file signs nothing: what it held cannot be trusted)
    sweep_id = sweep_id or exp_dir.name
    for name, path in files.items():
        sig = digest(key, sweep_id, name, path)
        history = [s for s in recorded.get(name, []) if s != sig]
        recorded[name] = [*history, sig][-HISTORY:]
    doc = {"format": _FORMAT, "version": 1, "algorithm": "HMAC-SHA256", "sweep_id": sweep_id,
           "files": dict(sorted(recorded.items()))}
    fs.write_bytes_atomic(exp_dir / SIGNATURES_FILE, json.dumps(doc, indent=1).encode())


def top_level_files(directory: str | AnyPath, exempt: Iterable[str] = ()) -> dict[str, AnyPath]:
    """Name -> path of every entry at the top of ``directory`` Tune might read: not a directory,
    not hidden (Tune's temporary files and NFS leftovers; Tune reads none), not in ``exempt``."""
    skip = {SIGNATURES_FILE, *exempt}
    where = fs.as_path(directory)
    if fs.is_remote(where):
        dirs = set(fs.subdirectories(where))
        return {n: where / n for n in sorted(fs.names(where))
                if not n.startswith(".") and n not in skip and n not in dirs}
    local = Path(str(where))
    return {p.name: p for p in sorted(local.iterdir())
            if not p.name.startswith(".") and p.name not in skip and not p.is_dir()}


def sign_dir(source: str | AnyPath, exp_dir: str | AnyPath, key: StateKey,
             exempt: Iterable[str] = (), sweep_id: str | None = None) -> None:
    """Sign every file at the top of ``source`` under its name, for ``exp_dir`` (Tune's staging
    directory, just before Tune uploads it to the experiment directory)."""
    sign(exp_dir, top_level_files(source, exempt), key, sweep_id)


def verify(directory: str | AnyPath, key: StateKey, *, sweep_id: str, context: str,
           exempt: Iterable[str] = (), signatures_dir: str | AnyPath | None = None) -> None:
    """Refuse unless every Tune state file at the top of ``directory`` matches a recorded signature.

    Args:
        directory: the experiment directory (or a local copy of its files).
        key: this machine's key.
        sweep_id: the sweep the files belong to (the experiment directory's name).
        context: the start of the error message, e.g. ``--resume: sweep 2026...``.
        exempt: orch's own files there, which Tune never reads.
        signatures_dir: where the signatures file is (default: ``directory``).

    Raises:
        UserError: a file that is unsigned or changed, a missing or malformed signatures file.
    """
    sig_dir = fs.as_path(signatures_dir or directory)
    how = (f"The key is {key.where}; to resume on another machine, set {KEY_ENV} to the key of "
           "the machine that wrote the sweep.")
    try:
        recorded = read_signatures(sig_dir)
    except SignaturesError as err:
        raise UserError(f"{context}: {err} in {sig_dir}, so Tune's state there cannot be checked; "
                        "refusing to load it (sweeps started by this version of orch sign their "
                        f"state). {how}") from None
    for name, path in top_level_files(directory, exempt).items():
        # (Not a regular file: a FIFO would block the read, and Tune has no use for one.)
        if not (path.is_file() and digest(key, sweep_id, name, path) in recorded.get(name, [])):
            raise UserError(f"{context}: Tune's state file {name} is not signed by this "
                            "machine's key (written by someone else, or changed); refusing to "
                            f"load it. {how}")

