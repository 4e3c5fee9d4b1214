"""Ingest as real processes: a SIGKILL in the middle, then a rerun; a Dask cluster of separate processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxr.data.ingest import ingest
from cxr.data.plan import IngestOptions, plan_ingest
from cxr.data.synth import SynthConfig, synthesize
from cxr.services.process import free_port

BIN = Path(sys.executable).parent


def cxr(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "cxr"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("killsrc") / "nih"
    synthesize(SynthConfig(out=str(out), n_images=600, size=384, seed=4, workers=2))
    return out


def test_kill_9_then_rerun_gives_the_clean_digest_and_latest_never_names_a_partial_version(
    source, tmp_path, reliability_record
):
    clean = ingest(str(source), str(tmp_path / "clean"), IngestOptions(sizes=(96,), part_images=10)).digest
    out = tmp_path / "killed"
    ingest_args = ["ingest", "--source", str(source), "--out", str(out), "--size", "96", "--part-images", "10"]
    proc = cxr(*ingest_args, "--workers", "1", start_new_session=True)
    parts = out / ".work" / "parts"
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        done = len(list(parts.glob("*/records.parquet"))) if parts.exists() else 0
        if done >= 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"ingest finished before it could be killed: {proc.communicate()}"
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its Dask workers, all at once
    proc.wait()
    assert done >= 5 and not (out / "LATEST").exists()
    assert not (out / "LATEST").exists()
    assert not list(out.glob("*/dataset.json"))

    rerun = cxr(*ingest_args, "--workers", "1", "--json")
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert json.loads(stdout)["digest"] == clean == (out / "LATEST").read_text().strip()
    assert len(list(parts.iterdir())) == len(list(parts.glob("*/records.parquet")))  # only finished parts are kept
    reliability_record.record(
        "ingest",
        "kill -9 of a running ingest",
        "LATEST never named a partial version; the rerun gave the clean digest, reusing finished parts",
    )


def _wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


@pytest.fixture
def dask_cluster(tmp_path) -> str:
    """``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = [open(tmp_path / f"{n}.log", "w") for n in ("scheduler", "worker1", "worker2")]  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [
                str(BIN / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                "127.0.0.1:0",
            ],
            stdout=logs[0],
            stderr=subprocess.STDOUT,
        )
    ]
    try:
        _wait_for_port(port)
        for log in logs[1:]:
            procs.append(
                subprocess.Popen(
                    [
                        str(BIN / "dask"),
                        "worker",
                        address,
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        "1",
                        "--dashboard-address",
                        "127.0.0.1:0",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        # workers first, while the scheduler can still acknowledge their goodbye; then the scheduler
        for group in (procs[1:], procs[:1]):
            for p in group:
                p.terminate()
            for p in group:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        for log in logs:
            log.close()


def test_ingest_runs_on_a_dask_cluster_given_by_address(source, dask_cluster, tmp_path):
    result = cxr(
        "ingest",
        "--source",
        str(source),
        "--out",
        str(tmp_path / "out"),
        "--size",
        "64",
        "--part-images",
        "50",
        "--dask-address",
        dask_cluster,
        "--json",
    )
    stdout, stderr = result.communicate(timeout=300)
    assert result.returncode == 0, stderr
    assert f"Dask cluster {dask_cluster}: 2 workers" in stderr
    local = ingest(str(source), str(tmp_path / "local"), IngestOptions(sizes=(64,), part_images=50)).digest
    assert json.loads(stdout)["digest"] == local

    from distributed import Client

    with Client(dask_cluster) as client:
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
        parts = client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.task_prefixes["process_part"].state_counts["memory"]
        )
    planned = len(plan_ingest(str(source), str(tmp_path / "other"), IngestOptions(sizes=(64,), part_images=50)).parts)
    assert parts == planned > 1  # every part ran on this cluster (the local comparison ran in-process)
    assert len(executed) == 2 and all(n > 0 for n in executed.values())  # on both workers
