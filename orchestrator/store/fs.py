"""Where a store lives: a local directory, or a prefix in object storage (``s3://``, ``gs://``).

A local store is a :class:`pathlib.Path`, as it always was. A store in object storage is an
:class:`ObjectPath`: the part of :class:`pathlib.Path`'s API that orch uses (``/``, ``name``,
``parent``, ``exists``, ``iterdir``, ``open``, ``read_bytes``, ``write_bytes``, ``unlink``...),
backed by pyarrow's filesystems, the ones Ray Tune uses for its own ``storage_path``. Credentials
and the endpoint come from the usual environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``; for Google Cloud
Storage, ``GOOGLE_APPLICATION_CREDENTIALS``), or from the URI's query string as pyarrow reads it.

The few operations that differ go through this module's functions, which take either kind:

- :func:`write_atomic`: a local file is written under a hidden temporary name, flushed and
  renamed into place; an object is uploaded in one request, which object storage makes visible
  whole or not at all, so readers never see half a file either way.
- :func:`names`: the names in a directory (or under a prefix), without ``stat`` calls.
- :func:`lock`: a local file lock, or a lock object created with a conditional write
  (``If-None-Match: *`` on S3, ``ifGenerationMatch=0`` on GCS), which only one writer can win.

An ``ObjectPath`` has no ``__fspath__``: code that would hand it to ``open`` or ``os`` fails
loudly instead of writing a local file named like a URI.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any, TypeGuard

from orchestrator.errors import StoreError, UserError

SCHEMES = ("s3", "gs")
TMP_SUFFIX = ".tmp"


def is_uri(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` names object storage (``s3://...`` or ``gs://...``)."""
    return isinstance(text, str) and text.split("://", 1)[0].lower() in SCHEMES and "://" in text


def as_path(text: str | os.PathLike[str] | ObjectPath) -> AnyPath:
    """A local :class:`Path`, or an :class:`ObjectPath` for an ``s3://`` or ``gs://`` URI."""
    if isinstance(text, ObjectPath | Path):
        return text
    if is_uri(text):
        return ObjectPath(str(text))
    text = os.fspath(text)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise UserError(f"store: {text}: unknown scheme {scheme!r}; use a local path, s3://bucket/prefix "
                        "or gs://bucket/prefix")
    return Path(text)


def is_remote(path: object) -> TypeGuard[ObjectPath]:
    return isinstance(path, ObjectPath)


_FILESYSTEMS: dict[str, Any] = {}


def _filesystem(scheme: str, bucket: str, query: str) -> Any:
    """pyarrow's filesystem for one bucket (cached: creating one reads credentials)."""
    key = f"{scheme}://{bucket}?{query}"
    fs = _FILESYSTEMS.get(key)
    if fs is None:
        import pyarrow.fs as pafs

        options = query
        if scheme == "s3" and "allow_delayed_open" not in query:
            # A small object is then one PUT request, not a multipart upload's three.
            options = "&".join(filter(None, [query, "allow_delayed_open=true"]))
        try:
            fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}" + (f"?{options}" if options else ""))
        except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds; all are "cannot reach"
            raise UserError(f"store: cannot open {scheme}://{bucket}: {_one_line(err)}") from None
        _FILESYSTEMS[key] = fs
    return fs


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:300] + "..."


class ObjectPath:
    """A key (or prefix) in an object store bucket, with pathlib's API where orch needs it."""

    __slots__ = ("scheme", "bucket", "key", "query")

    def __init__(self, uri: str, *, _parts: tuple[str, str, str, str] | None = None) -> None:
        if _parts is not None:
            self.scheme, self.bucket, self.key, self.query = _parts
            return
        scheme, rest = uri.split("://", 1)
        rest, _, query = rest.partition("?")
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise UserError(f"store: {uri}: no bucket (use {scheme}://bucket/prefix)")
        parts = [p for p in key.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise UserError(f"store: {uri}: '..' is not allowed in an object storage path")
        self.scheme, self.bucket, self.key, self.query = scheme.lower(), bucket, "/".join(parts), query

    # -- names --------------------------------------------------------------------------------------
    def _with_key(self, key: str) -> ObjectPath:
        return ObjectPath("", _parts=(self.scheme, self.bucket, key, self.query))

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}" + (f"/{self.key}" if self.key else "")

    @property
    def uri(self) -> str:
        """The URI with its query string (endpoint options), as Ray Tune's ``storage_path`` takes it."""
        return str(self) + (f"?{self.query}" if self.query else "")

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and (self.scheme, self.bucket, self.key) == \
            (other.scheme, other.bucket, other.key)

    def __hash__(self) -> int:
        return hash((self.scheme, self.bucket, self.key))

    def __lt__(self, other: ObjectPath) -> bool:
        return str(self) < str(other)

    def __truediv__(self, part: str | os.PathLike[str]) -> ObjectPath:
        return self.joinpath(part)

    def joinpath(self, *parts: str | os.PathLike[str]) -> ObjectPath:
        key = self.key
        for part in parts:
            for p in str(part).split("/"):
                if p in ("", "."):
                    continue
                if p == "..":
                    raise StoreError(f"refusing to use {self}/{part}: '..' in an object storage path")
                key = f"{key}/{p}" if key else p
        return self._with_key(key)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1] if self.key else ""

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def parent(self) -> ObjectPath:
        return self._with_key(self.key.rsplit("/", 1)[0] if "/" in self.key else "")

    @property
    def parents(self) -> list[ObjectPath]:
        out, p = [], self
        while p.key:
            p = p.parent
            out.append(p)
        return out

    @property
    def parts(self) -> tuple[str, ...]:
        return (f"{self.scheme}://{self.bucket}", *(self.key.split("/") if self.key else ()))

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    def with_suffix(self, suffix: str) -> ObjectPath:
        return self.with_name(self.stem + suffix)

    def relative_to(self, other: Any) -> PurePosixPath:
        if other != self and other not in self.parents:
            raise ValueError(f"{self} is not inside {other}")
        return PurePosixPath(self.key[len(other.key):].lstrip("/"))

    def is_relative_to(self, other: ObjectPath) -> bool:
        return other == self or other in self.parents

    def resolve(self) -> ObjectPath:
        return self  # no links in object storage; '..' is refused when a path is made

    absolute = resolve
    expanduser = resolve

    def as_posix(self) -> str:
        return str(self)

    # -- the bucket -----------------------------------------------------------------------------------
    @property
    def fs(self) -> Any:
        return _filesystem(self.scheme, self.bucket, self.query)

    @property
    def fs_path(self) -> str:
        """The path pyarrow's filesystem takes (``bucket/key``)."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    def _info(self) -> Any:
        return _call(self, lambda: self.fs.get_file_info(self.fs_path))

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.Directory

    def stat(self) -> os.stat_result:
        import pyarrow.fs as pafs

        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(str(self))
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        return os.stat_result((0o100644, 0, 0, 1, 0, 0, info.size or 0, mtime, mtime, mtime))

    def iterdir(self) -> Iterator[ObjectPath]:
        for info in _list(self, recursive=False):
            yield self / info.base_name

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        depth = pattern.count("/") + 1
        recursive = "**" in pattern or depth > 1
        for info in _list(self, recursive=recursive):
            rel = info.path[len(self.fs_path):].lstrip("/")
            if fnmatch.fnmatchcase(rel, pattern) and ("**" in pattern or rel.count("/") + 1 == depth):
                yield self / rel

    def rglob(self, pattern: str) -> Iterator[ObjectPath]:
        for info in _list(self, recursive=True):
            if fnmatch.fnmatchcase(info.base_name, pattern):
                yield self / info.path[len(self.fs_path):].lstrip("/")

    def mkdir(self, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: object storage has no directories, a key's prefixes exist with it."""

    def open(self, mode: str = "r", encoding: str | None = None, **_: Any) -> IO[Any]:
        if mode in ("rb", "r"):
            data = self.read_bytes()
            return io.BytesIO(data) if mode == "rb" else io.StringIO(data.decode(encoding or "utf-8"))
        if mode in ("wb", "w"):
            return _Upload(self, text=mode == "w")
        raise ValueError(f"ObjectPath.open: mode {mode!r} is not supported")

    def read_bytes(self) -> bytes:
        """The object's bytes, all of one version of it: pyarrow asks for the size, then the bytes;
        an object replaced in between (a manifest, a pointer) would read as a mixture of two, so a
        read is repeated until the size and time stay the same across it."""
        import pyarrow.fs as pafs

        def read() -> bytes:
            with self.fs.open_input_stream(self.fs_path) as f:
                return f.read()

        for _ in range(20):
            before = self._info()
            if before.type == pafs.FileType.NotFound:
                raise FileNotFoundError(str(self))
            data = _call(self, read)
            after = self._info()
            if (before.size, before.mtime) == (after.size, after.mtime) and len(data) == after.size:
                return data
        raise StoreError(f"cannot read {self}: it kept changing while it was read")

    def read_text(self, encoding: str | None = None) -> str:
        return self.read_bytes().decode(encoding or "utf-8")

    def write_bytes(self, data: bytes) -> int:
        def write() -> None:
            with self.fs.open_output_stream(self.fs_path) as f:
                f.write(data)
        _call(self, write)
        return len(data)

    def write_text(self, text: str, encoding: str | None = None) -> int:
        return self.write_bytes(text.encode(encoding or "utf-8"))

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            _call(self, lambda: self.fs.delete_file(self.fs_path))
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rename(self, target: ObjectPath) -> ObjectPath:
        _call(self, lambda: self.fs.move(self.fs_path, target.fs_path))
        return target

    replace = rename

    def rmtree(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            _call(self, lambda: self.fs.delete_dir(self.fs_path))

    def open_input_file(self) -> Any:
        """A random-access pyarrow file (Parquet reads fetch only the byte ranges they need)."""
        return _call(self, lambda: self.fs.open_input_file(self.fs_path))


class _Upload(io.BytesIO):
    """A file opened for writing in object storage: uploaded in one request when closed (without
    an error), so the object appears whole or not at all."""

    def __init__(self, path: ObjectPath, text: bool) -> None:
        super().__init__()
        self._path, self._text, self._failed = path, text, False

    def write(self, data: Any) -> int:
        return super().write(data.encode() if isinstance(data, str) else data)

    def __exit__(self, kind: Any, *rest: Any) -> None:
        self._failed = kind is not None
        super().__exit__(kind, *rest)

    def close(self) -> None:
        if not self.closed and not self._failed:
            self._path.write_bytes(self.getvalue())
        super().close()


def _list(path: ObjectPath, recursive: bool) -> list[Any]:
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(path.fs_path, recursive=recursive, allow_not_found=True)
    return _call(path, lambda: path.fs.get_file_info(selector))


def _call(path: ObjectPath, fn: Callable[[], Any]) -> Any:
    """Run one filesystem call: a missing key is FileNotFoundError, as for a local file; any other
    failure is a one-line StoreError naming the path."""
    try:
        return fn()
    except FileNotFoundError:
        raise
    except OSError as err:
        text = str(err)
        if any(m in text for m in ("Path does not exist", "NoSuchKey", "RESOURCE_NOT_FOUND")) \
                or "does not exist" in text.lower():
            raise FileNotFoundError(str(path)) from None
        raise StoreError(f"cannot use {path}: {_one_line(err)}") from None


# A local Path or an ObjectPath. Typed Any: ObjectPath has the part of Path's API orch uses, and
# code written for one works for the other (the functions above and below cover the rest).
AnyPath = Any


# -- operations that differ between a local directory and object storage ---------------------------


def names(directory: AnyPath) -> list[str]:
    """The names of the entries of a directory (none if it does not exist), unsorted."""
    if isinstance(directory, ObjectPath):
        return [info.base_name for info in _list(directory, recursive=False)]
    try:
        with os.scandir(directory) as entries:
            return [e.name for e in entries]
    except (FileNotFoundError, NotADirectoryError):
        return []


def subdirectories(directory: AnyPath) -> list[str]:
    """The names of the sub-directories of a directory."""
    if isinstance(directory, ObjectPath):
        import pyarrow.fs as pafs

        return [i.base_name for i in _list(directory, recursive=False) if i.type == pafs.FileType.Directory]
    try:
        with os.scandir(directory) as entries:
            return [e.name for e in entries if e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def write_atomic(path: AnyPath, write: Callable[[IO[bytes]], object], parents: bool = True) -> None:
    """Write a file whole or not at all: ``write(f)`` fills it.

    Local: a hidden temporary file beside it, flushed to disk, renamed into place, the directory
    flushed (and created first, with ``parents``). Object storage: one upload, made when
    ``write`` returns without an error.
    """
    if isinstance(path, ObjectPath):
        buffer = io.BytesIO()
        write(buffer)
        path.write_bytes(buffer.getvalue())
        return
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: AnyPath, data: bytes, parents: bool = True) -> None:
    write_atomic(path, lambda f: f.write(data), parents)


def read_parquet_file(path: AnyPath) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` of a local or remote file (remote reads fetch only the
    footer and the column chunks asked for)."""
    import pyarrow.parquet as pq

    if isinstance(path, ObjectPath):
        return pq.ParquetFile(path.open_input_file())
    return pq.ParquetFile(path)


def rmtree(path: AnyPath) -> None:
    if isinstance(path, ObjectPath):
        path.rmtree()
    else:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- locks --------------------------------------------------------------------------------------------


class LockTimeout(Exception):
    """The lock is held by someone else (and ``timeout`` ran out)."""


@contextlib.contextmanager
def lock(path: AnyPath, timeout: float = -1, stale_after_s: float = 6 * 3600,
         poll_s: float = 0.5) -> Iterator[None]:
    """Hold an exclusive lock named by ``path`` (``timeout`` < 0: wait for ever; 0: try once).

    Local: a file lock (``filelock``), released by the OS if the holder dies. Object storage: a
    lock object created with a conditional write that fails if it exists; it records who holds it
    and since when, and a holder that died without releasing it is taken over, again by a
    conditional write (on the object's ETag), once it is older than ``stale_after_s``.
    """
    if not isinstance(path, ObjectPath):
        from filelock import FileLock, Timeout

        try:
            with FileLock(path, timeout=timeout):
                yield
        except Timeout:
            raise LockTimeout(str(path)) from None
        return
    held = _ObjectLock(path, stale_after_s)
    start = time.monotonic()
    while not held.acquire():
        if 0 <= timeout <= time.monotonic() - start:
            raise LockTimeout(str(path))
        time.sleep(poll_s)
    try:
        yield
    finally:
        held.release()


class _ObjectLock:
    def __init__(self, path: ObjectPath, stale_after_s: float) -> None:
        self.path, self.stale_after_s = path, stale_after_s
        self.token = uuid.uuid4().hex

    def _body(self) -> bytes:
        return json.dumps({"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                           "since": datetime.now(timezone.utc).isoformat()}).encode()

    def acquire(self) -> bool:
        client = _conditional_client(self.path)
        if client.create(self.path, self._body()):
            return True
        held = client.get(self.path)
        if held is None:
            return False  # released meanwhile: the next try may win
        body, version = held
        try:
            since = datetime.fromisoformat(json.loads(body)["since"])
            age = (datetime.now(timezone.utc) - since).total_seconds()
        except (ValueError, KeyError, TypeError):
            age = float("inf")  # not a lock orch wrote: treat as stale
        return age > self.stale_after_s and client.replace(self.path, self._body(), version)

    def release(self) -> None:
        client = _conditional_client(self.path)
        held = client.get(self.path)
        if held is not None and json.loads(held[0]).get("token") == self.token:
            self.path.unlink(missing_ok=True)


class _S3Conditional:
    """Conditional writes on S3 (and S3-compatible stores: MinIO, moto) through boto3."""

    def __init__(self) -> None:
        try:
            import boto3
        except ImportError:
            raise UserError("store: locks on s3:// need boto3; pip install 'orch[s3]'") from None
        self.client = boto3.client("s3")

    def create(self, path: ObjectPath, body: bytes) -> bool:
        return self._put(path, body, IfNoneMatch="*")

    def replace(self, path: ObjectPath, body: bytes, version: str) -> bool:
        return self._put(path, body, IfMatch=version)

    def _put(self, path: ObjectPath, body: bytes, **condition: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=path.bucket, Key=path.key, Body=body, **condition)
            return True
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            raise StoreError(f"cannot lock {path}: {_one_line(err)}") from None

    def get(self, path: ObjectPath) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            r = self.client.get_object(Bucket=path.bucket, Key=path.key)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise StoreError(f"cannot read {path}: {_one_line(err)}") from None
        return r["Body"].read(), r["ETag"]


class _GCSConditional:
    """Conditional writes on Google Cloud Storage (generation preconditions)."""

    def __init__(self) -> None:
        try:
            from google.cloud import storage  # type: ignore[import-not-found,import-untyped,unused-ignore]
        except ImportError:
            raise UserError("store: locks on gs:// need google-cloud-storage; pip install 'orch[gcs]'") from None
        self.client = storage.Client()

    def _blob(self, path: ObjectPath) -> Any:
        return self.client.bucket(path.bucket).blob(path.key)

    def create(self, path: ObjectPath, body: bytes) -> bool:
        return self._put(path, body, 0)

    def replace(self, path: ObjectPath, body: bytes, version: str) -> bool:
        return self._put(path, body, int(version))

    def _put(self, path: ObjectPath, body: bytes, generation: int) -> bool:
        from google.api_core.exceptions import PreconditionFailed  # type: ignore[import-not-found,unused-ignore]

        try:
            self._blob(path).upload_from_string(body, if_generation_match=generation)
            return True
        except PreconditionFailed:
            return False

    def get(self, path: ObjectPath) -> tuple[bytes, str] | None:
        blob = self.client.bucket(path.bucket).get_blob(path.key)
        return None if blob is None else (blob.download_as_bytes(), str(blob.generation))


_CONDITIONAL: dict[str, Any] = {}


def _conditional_client(path: ObjectPath) -> Any:
    client = _CONDITIONAL.get(path.scheme)
    if client is None:
        client = _CONDITIONAL[path.scheme] = _S3Conditional() if path.scheme == "s3" else _GCSConditional()
    return client
