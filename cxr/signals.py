"""Signals: how every ``cxr`` command stops on SIGINT (Ctrl-C), SIGTERM or SIGHUP.

The ``cxr`` entry point (:mod:`cxr.cli.main`) runs each command inside :func:`stopping_on_signals`: the
first handled signal raises :class:`Interrupted` (a ``KeyboardInterrupt``, so no ``except Exception``
swallows it) in the main thread, where the command's ``finally`` blocks and context managers stop what it
started (worker pools, Dask clusters, torchrun, MLflow runs closed as KILLED). Later signals are only
counted while it stops, so a second Ctrl-C cannot cut that clean-up in two. Code on the way out may add a
:func:`note` (e.g. "3 of 6 parts finished are kept; a rerun reuses them") to the one line the entry point
prints, and the entry point exits with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).

Inside :func:`raised_as_interrupted` (``cxr stack up``), every handled signal raises. The few steps
that must not be cut in two (start a process, then record it) run inside :func:`held_back`: a signal
that arrives there is noted and raised when the step is done. Python runs signal handlers in the main
thread only; elsewhere these are no-ops. A signal ignored when the program started stays ignored (a
shell's background job ignores SIGINT, ``nohup`` SIGHUP).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# multiprocessing's resource tracker ignores SIGINT and SIGTERM and ends by itself when this process does
SELF_ENDING = "multiprocessing.resource_tracker"
REDELIVER_S = 0.05  # a signal whose Interrupted a finalizer dropped is sent again after this long


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


_holding: list[int] | None = None  # what the outermost held_back block in force has noted


@contextmanager
def held_back(raise_after: bool = True) -> Iterator[list[int]]:
    """Within the block, handled signals are only noted (the list it yields); after it, the first one is
    sent again to the handler around the block when ``raise_after`` (else dropped, for clean-up that must
    finish): it does what it would have done (the command's handler raises :class:`Interrupted`, or only
    counts a later signal; a default disposition ends the process). A block inside another is part of it:
    the outer one decides."""
    global _holding
    if not _in_main_thread() or _holding is not None:
        yield [] if _holding is None else _holding
        return
    noted: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        noted.append(signum)

    previous = _install(note)
    _holding = noted
    try:
        yield noted
    finally:
        _holding = None
        for s, h in previous.items():
            signal.signal(s, h)
    if noted and raise_after:
        handler = previous.get(noted[0])
        if callable(handler) or handler == signal.SIG_DFL:
            signal.raise_signal(noted[0])  # Python runs the handler before this returns
            return
        raise Interrupted(noted[0])


@dataclass
class Stop:
    """What :func:`stopping_on_signals` saw: the signals received (the first one stopped the command)."""

    received: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def signum(self) -> int | None:
        return self.received[0] if self.received else None


_current: Stop | None = None


def note(text: str) -> None:
    """Add ``text`` to the line printed when the command stops on a signal (a no-op otherwise)."""
    if _current is not None and _current.received and text not in _current.notes:
        _current.notes.append(text)


def stopping() -> bool:
    """Whether the command is stopping on a signal (e.g. to silence a library's shutdown errors)."""
    return _current is not None and bool(_current.received)


@contextmanager
def stopping_on_signals() -> Iterator[Stop]:
    """Within the block, the first handled signal raises :class:`Interrupted`; later ones are counted only."""
    global _current
    stop = Stop()
    if not _in_main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.received.append(signum)
        if len(stop.received) == 1:
            raise Interrupted(signum)

    def swallowed(unraisable: Any) -> None:
        """Python may run the handler inside a finalizer or a weakref callback, which prints the exception
        raised there and drops it: then the command never stopped, and the signal is sent again."""
        if isinstance(unraisable.exc_value, Interrupted) and stop.received:
            stop.received.clear()
            threading.Timer(REDELIVER_S, redeliver, (unraisable.exc_value.signum,)).start()
            return
        hook(unraisable)

    def redeliver(signum: int) -> None:
        if _current is stop and not stop.received:  # unless another signal has stopped the command meanwhile
            os.kill(os.getpid(), signum)

    previous, hook = _install(handler), sys.unraisablehook
    sys.unraisablehook = swallowed
    _current = stop
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sys.unraisablehook = hook
        _current = None


def stop_children(timeout: float = 5.0) -> list[str]:
    """Terminate every process this one started that is still alive (SIGTERM, then SIGKILL after
    ``timeout`` seconds); their names."""
    import psutil

    children, names = [], []
    for child in psutil.Process().children(recursive=True):
        with suppress(psutil.Error):
            command = " ".join(child.cmdline())
            if SELF_ENDING in command:
                continue
            children.append(child)
            names.append(command[:80] or child.name())
    for child in children:
        with suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        with suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=timeout)
    return names
