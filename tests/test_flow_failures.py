"""An injected failure: the S3 server stops for a moment under a running flow; the task is retried and
the flow completes."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from cxr import storage
from cxr.data.synth import SynthConfig, synthesize
from cxr.services.s3server import S3Server

pytestmark = pytest.mark.s3


def test_a_task_that_meets_a_stopped_s3_server_is_retried_and_the_flow_completes(
    prefect_api, s3_server, tmp_path, monkeypatch
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.ingest import ingest

    server = S3Server(tmp_path / "s3").start()  # its own server: stopping it disturbs no other test
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("CXR_STORAGE_RETRIES", "0")  # fail at once, so that Prefect's retry is what saves the run
    bucket = f"flaky-{uuid.uuid4().hex[:8]}"
    fs, _ = storage.filesystem(f"s3://{bucket}")
    fs.mkdir(bucket)
    synthesize(SynthConfig(out=str(tmp_path / "src"), n_images=40, size=64, seed=3))
    fs.put(str(tmp_path / "src"), f"{bucket}/src", recursive=True)
    server.stop()
    restart = threading.Timer(0.5, server.start)  # answers ~5 s later: after the first try, by the first retry (5 s)
    restart.start()
    try:
        state = ingest(source=f"s3://{bucket}/src", out=f"s3://{bucket}/ds", sizes=[32], workers=1, return_state=True)
    finally:
        restart.join()
        server.stop()
    assert state.is_completed()
    digest = state.result()

    async def runs() -> dict[str, int]:
        async with get_client() as client:
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )
            return {t.name.rsplit("-", 1)[0]: t.run_count for t in tasks}

    counts = asyncio.run(runs())
    # failed against the stopped server, then succeeded on a retry (the first, or on a loaded machine the second)
    assert 2 <= counts["plan-ingest"] <= 3, counts
    assert len(digest) == 16
