"""One writer at a time on a dataset root: ``<root>/.lock``.

Publishing a version (its tables and ``dataset.json``) and ``cxr gc`` hold it; decoding parts does not.

- Local folder: an ``flock`` on ``<root>/.lock``. The kernel releases it when its holder exits, however
  it exits (kill -9 included), so a lock is never stale and needs no expiry.
- S3: a lease object ``<root>/.lock`` (holder, purpose, expiry), created with ``If-None-Match: *``. Its
  holder renews it every :data:`LEASE_S` / 3 with ``If-Match`` on its ETag; a lease not renewed for
  :data:`LEASE_S` (its holder died) is taken over with ``If-Match`` on the stale ETag, so of two
  waiters exactly one wins. A holder whose lease was taken over (it stalled for longer than the lease)
  learns it at its next :meth:`Held.check` and stops before writing; ``LATEST`` itself moves by
  compare-and-swap as well, so even then it never moves backwards.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from cxr import storage, storage_cas

LOCK_NAME = ".lock"
LEASE_S = 60.0  # an S3 lease not renewed for this long is stale
WAIT_S = 600.0  # how long to wait for another holder before giving up


class StoreBusyError(storage.StorageError):
    """Another process held the dataset root's lock for longer than we were willing to wait."""


class LockLostError(storage.StorageError):
    """Our S3 lease expired and another process took it over: stop before writing anything more."""


class Held:
    """A held lock; :meth:`check` raises :class:`LockLostError` once it is no longer ours."""

    def __init__(self) -> None:
        self.lost: str | None = None

    def check(self) -> None:
        if self.lost:
            raise LockLostError(self.lost)


def _holder(purpose: str, expires: float) -> bytes:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "purpose": purpose, "expires": expires}
    return (json.dumps({**record, "id": uuid.uuid4().hex}) + "\n").encode()


@contextmanager
def store_lock(root: str, purpose: str, wait_s: float = WAIT_S) -> Iterator[Held]:
    """Hold ``root``'s lock for the block (see the module docstring); ``purpose`` is shown to waiters."""
    if storage.is_remote(root):
        with _lease(storage.join(root, LOCK_NAME), purpose, wait_s) as held:
            yield held
        return
    storage.makedirs(root)
    _, path = storage.filesystem(storage.join(root, LOCK_NAME))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreBusyError(f"{path} is held by {_read_holder(path)}; waited {wait_s:.0f} s") from None
                time.sleep(0.05)
        with suppress(OSError):  # who holds it, for a waiter's message only (a full disk may refuse it)
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder(purpose, 0.0), 0)
        yield Held()
    finally:
        os.close(fd)  # releases the flock


def _read_holder(url: str) -> str:
    try:
        record = json.loads(storage.read_text(url) or "{}")
    except (OSError, ValueError):
        return "another process"
    return f"pid {record.get('pid')} on {record.get('host')} ({record.get('purpose')})"


@contextmanager
def _lease(url: str, purpose: str, wait_s: float) -> Iterator[Held]:
    deadline = time.monotonic() + wait_s
    while (token := _take(url, purpose)) is None:
        if time.monotonic() > deadline:
            raise StoreBusyError(f"{url} is held by {_read_holder(url)}; waited {wait_s:.0f} s")
        time.sleep(0.5)
    held = Held()
    stop = threading.Event()
    lease = _Renewal(token)

    def renew() -> None:
        while not stop.wait(LEASE_S / 3):
            try:
                renewed = storage_cas.replace_if(url, _holder(purpose, time.time() + LEASE_S), lease.token)
            except OSError as err:  # the store is away: retry until the lease would have expired
                if time.time() - lease.renewed >= LEASE_S:
                    held.lost = f"could not renew {url} for {LEASE_S:.0f} s: {err}"
                    return
                continue
            if renewed is None:
                held.lost = f"the lease {url} was taken over by {_read_holder(url)} (this process stalled)"
                return
            lease.token, lease.renewed = renewed, time.time()

    thread = threading.Thread(target=renew, name=f"lease {url}", daemon=True)
    thread.start()
    try:
        yield held
    finally:
        stop.set()
        thread.join()
        if held.lost is None:
            with suppress(OSError):  # not removed: it expires on its own
                storage_cas.remove_if(url, lease.token)


def _take(url: str, purpose: str) -> str | None:
    """Create the lease, or take over an expired one; its token, or None while another holds it."""
    token = storage_cas.create_exclusive(url, _holder(purpose, time.time() + LEASE_S))
    if token is not None:
        return token
    current = storage_cas.read_versioned(url)
    if current is None:
        return None  # released meanwhile: the next try creates it
    try:
        expires = float(json.loads(current.data)["expires"])
    except (ValueError, KeyError, TypeError):
        expires = 0.0  # unreadable: treat as stale
    if time.time() <= expires:
        return None
    return storage_cas.replace_if(url, _holder(purpose, time.time() + LEASE_S), current.token)


class _Renewal:
    def __init__(self, token: str) -> None:
        self.token = token
        self.renewed = time.time()
