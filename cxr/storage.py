"""The one storage boundary: local paths and ``s3://`` URLs through fsspec/s3fs.

Every remote call goes through :func:`_call`, which retries transient failures with backoff and
translates remote errors into Python exceptions (``FileNotFoundError``, ``PermissionError``,
:class:`StorageUnavailableError`), the original kept as ``__cause__``. Writes are atomic: a local file
is written beside its target and renamed over it; an object is put whole, so a reader sees the old
object or the new one, never a part.

Credentials come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ...) as boto reads them; nothing here logs or stores them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)
T = TypeVar("T")

# Delays between attempts; the number of attempts is one more than its length.
_DEFAULT_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)


class StorageError(OSError):
    """A storage operation failed in a way the caller should not retry."""


class StorageUnavailableError(StorageError):
    """The store could not be reached, or kept failing, after all retries."""


class UnsafePathError(ValueError):
    """A relative path (from a data file) would leave the root it must stay under."""


def backoff_schedule() -> tuple[float, ...]:
    """Delays between retries; ``CXR_STORAGE_RETRIES`` (attempts after the first) shortens or extends it."""
    raw = os.environ.get("CXR_STORAGE_RETRIES")
    if raw is None:
        return _DEFAULT_BACKOFF_S
    try:
        retries = int(raw)
    except ValueError:
        raise ValueError(f"CXR_STORAGE_RETRIES must be an integer, got {raw!r}") from None
    if retries < 0:
        raise ValueError(f"CXR_STORAGE_RETRIES must be >= 0, got {retries}")
    return tuple(min(0.5 * 2**i, 8.0) for i in range(retries))


def is_remote(url: str) -> bool:
    """True for URLs with a scheme other than ``file://`` (``s3://`` and friends)."""
    return "://" in url and not url.startswith("file://")


_S3_CACHE: dict[tuple[str, ...], fsspec.AbstractFileSystem] = {}


def _s3_filesystem() -> fsspec.AbstractFileSystem:
    """One S3 filesystem per endpoint and credentials; botocore reads the credentials from the environment.

    fsspec's own instance cache is keyed by constructor arguments only, so it would keep using an old
    endpoint or old keys after the environment changed; this cache is keyed by them (the secret hashed).
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    key = (
        endpoint,
        os.environ.get("AWS_ACCESS_KEY_ID", ""),
        hashlib.sha256(secret.encode()).hexdigest(),
        os.environ.get("AWS_PROFILE", ""),
    )
    fs = _S3_CACHE.get(key)
    if fs is None:
        import s3fs

        fs = s3fs.S3FileSystem(
            skip_instance_cache=True,
            use_listings_cache=False,  # other processes (Dask workers) write here too: never trust a cached listing
            endpoint_url=endpoint or None,
            # One retry layer (ours, in _call): botocore is told not to retry on its own.
            config_kwargs={
                "retries": {"max_attempts": 1, "mode": "standard"},
                "connect_timeout": 5,
                "read_timeout": 60,
            },
        )
        fs.retries = 1  # s3fs's own retry loop; a class attribute, not a constructor argument
        _S3_CACHE[key] = fs
    return fs


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for ``url`` and the path within it."""
    if url.startswith("s3://"):
        return _s3_filesystem(), url[len("s3://") :]
    if is_remote(url):
        return fsspec.core.url_to_fs(url)
    local = url[len("file://") :] if url.startswith("file://") else url
    return LocalFileSystem(), os.path.abspath(os.path.expanduser(local))


def _unstrip(fs: fsspec.AbstractFileSystem, path: str) -> str:
    if isinstance(fs, LocalFileSystem):
        return path
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return f"{protocol}://{path}"


def join(url: str, *parts: str) -> str:
    """Join path parts onto a local path or a URL with ``/``."""
    if is_remote(url):
        return posixpath.join(url.rstrip("/"), *parts)
    return os.path.join(url, *parts)


def safe_join(root: str, relative: str) -> str:
    """Join a relative path taken from a data file onto ``root``, refusing anything that leaves it.

    Refused: absolute paths, ``..`` components, backslashes, NUL bytes, empty names, drive letters.
    """
    if not relative or "\x00" in relative or "\\" in relative:
        raise UnsafePathError(f"unsafe path {relative!r}: empty, NUL byte or backslash")
    if relative.startswith("/") or (len(relative) > 1 and relative[1] == ":"):
        raise UnsafePathError(f"unsafe path {relative!r}: absolute")
    parts = relative.split("/")
    if any(p in ("..", ".", "") for p in parts):
        raise UnsafePathError(f"unsafe path {relative!r}: '..', '.' or empty component")
    return join(root, *parts)


def _is_transient(exc: BaseException) -> bool:
    """Connection trouble, timeouts, throttling and 5xx answers: worth another try."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    name = type(exc).__name__
    if name in {
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ServerDisconnectedError",
        "ClientConnectorError",
        "ClientOSError",
        "FSTimeoutError",
        "IncompleteRead",
        "ResponseParserError",
        "ClientPayloadError",
    }:
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = response.get("Error", {}).get("Code", "")
        if status >= 500 or code in {"SlowDown", "Throttling", "RequestTimeout", "InternalError"}:
            return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and _is_transient(cause)


def _call(op: str, url: str, fn: Callable[[], T]) -> T:
    """Run one storage operation with retries on transient errors and translated exceptions."""
    delays = backoff_schedule()
    for attempt in range(len(delays) + 1):
        try:
            return fn()
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError):
            raise
        except Exception as exc:
            if not _is_transient(exc):
                if isinstance(exc, OSError):
                    raise
                raise StorageError(f"{op} {url} failed: {type(exc).__name__}: {exc}") from exc
            if attempt == len(delays):
                raise StorageUnavailableError(
                    f"{op} {url} failed after {attempt + 1} attempts: {type(exc).__name__}: {exc}"
                ) from exc
            log.warning("%s %s: %s; retrying in %.1f s", op, url, type(exc).__name__, delays[attempt])
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")


def read_bytes(url: str) -> bytes:
    """The whole content of a file or object."""
    fs, path = filesystem(url)
    return _call("read", url, lambda: fs.cat_file(path))


def write_bytes(url: str, data: bytes, durable: bool = False) -> None:
    """Write ``data`` atomically: readers see the old content or the new, never a part.

    ``durable`` also flushes a local file to disk before the rename (for markers such as LATEST).
    """
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    _call("write", url, lambda: fs.pipe_file(path, data))


def write_text(url: str, text: str) -> None:
    """Write UTF-8 text atomically."""
    write_bytes(url, text.encode("utf-8"))


def read_text(url: str) -> str:
    """Read a UTF-8 text file."""
    return read_bytes(url).decode("utf-8")


def copy(src: str, dst: str) -> None:
    """Copy a file or object; S3 to S3 is a server-side copy, anything else goes through this process."""
    fs, src_path = filesystem(src)
    if src.startswith("s3://") and dst.startswith("s3://"):
        _, dst_path = filesystem(dst)
        _call("copy", src, lambda: fs.copy(src_path, dst_path))
    else:
        write_bytes(dst, read_bytes(src))


def exists(url: str) -> bool:
    """Whether a file, object or folder exists at ``url``."""
    fs, path = filesystem(url)
    return _call("exists", url, lambda: fs.exists(path))


def size(url: str) -> int:
    """Size in bytes of a file or object."""
    fs, path = filesystem(url)
    return int(_call("size", url, lambda: fs.size(path)))


def list_files(url: str, recursive: bool = False) -> list[str]:
    """Files directly under ``url`` (or all below it), sorted, as full URLs or paths. Missing folder: []."""
    fs, path = filesystem(url)

    def run() -> list[str]:
        if not fs.exists(path):
            return []
        # Object stores may list folder markers as entries: keep files only.
        entries = fs.find(path, withdirs=False, detail=True).values() if recursive else fs.ls(path, detail=True)
        return sorted(e["name"] for e in entries if e.get("type") == "file")

    return [_unstrip(fs, p) for p in _call("list", url, run)]


def list_files_detail(url: str, recursive: bool = False) -> list[dict[str, Any]]:
    """Like :func:`list_files`, with ``size`` and ``version`` (local mtime in ns, or the object's ETag)."""
    fs, path = filesystem(url)

    def run() -> list[dict[str, Any]]:
        if not fs.exists(path):
            return []
        entries = fs.find(path, withdirs=False, detail=True).values() if recursive else fs.ls(path, detail=True)
        return [e for e in entries if e.get("type") == "file"]

    out = []
    for e in _call("list", url, run):
        version = e.get("ETag") or e.get("etag") or e.get("mtime") or e.get("LastModified") or ""
        out.append({"url": _unstrip(fs, e["name"]), "size": int(e.get("size") or 0), "version": str(version)})
    return sorted(out, key=lambda e: e["url"])


def list_dirs(url: str) -> list[str]:
    """Folders directly under ``url``, sorted. Missing folder: []."""
    fs, path = filesystem(url)

    def run() -> list[str]:
        if not fs.exists(path):
            return []
        return sorted(e["name"].rstrip("/") for e in fs.ls(path, detail=True) if e.get("type") == "directory")

    return [_unstrip(fs, p) for p in _call("list", url, run)]


def makedirs(url: str) -> None:
    """Create a folder and its parents (object stores have no folders: nothing to do there)."""
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(path, exist_ok=True)


def remove(url: str, recursive: bool = False) -> None:
    """Delete a file, or a folder with ``recursive``; a missing target is not an error."""
    fs, path = filesystem(url)

    def run() -> None:
        if fs.exists(path):
            fs.rm(path, recursive=recursive)

    _call("remove", url, run)


def write_parquet(table: pa.Table, url: str, **kwargs: Any) -> None:
    """Write a Parquet file atomically (zstd compression unless told otherwise)."""
    buf = io.BytesIO()
    kwargs.setdefault("compression", "zstd")
    pq.write_table(table, buf, **kwargs)
    write_bytes(url, buf.getvalue())


def read_parquet(url: str, columns: list[str] | None = None) -> pa.Table:
    """Read a whole Parquet file.

    Remote files are fetched whole and decoded with ``use_threads=False``: pyarrow 25 can abort the
    interpreter at exit ("terminate called without an active exception") after a threaded read from
    an in-memory buffer (apache/arrow#34314). Local files are read by path, which is safe and threaded.
    """
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        return pq.read_table(path, columns=columns)
    data = read_bytes(url)
    return pq.read_table(pa.BufferReader(data), columns=columns, use_threads=False)
