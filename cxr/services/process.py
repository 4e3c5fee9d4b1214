"""Stopping the server processes cxr starts (each in its own process group)."""

from __future__ import annotations

import os
import signal
import time


def stop_group(pid: int, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL it if anything is left after ``timeout_s``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap our own child, if it is one
        except ChildProcessError:
            pass
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
