"""Signals while ``cxr stack up`` starts servers.

Inside :func:`raised_as_interrupted`, SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (a
``KeyboardInterrupt``, so no ``except Exception`` swallows it), which lets the caller stop what it already
started. The few steps that must not be cut in two (start a process, then record it) run inside
:func:`held_back`: a signal that arrives there is noted and raised when the step is done. Python runs
signal handlers in the main thread only; elsewhere both are no-ops. A signal ignored when the program
started stays ignored.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A handled signal arrived; ``stopped`` names what was stopped because of it."""

    def __init__(self, signum: int, stopped: tuple[str, ...] = ()) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.stopped = stopped

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process ended by that signal


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _install(handler: Callable[[int, FrameType | None], None]) -> dict[int, Any]:
    """Set ``handler`` for each handled signal that is not ignored (``nohup`` ignores SIGHUP, a shell's
    background job SIGINT: they stay ignored); the handlers it replaced."""
    previous = {}
    for s in HANDLED:
        if signal.getsignal(s) is not signal.SIG_IGN:
            previous[s] = signal.signal(s, handler)
    return previous


@contextmanager
def raised_as_interrupted() -> Iterator[None]:
    """Within the block, each handled signal raises :class:`Interrupted`."""
    if not _in_main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    previous = _install(handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def held_back(raise_after: bool = True) -> Iterator[list[int]]:
    """Within the block, handled signals are only noted (the list it yields); after it, the first one is
    raised as :class:`Interrupted` when ``raise_after``, else dropped (for clean-up that must finish)."""
    noted: list[int] = []
    if not _in_main_thread():
        yield noted
        return

    def note(signum: int, frame: FrameType | None) -> None:
        noted.append(signum)

    previous = _install(note)
    try:
        yield noted
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if noted and raise_after:
        raise Interrupted(noted[0])
