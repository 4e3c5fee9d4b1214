"""Local files written atomically, and the temporary files that makes: their names, which ones a killed
write left behind, and their removal.

A write goes into ``.<name>.cxr-tmp.<host>.<pid>.<random>`` beside its target, then is renamed over it
(:func:`cxr.storage.write_bytes`). The first write into a folder in a process removes the temp files killed
writes left there: older than this process, their writer no longer running (or, from another host on a
shared filesystem, older than :data:`FOREIGN_TEMP_AGE_S`).
"""

from __future__ import annotations

import logging
import os
import posixpath
import socket
import time
import uuid
from contextlib import suppress

log = logging.getLogger(__name__)

_TEMP_MARK = ".cxr-tmp."
_PROCESS_START = time.time()  # temp files older than this, of a writer that is gone, are a killed write's
FOREIGN_TEMP_AGE_S = 3600.0  # another host's temp file (a shared filesystem) counts as stale after this
_SWEPT: set[str] = set()  # folders this process has cleaned of stale temp files


def is_temp_name(url: str) -> bool:
    """Whether a file is one of this module's temporary files (never a finished file)."""
    return _TEMP_MARK in posixpath.basename(url)


def temp_path(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{_TEMP_MARK}{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:12]}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_temp(path: str) -> bool:
    """A local temp file a killed write left: older than this process and its writer no longer running."""
    name = os.path.basename(path)
    if _TEMP_MARK not in name:
        return False
    try:
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return False
    if mtime >= _PROCESS_START:
        return False
    writer = name.split(_TEMP_MARK, 1)[1].rsplit(".", 2)  # host, pid, random
    if len(writer) == 3 and writer[0] == socket.gethostname() and writer[1].isdigit():
        return not pid_alive(int(writer[1]))
    return time.time() - mtime > FOREIGN_TEMP_AGE_S


def remove_stale_temps(folder: str, recursive: bool = False) -> list[str]:
    """Remove the stale temp files (:func:`is_stale_temp`) in a local folder, and below it with ``recursive``."""
    if recursive:
        found = [os.path.join(d, name) for d, _, names in os.walk(folder) for name in names if _TEMP_MARK in name]
    else:
        try:
            found = [os.path.join(folder, name) for name in os.listdir(folder) if _TEMP_MARK in name]
        except (FileNotFoundError, NotADirectoryError):
            found = []
    removed = []
    for path in found:
        if is_stale_temp(path):
            with suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) of killed writes in %s", len(removed), folder)
    return removed


def sweep_once(folder: str) -> None:
    if folder not in _SWEPT:
        _SWEPT.add(folder)
        remove_stale_temps(folder)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp(path: str, data: bytes, durable: bool) -> str:
    """``data`` in a new temp file beside ``path`` (flushed to disk when ``durable``); its path."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    sweep_once(folder)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp
