"""The one storage boundary: local paths and ``s3://`` URLs through fsspec/s3fs.

Every remote call goes through :func:`_call`, which retries transient failures with backoff and
translates remote errors into Python exceptions (``FileNotFoundError``, ``PermissionError``,
:class:`StorageUnavailableError`), the original kept as ``__cause__``. Writes are atomic: a local file
is written beside its target and renamed over it; an object is put whole, so a reader sees the old
object or the new one, never a part.

Local writes go through temporary files beside their targets (:mod:`cxr.local_writes`: their names, and
the removal of those a killed write left). A full disk raises :class:`StorageFullError` naming the file.

Compare-and-swap (:func:`create_exclusive`, :func:`read_versioned`, :func:`replace_if`,
:func:`remove_if`): on S3 conditional requests (``If-None-Match: *``, ``If-Match: <ETag>``), locally
a hard link (create) or an ``flock`` on a sidecar ``.<name>.lock`` (replace, remove); a version token
is the ETag on S3 and the content's sha256 locally.

Credentials come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ...) as boto reads them; nothing here logs or stores them.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import posixpath
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from cxr import local_writes

log = logging.getLogger(__name__)
T = TypeVar("T")

# Delays between attempts; the number of attempts is one more than its length.
_DEFAULT_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)


class StorageError(OSError):
    """A storage operation failed in a way the caller should not retry."""


class StorageUnavailableError(StorageError):
    """The store could not be reached, or kept failing, after all retries."""


class StorageFullError(StorageError):
    """No space left (or quota exceeded) while writing a file; the file is named, nothing partial is left."""


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


def absolute(url: str) -> str:
    """A local path made absolute (so every process, whatever its working folder, names the same files and
    listings compare equal to it); a remote URL unchanged."""
    if is_remote(url):
        return url
    if url.startswith("file://"):
        url = url[len("file://") :]
    return os.path.abspath(url)


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


def _denied(url: str, err: PermissionError) -> PermissionError:
    """A refusal by the object store, with what to check: the variables' names, never their values."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or "the AWS default"
    return PermissionError(
        f"{url}: {err.strerror or err} (the store refused the request: check AWS_ACCESS_KEY_ID and "
        f"AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, and AWS_ENDPOINT_URL, now {endpoint})"
    )


def retrying(op: str, url: str, fn: Callable[[], T]) -> T:
    """Run one storage operation with retries on transient errors and translated exceptions."""
    delays = backoff_schedule()
    for attempt in range(len(delays) + 1):
        try:
            return fn()
        except PermissionError as exc:
            if is_remote(url):
                raise _denied(url, exc) from exc
            raise
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError):
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
    return retrying("read", url, lambda: fs.cat_file(path))


def read_range(url: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a file or object (one ranged request on S3)."""
    fs, path = filesystem(url)
    return retrying("read", url, lambda: fs.cat_file(path, start=start, end=end))


class SourceReadError(StorageUnavailableError):
    """Reading a stream from the store failed midway (not the data's fault: retry the whole read)."""


class _Stream(io.RawIOBase):
    """A file opened for reading whose own read errors are told apart from errors in what it holds."""

    def __init__(self, url: str, handle: Any) -> None:
        self.url, self._handle, self.consumed = url, handle, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._handle.read(len(buffer))
        except Exception as err:
            raise SourceReadError(f"reading {self.url} failed: {type(err).__name__}: {err}") from err
        buffer[: len(data)] = data
        self.consumed += len(data)
        return len(data)

    def close(self) -> None:
        with suppress(Exception):
            self._handle.close()
        super().close()


STREAM_BLOCK = 8 * 2**20  # bytes per request when a large object is read front to back


def open_stream(url: str) -> _Stream:
    """A file or object opened for one read front to back; ``consumed`` counts the bytes read so far.

    Errors reading it raise :class:`SourceReadError`, so a caller that parses the stream can tell a
    store that failed from data that is damaged.
    """
    fs, path = filesystem(url)
    handle = retrying("open", url, lambda: fs.open(path, "rb", block_size=STREAM_BLOCK))
    return _Stream(url, handle)


def open_random(url: str) -> Any:
    """A seekable file object over a file or object (ranged reads on S3), e.g. for a zip's directory."""
    fs, path = filesystem(url)
    return retrying("open", url, lambda: fs.open(path, "rb", block_size=2**20))


def remove_stale_temps(url: str, recursive: bool = False) -> list[str]:
    """Remove the temp files killed writes left in a local folder (and below it with ``recursive``); their paths
    (:func:`cxr.local_writes.is_stale_temp`). Object stores have no temp files: nothing to do there."""
    fs, folder = filesystem(url)
    if not isinstance(fs, LocalFileSystem):
        return []
    return local_writes.remove_stale_temps(folder, recursive)


def _raise_if_full(err: OSError, url: str) -> None:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        raise StorageFullError(err.errno, f"no space left on the device writing {url}") from err


def write_bytes(url: str, data: bytes, durable: bool = False) -> None:
    """Write ``data`` atomically: readers see the old content or the new, never a part.

    ``durable`` (for markers such as LATEST and ``dataset.json``) flushes the file to disk before the
    rename and the folder after it, so a power loss cannot leave the marker empty or missing.
    """
    fs, path = filesystem(url)
    if not isinstance(fs, LocalFileSystem):
        retrying("write", url, lambda: fs.pipe_file(path, data))
        return
    write_local(url, path, data, durable, os.replace)


def write_local(url: str, path: str, data: bytes, durable: bool, place: Callable[[str, str], None]) -> None:
    """``data`` into a temp file beside ``path``, then ``place`` it there (``os.replace``: atomic; ``os.link``:
    refuses an existing name); the folder synced when ``durable``; a full disk named; no temp file left."""
    tmp = None
    try:
        tmp = local_writes.write_temp(path, data, durable)
        place(tmp, path)
        if durable:
            local_writes.fsync_dir(os.path.dirname(path) or ".")
    except OSError as err:
        _raise_if_full(err, url)
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_text(url: str, text: str, durable: bool = False) -> None:
    """Write UTF-8 text atomically (``durable``: see :func:`write_bytes`)."""
    write_bytes(url, text.encode("utf-8"), durable)


def read_text(url: str) -> str:
    """Read a UTF-8 text file."""
    return read_bytes(url).decode("utf-8")


def copy(src: str, dst: str, immutable: bool = False) -> None:
    """Copy a file or object; S3 to S3 is a server-side copy, anything else goes through this process.

    ``immutable``: the source is never changed in place (every write here replaces a file by a new one),
    so on one local filesystem a hard link stands for the copy: no bytes written, no disk taken twice.
    """
    fs, src_path = filesystem(src)
    if src.startswith("s3://") and dst.startswith("s3://"):
        _, dst_path = filesystem(dst)
        retrying("copy", src, lambda: fs.copy(src_path, dst_path))
        return
    if immutable and not is_remote(src) and not is_remote(dst):
        _, dst_path = filesystem(dst)
        os.makedirs(os.path.dirname(dst_path) or ".", exist_ok=True)
        tmp = local_writes.temp_path(dst_path)
        try:
            os.link(src_path, tmp)
            os.replace(tmp, dst_path)
            return
        except OSError:  # another filesystem, or links not allowed: copy the bytes
            with suppress(FileNotFoundError):
                os.unlink(tmp)
    write_bytes(dst, read_bytes(src))


def exists(url: str) -> bool:
    """Whether a file, object or folder exists at ``url``."""
    fs, path = filesystem(url)
    return retrying("exists", url, lambda: fs.exists(path))


def is_file(url: str) -> bool:
    """Whether ``url`` names a file (not a folder, not nothing)."""
    fs, path = filesystem(url)
    return bool(retrying("stat", url, lambda: fs.isfile(path)))


def size(url: str) -> int:
    """Size in bytes of a file or object."""
    fs, path = filesystem(url)
    return int(retrying("size", url, lambda: fs.size(path)))


def list_files(url: str, recursive: bool = False) -> list[str]:
    """Files directly under ``url`` (or all below it), sorted, as full URLs or paths. Missing folder: []."""
    fs, path = filesystem(url)

    def run() -> list[str]:
        if not fs.exists(path):
            return []
        # Object stores may list folder markers as entries: keep files only.
        entries = fs.find(path, withdirs=False, detail=True).values() if recursive else fs.ls(path, detail=True)
        return sorted(e["name"] for e in entries if e.get("type") == "file")

    return [_unstrip(fs, p) for p in retrying("list", url, run)]


def glob_files(pattern: str) -> list[str]:
    """Files matching a glob pattern (``*``, ``?``, ``[...]``; ``**`` for any depth), sorted, as full URLs or paths."""
    fs, path = filesystem(pattern)

    def run() -> list[str]:
        return sorted(name for name, e in fs.glob(path, detail=True).items() if e.get("type") == "file")

    return [_unstrip(fs, p) for p in retrying("list", pattern, run)]


def list_files_detail(url: str, recursive: bool = False) -> list[dict[str, Any]]:
    """Like :func:`list_files`, with ``size``, ``version`` (local mtime, or the object's ETag) and
    ``modified`` (seconds since the epoch)."""
    fs, path = filesystem(url)

    def run() -> list[dict[str, Any]]:
        if not fs.exists(path):
            return []
        entries = fs.find(path, withdirs=False, detail=True).values() if recursive else fs.ls(path, detail=True)
        return [e for e in entries if e.get("type") == "file"]

    return sorted((_detail(fs, e) for e in retrying("list", url, run)), key=lambda e: e["url"])


def _detail(fs: fsspec.AbstractFileSystem, e: dict[str, Any]) -> dict[str, Any]:
    version = e.get("ETag") or e.get("etag") or e.get("mtime") or e.get("LastModified") or ""
    modified = e.get("mtime") or e.get("LastModified") or 0.0
    modified = modified.timestamp() if hasattr(modified, "timestamp") else float(modified)
    return {
        "url": _unstrip(fs, e["name"]),
        "size": int(e.get("size") or 0),
        "version": str(version),
        "modified": modified,
    }


def file_detail(url: str) -> dict[str, Any]:
    """One file's listing details, as :func:`list_files_detail` gives them."""
    fs, path = filesystem(url)
    e = retrying("stat", url, lambda: fs.info(path))
    return _detail(fs, e)


def list_dirs(url: str) -> list[str]:
    """Folders directly under ``url``, sorted. Missing folder: []."""
    fs, path = filesystem(url)

    def run() -> list[str]:
        if not fs.exists(path):
            return []
        return sorted(e["name"].rstrip("/") for e in fs.ls(path, detail=True) if e.get("type") == "directory")

    return [_unstrip(fs, p) for p in retrying("list", url, run)]


def list_links(url: str) -> list[str]:
    """Symbolic links directly under a local folder, sorted, never followed (object stores have none).

    :func:`list_files` and :func:`list_dirs` leave links out: fsspec types a link neither file nor folder.
    """
    fs, path = filesystem(url)
    if not isinstance(fs, LocalFileSystem):
        return []

    def run() -> list[str]:
        if not fs.exists(path):
            return []
        return sorted(e["name"] for e in fs.ls(path, detail=True) if e.get("islink"))

    return retrying("list", url, run)


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

    retrying("remove", url, run)


def parquet_bytes(table: pa.Table, **kwargs: Any) -> bytes:
    """A table as the bytes of a Parquet file (zstd compression unless told otherwise)."""
    buf = io.BytesIO()
    kwargs.setdefault("compression", "zstd")
    pq.write_table(table, buf, **kwargs)
    return buf.getvalue()


def write_parquet(table: pa.Table, url: str, **kwargs: Any) -> None:
    """Write a Parquet file atomically (zstd compression unless told otherwise)."""
    write_bytes(url, parquet_bytes(table, **kwargs))


def parquet_table(data: bytes, columns: list[str] | None = None) -> pa.Table:
    """A table from Parquet bytes already in memory (single-threaded: see :func:`read_parquet`)."""
    return pq.read_table(pa.BufferReader(data), columns=columns, use_threads=False)


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
    return parquet_table(read_bytes(url), columns)
