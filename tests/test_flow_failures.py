"""Injected failures under running flows: the S3 server stops for a moment, a training process is killed.
Each time the task is retried and the flow completes."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from cxr import storage
from cxr.data.synth import SynthConfig, synthesize
from cxr.learn import checkpoint
from cxr.services.s3server import S3Server


def task_run_counts(flow_run_id: object) -> dict[str, int]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def runs() -> dict[str, int]:
        async with get_client() as client:
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return {t.name.rsplit("-", 1)[0]: t.run_count for t in tasks}

    return asyncio.run(runs())


def _restart_after_the_first_failure(server: S3Server, done: threading.Event) -> None:
    """Start ``server`` again once a plan-ingest task run waits for its retry."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterState, TaskRunFilterStateName

    waiting = TaskRunFilter(state=TaskRunFilterState(name=TaskRunFilterStateName(any_=["AwaitingRetry"])))

    async def failed_once() -> bool:
        async with get_client() as client:
            runs = await client.read_task_runs(task_run_filter=waiting)
            return any(r.name.startswith("plan-ingest") for r in runs)

    while not done.is_set():
        if asyncio.run(failed_once()):
            server.start()
            return
        time.sleep(0.2)


@pytest.mark.s3
def test_a_task_that_meets_a_stopped_s3_server_is_retried_and_the_flow_completes(
    prefect_api, s3_server, tmp_path, monkeypatch, reliability_record
):
    from flows.ingest import ingest
    from tasks.ingest import plan_ingest_task

    server = S3Server(tmp_path / "s3").start()  # its own server: stopping it disturbs no other test
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("CXR_STORAGE_RETRIES", "0")  # fail at once, so that Prefect's retry is what saves the run
    # the server takes ~5 s to answer again: the retry waits longer than that, so it finds the server up
    monkeypatch.setattr(plan_ingest_task, "retry_delay_seconds", [12])
    bucket = f"flaky-{uuid.uuid4().hex[:8]}"
    fs, _ = storage.filesystem(f"s3://{bucket}")
    fs.mkdir(bucket)
    synthesize(SynthConfig(out=str(tmp_path / "src"), n_images=40, size=64, seed=3))
    fs.put(str(tmp_path / "src"), f"{bucket}/src", recursive=True)
    server.stop()
    done = threading.Event()
    restart = threading.Thread(target=_restart_after_the_first_failure, args=(server, done))
    restart.start()
    try:
        state = ingest(source=f"s3://{bucket}/src", out=f"s3://{bucket}/ds", sizes=[32], workers=1, return_state=True)
    finally:
        done.set()
        restart.join()
        server.stop()
    assert state.is_completed()
    digest = state.result()
    counts = task_run_counts(state.state_details.flow_run_id)
    assert counts["plan-ingest"] == 2, counts  # failed against the stopped server, then succeeded on its retry
    assert len(digest) == 16
    reliability_record.record(
        "orchestration",
        "the S3 server stopped under a running flow",
        "the task was retried when it came back; the flow completed",
    )


def _kill_training_once_it_checkpointed(runs: Path, done: threading.Event, killed: list[int]) -> None:
    """Wait for a checkpoint after the first epoch in ``runs``, then SIGKILL the training worker."""
    import psutil

    while not done.is_set():
        for path in runs.glob("*/*/checkpoint.pt"):
            try:
                epoch = checkpoint.load(str(path))["epoch"]
            except Exception:  # noqa: BLE001 - replaced atomically; an old handle may read a vanished file
                continue
            if epoch < 1:
                continue
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmdline = " ".join(proc.info["cmdline"] or [])
                if "cxr.learn.train" in cmdline and "torch.distributed.run" not in cmdline and str(runs) in cmdline:
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
            if killed:
                return
        time.sleep(0.05)


def test_a_killed_training_is_retried_resumes_from_its_checkpoint_in_one_mlflow_run(
    prefect_api, tmp_path, monkeypatch, reliability_record
):
    from mlflow import MlflowClient

    from flows.retrain import retrain
    from tasks.train import train_task

    monkeypatch.setattr(train_task, "retry_delay_seconds", [1])  # the policy's 5 s wait proves nothing more here

    synthesize(SynthConfig(out=str(tmp_path / "src"), n_images=400, size=64, seed=5))
    done, killed = threading.Event(), []
    watcher = threading.Thread(
        target=_kill_training_once_it_checkpointed, args=(tmp_path / "work" / "runs", done, killed)
    )
    watcher.start()
    try:
        state = retrain(
            source=str(tmp_path / "src"),
            workdir=str(tmp_path / "work"),
            sizes=[64],
            epochs=4,
            registered_model="resumed",
            experiment="killed-and-resumed",
            workers=1,
            return_state=True,
        )
    finally:
        done.set()
        watcher.join()
    assert killed and state.is_completed()
    summary = state.result()
    assert task_run_counts(state.state_details.flow_run_id)["train"] == 2  # failed once, retried
    trained = summary.trained
    assert trained.resumed_at_step > 0 and trained.history[0].epoch >= 1  # went on from the checkpoint
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("killed-and-resumed").experiment_id])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(trained.tracked.run_id, "FINISHED")]
    steps = [m.step for m in client.get_metric_history(trained.tracked.run_id, "val_mean_auroc")]
    assert steps == sorted(steps) and len(steps) == 4  # one value per epoch, before and after the kill
    reliability_record.record(
        "orchestration",
        "the training process killed (SIGKILL) inside the retrain flow",
        "the task was retried, resumed from its checkpoint in the same MLflow run; the flow completed",
    )


def small_retrain(tmp_path: Path, name: str) -> dict[str, object]:
    """The retrain flow's parameters for a one-epoch run at 32 px on ``tmp_path/src``."""
    return {
        "source": str(tmp_path / "src"),
        "workdir": str(tmp_path / "work"),
        "sizes": [32],
        "epochs": 1,
        "workers": 1,
        "registered_model": name,
        "experiment": name,
    }


@pytest.fixture
def mlflow_behind_a_proxy(tmp_path, monkeypatch):
    """A real MLflow server (local artifacts) reached through a fault proxy: MLFLOW_TRACKING_URI is the proxy."""
    from cxr.services.mlflowserver import MlflowServer
    from tests.faultproxy import FaultProxy

    server = MlflowServer(tmp_path / "mlflow", str(tmp_path / "mlflow" / "artifacts")).start()
    proxy = FaultProxy(server.url).start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
    try:
        yield proxy
    finally:
        proxy.stop()
        server.stop()


def test_mlflow_failing_at_the_end_of_training_is_not_cached_and_the_rerun_registers_one_version(
    prefect_api, tmp_path, monkeypatch, mlflow_behind_a_proxy, reliability_record
):
    from mlflow import MlflowClient

    from cxr.tracking.gate import register_and_gate
    from flows.retrain import retrain
    from tasks.train import train_task

    proxy = mlflow_behind_a_proxy
    monkeypatch.setattr(train_task, "retries", 0)  # the flow fails at once; retries are shown above
    synthesize(SynthConfig(out=str(tmp_path / "src"), n_images=120, size=64, seed=6))
    settings = small_retrain(tmp_path, "outage")
    proxy.fail("/api/2.0/mlflow/logged-models", status=503, times=None)  # models cannot be logged
    failed = retrain(**settings, return_state=True)
    assert failed.is_failed() and "was not logged to MLflow" in str(failed.result(raise_on_failure=False))
    assert proxy.failed  # the outage was met
    proxy.heal()
    state = retrain(**settings, return_state=True)
    assert state.is_completed(), state
    summary = state.result()
    assert task_run_counts(state.state_details.flow_run_id)["train"] == 1  # trained again: nothing was cached
    client = MlflowClient(proxy.url)
    versions = client.search_model_versions("name = 'outage'")
    assert [v.version for v in versions] == [summary.registration.version] == ["1"]
    again = register_and_gate(
        summary.trained.tracked.run_id, summary.trained.tracked.model_uri, "outage", summary.ingest.path
    )
    assert again.version == "1" and len(client.search_model_versions("name = 'outage'")) == 1
    reliability_record.record(
        "training",
        "MLflow refuses to log the model at the end of training (HTTP 503)",
        "the train task fails instead of caching a result without a model; the rerun trains, logs and registers "
        "exactly one version; a retried registration reuses it",
        lost="the first try's training time (its checkpoint stays in its run folder)",
    )


def test_two_retrain_flows_at_once_each_evaluate_their_own_model(prefect_api, tmp_path, reliability_record):
    from flows.retrain import retrain

    synthesize(SynthConfig(out=str(tmp_path / "src"), n_images=120, size=64, seed=7))
    settings = small_retrain(tmp_path, "twins")
    states: list = [None, None]

    def run(k: int) -> None:
        states[k] = retrain(**settings, return_state=True)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summaries = [s.result() for s in states]
    for summary in summaries:
        evaluation = summary.evaluation
        assert evaluation.model == summary.trained.model_url  # each flow evaluated the model it trained
        bundle = checkpoint.load(summary.trained.model_url)
        assert tuple(bundle["rank_fingerprints"]) == summary.trained.rank_fingerprints
    folders = {s.trained.output_dir for s in summaries}
    assert len(folders) == 2 or summaries[0].trained == summaries[1].trained  # own folders, or one cached result
    reliability_record.record(
        "orchestration",
        "two retrain flows with the same settings at once",
        "each trains in its own run folder and evaluates its own model",
    )
