"""cxr.signals in one process: the first signal stops the command even when Python runs the handler inside
a weakref callback (where a raised exception is printed and dropped), later ones wait."""

from __future__ import annotations

import os
import signal
import time
import weakref

import pytest

from cxr.signals import Interrupted, stopping_on_signals


@pytest.fixture(autouse=True)
def sigint_handled():
    """SIGINT handled as at a terminal: a suite run as a background job inherits it ignored, and
    stopping_on_signals leaves an ignored signal ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


class _Thing:
    pass


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_signal_that_lands_in_a_weakref_callback_still_stops_the_command():
    def on_collect(_ref: weakref.ref) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        _spin(0.2)  # the handler runs here, inside the callback

    with stopping_on_signals() as stop, pytest.raises(Interrupted):
        thing = _Thing()
        ref = weakref.ref(thing, on_collect)
        del thing  # the callback runs now; an exception raised in it would be ignored
        _spin(2.0)  # the redelivered signal lands here
    assert ref() is None and stop.received == [signal.SIGINT]


def test_a_second_signal_while_stopping_is_counted_not_raised():
    with stopping_on_signals() as stop:
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGINT)
            _spin(2.0)
        os.kill(os.getpid(), signal.SIGTERM)  # clean-up goes on
        _spin(0.2)
    assert stop.received == [signal.SIGINT, signal.SIGTERM]
