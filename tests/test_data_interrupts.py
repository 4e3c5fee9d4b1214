"""Ctrl-C (SIGINT to the whole process group) and SIGTERM (to the command only) stop ``cxr synth`` and
``cxr ingest`` within seconds: every process they started is gone, one line on stderr, exit 128 + signum,
and what finished stays reusable (an ingest rerun reuses its finished parts and gives the clean digest)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from cxr.data.ingest import ingest
from cxr.data.plan import IngestOptions
from cxr.data.synth import SynthConfig, synthesize
from tests.terminal import as_at_a_terminal

CXR = [sys.executable, "-m", "cxr.cli"]


@dataclass
class Stopped:
    returncode: int
    stdout: str
    stderr: str
    seconds: float  # from the signal to the command's exit
    children: set[int]  # every descendant seen while it ran


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _descendants(pid: int) -> set[int]:
    try:
        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:  # it has just ended: the caller's poll() says so
        return set()


def stop_when(args: list[str], ready: Callable[[], bool], signum: int, group: bool, timeout: float = 60) -> Stopped:
    """Run ``cxr ARGS`` in a session of its own; once ``ready()``, send ``signum`` to its whole process group
    (a Ctrl-C in a terminal) or to the command only; collect its descendants all along."""
    proc = subprocess.Popen(
        [*CXR, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=as_at_a_terminal,
    )
    children: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"the command ended before it could be interrupted: {proc.communicate()}"
            assert time.monotonic() < deadline, "the command never got ready to be interrupted"
            children |= _descendants(proc.pid)
            time.sleep(0.02)
        children |= _descendants(proc.pid)
        sent = time.monotonic()
        if group:
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        out, err = proc.communicate(timeout=timeout)
        return Stopped(proc.returncode, out, err, time.monotonic() - sent, children)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def assert_stopped_cleanly(stopped: Stopped, signum: int, started_processes: bool = True) -> None:
    name = signal.Signals(signum).name
    assert stopped.returncode == 128 + signum, stopped.stderr
    assert "Traceback" not in stopped.stderr and "Error" not in stopped.stderr, stopped.stderr
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith(f"interrupted by {name}: "), last
    assert "process" not in last, last  # the entry point had to stop processes the command left behind
    assert [line for line in stopped.stderr.splitlines() if line.startswith("interrupted")] == [last]
    assert stopped.seconds < 15, f"took {stopped.seconds:.1f} s to stop"
    if started_processes:
        assert stopped.children, "no process was started: nothing was checked"
    time.sleep(0.2)
    assert [pid for pid in stopped.children if _alive(pid)] == []


def _pngs(folder: Path) -> int:
    return sum(1 for _ in folder.glob("images_*/images/*.png"))


@pytest.mark.parametrize(
    ("signum", "group"), [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["ctrl-c", "sigterm-to-the-command"]
)
def test_an_interrupted_synth_stops_its_workers_and_the_same_command_finishes_it(
    tmp_path, signum, group, reliability_record
):
    out = tmp_path / "src"
    args = ["synth", "--out", str(out), "--n-images", "600", "--size", "128", "--workers", "2"]
    stopped = stop_when(args, lambda: _pngs(out) > 0, signum, group)
    assert_stopped_cleanly(stopped, signum)
    assert "the same command finishes it" in stopped.stderr, stopped.stderr
    assert not (out / "Data_Entry_2017_v2020.csv").exists()  # no archive that reads as complete
    again = subprocess.run([*CXR, *args, "--json"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert _pngs(out) == 600
    sent = "Ctrl-C (SIGINT to the process group)" if group else "SIGTERM to the command alone"
    reliability_record.record(
        "interruptions",
        f"`cxr synth` (2 worker processes) stopped by {sent}",
        f"exit {128 + signum} with one line; no worker left; no label table, so no archive that reads as complete; "
        "the same command finishes it",
    )


def _parts_done(out: Path) -> int:
    return sum(1 for _ in (out / ".work" / "parts").glob("*/records.parquet"))


def test_an_interrupted_ingest_stops_its_dask_workers_and_the_rerun_reuses_its_parts(tmp_path, reliability_record):
    src, out = tmp_path / "src", tmp_path / "ds"
    synthesize(SynthConfig(out=str(src), n_images=200, size=64, seed=7))
    options = IngestOptions(sizes=(64,), part_images=2)  # ~100 parts: many Dask tasks, a few seconds
    clean = ingest(str(src), str(tmp_path / "clean"), options).digest
    args = ["ingest", "--source", str(src), "--out", str(out), "--size", "64", "--part-images", "2", "--workers", "2"]

    stopped = stop_when(args, lambda: _parts_done(out) > 0, signal.SIGINT, group=True)
    assert_stopped_cleanly(stopped, signal.SIGINT)
    assert "parts finished are kept; a rerun reuses them" in stopped.stderr, stopped.stderr
    assert not (out / "LATEST").exists()

    rerun = subprocess.run([*CXR, *args], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    kept = int(stopped.stderr.strip().splitlines()[-1].split(": ", 1)[1].split(" of ")[0])
    assert kept > 0 and f"{kept} of " in rerun.stderr and " parts reused, decoding " in rerun.stderr, rerun.stderr
    assert rerun.stdout.strip() == clean == (out / "LATEST").read_text().strip()
    reliability_record.record(
        "interruptions",
        "`cxr ingest` (a Dask LocalCluster of 2 workers) stopped by Ctrl-C while decoding",
        "exit 130 with one line, no traceback, no worker left, LATEST not moved; the rerun reuses the finished "
        "parts, says how many, and gives the digest of an uninterrupted ingest",
    )


_CTRL_C_BEFORE_A_DASK_CALL_BEGINS = """
import os, signal, sys, threading, time
from cxr.data.cluster import dask_client
from cxr.signals import stopping_on_signals


def ctrl_c_once_the_main_thread_waits_in_sync():
    # runs on Dask's event loop, keeping it busy: the call the main thread waits for cannot begin
    main, deadline = threading.main_thread().ident, time.monotonic() + 60
    while time.monotonic() < deadline:
        frame, names = sys._current_frames().get(main), set()
        while frame is not None:
            names.add((frame.f_code.co_filename.endswith("distributed/utils.py"), frame.f_code.co_name))
            frame = frame.f_back
        if (True, "sync") in names and (True, "wait") in names:
            break
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)  # still busy while the main thread raises and queues its cancel callback


if __name__ == "__main__":
    with stopping_on_signals():
        try:
            with dask_client(workers=1) as client:
                client.loop.add_callback(ctrl_c_once_the_main_thread_waits_in_sync)
                client.run(os.getpid)
            print("never interrupted", file=sys.stderr)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
"""


def test_ctrl_c_before_a_dask_call_has_begun_prints_no_traceback_from_dask(tmp_path):
    """distributed 2026.8's ``sync`` logs a NameError with its traceback (through tornado) when the interrupt
    lands before the call it waits for has begun; CI saw it once in the ingest test above. Made certain here:
    Dask's event loop is kept busy until the main thread waits in ``sync``, then Ctrl-C; without cxr's filter
    the traceback appears every time."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(_CTRL_C_BEFORE_A_DASK_CALL_BEGINS)
    done = subprocess.run(  # as at a terminal: pytest-xdist's workers ignore SIGINT, and a child would inherit that
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, preexec_fn=as_at_a_terminal
    )
    assert done.returncode == 0 and done.stderr.strip() == "interrupted", done.stderr
