"""Compare-and-swap writes, the one way markers and leases change when several writers may race.

A file's *token* is its version: the ETag on S3, the sha256 of its content locally. On S3 the conditions
are the server's (``If-None-Match: *`` to create, ``If-Match`` to replace or delete); locally a hard link
creates (atomic, refuses an existing name) and an ``flock`` on a sidecar file serialises replace and
delete. Every function returns what happened instead of raising when the condition did not hold.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from fsspec.asyn import sync
from fsspec.implementations.local import LocalFileSystem

from cxr import storage

T = TypeVar("T")


@dataclass(frozen=True)
class Versioned:
    """A file's content and its version token (the ETag on S3, the content's sha256 locally)."""

    data: bytes
    token: str


def _precondition_failed(exc: BaseException) -> bool:
    """An S3 answer saying a conditional request's condition did not hold (412), or lost a race (409)."""
    if isinstance(exc, FileExistsError):
        return True
    for err in (exc, exc.__cause__):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code", "")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return True
    return False


def _conditional(op: str, url: str, fn: Callable[[], T]) -> T | None:
    """Run a conditional S3 request; None when its condition did not hold."""

    def run() -> T | None:
        try:
            return fn()
        except Exception as exc:
            if _precondition_failed(exc):
                return None
            raise

    return storage.retrying(op, url, run)


@contextmanager
def _local_cas_lock(path: str) -> Iterator[None]:
    """Serialises local compare-and-swap writers of one file (a sidecar ``.<name>.lock``, never removed)."""
    folder, name = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    fd = os.open(os.path.join(folder, f".{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _local_token(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return None


def create_exclusive(url: str, data: bytes, durable: bool = False) -> str | None:
    """Create a file only if nothing is there yet, whole or not at all; its token, or None if it existed."""
    fs, path = storage.filesystem(url)
    if not isinstance(fs, LocalFileSystem):
        bucket, key, _ = fs.split_path(path)
        put = _conditional(
            "create", url, lambda: fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        )
        return None if put is None else str(put["ETag"])
    try:
        storage.write_local(url, path, data, durable, os.link)  # a link is atomic and refuses an existing name
    except FileExistsError:
        return None
    return hashlib.sha256(data).hexdigest()


def read_versioned(url: str) -> Versioned | None:
    """A file's content and version token, or None if there is none."""
    fs, path = storage.filesystem(url)
    if isinstance(fs, LocalFileSystem):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return Versioned(data, hashlib.sha256(data).hexdigest())
    bucket, key, _ = fs.split_path(path)

    async def get() -> Versioned:
        response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        try:
            return Versioned(await response["Body"].read(), str(response["ETag"]))
        finally:
            response["Body"].close()

    try:
        return storage.retrying("read", url, lambda: sync(fs.loop, get))
    except FileNotFoundError:
        return None


def replace_if(url: str, data: bytes, token: str | None, durable: bool = False) -> str | None:
    """Write ``data`` only if the file still has version ``token`` (None: only if there is no file).

    Returns the new token, or None when the file changed (or appeared) since ``token`` was read.
    """
    if token is None:
        return create_exclusive(url, data, durable)
    fs, path = storage.filesystem(url)
    if not isinstance(fs, LocalFileSystem):
        bucket, key, _ = fs.split_path(path)
        put = _conditional(
            "write", url, lambda: fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=token)
        )
        return None if put is None else str(put["ETag"])
    with _local_cas_lock(path):
        if _local_token(path) != token:
            return None
        storage.write_bytes(url, data, durable)
    return hashlib.sha256(data).hexdigest()


def remove_if(url: str, token: str) -> bool:
    """Delete a file only if it still has version ``token``; whether it was deleted."""
    fs, path = storage.filesystem(url)
    if not isinstance(fs, LocalFileSystem):
        bucket, key, _ = fs.split_path(path)
        deleted = _conditional(
            "remove", url, lambda: fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=token)
        )
        return deleted is not None
    with _local_cas_lock(path):
        if _local_token(path) != token:
            return False
        os.unlink(path)
    return True
