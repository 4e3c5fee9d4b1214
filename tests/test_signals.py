"""cxr.signals in one process: the first signal stops the command even when Python runs the handler inside
a weakref callback (where a raised exception is printed and dropped), later ones wait."""

from __future__ import annotations

import os
import signal
import time
import weakref

import pytest

from cxr.signals import Interrupted, held_back, stopping_on_signals


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


def test_a_signal_held_back_is_raised_after_the_outermost_block_and_a_later_one_only_counted():
    done = []
    with stopping_on_signals() as stop:
        with pytest.raises(Interrupted):
            with held_back() as outer:
                with held_back() as inner:  # part of the outer block: it raises nothing itself
                    os.kill(os.getpid(), signal.SIGTERM)
                    _spin(0.2)
                done.append("inner")
                _spin(0.2)
                done.append("outer")
            done.append("after")  # not reached: the signal is raised as the outer block ends
        assert inner is outer and outer == [signal.SIGTERM] and done == ["inner", "outer"]
        with held_back():  # while stopping, a second signal is counted by the command's handler, not raised
            os.kill(os.getpid(), signal.SIGINT)
            _spin(0.2)
    assert stop.received == [signal.SIGTERM, signal.SIGINT]


def test_a_signal_during_a_tracking_call_waits_for_the_call_then_the_run_closes_as_killed(tmp_path, monkeypatch):
    """Cut in the middle of a SQLite write, MLflow leaves the store locked and the run cannot be closed."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from cxr.tracking.mlflow_run import MlflowRun

    run = MlflowRun("signals", system_metrics=False)

    def interrupted_write() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        _spin(0.2)  # the handler would run here
        run.client.set_tag(run.run_id, "written", "whole")

    with stopping_on_signals() as stop:
        with pytest.raises(Interrupted):
            run.attempt("a write", interrupted_write)
        run.close("KILLED")
    got = run.client.get_run(run.run_id)
    assert stop.received == [signal.SIGINT] and not run.failed
    assert got.data.tags["written"] == "whole" and got.info.status == "KILLED"
