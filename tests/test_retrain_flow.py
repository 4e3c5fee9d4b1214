"""The retrain flow end to end under Prefect's real (temporary) API: first run, a rerun with nothing
new, and a run after the archive grew."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cxr.synth import SynthConfig, synthesize


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("retrain") / "src"
    synthesize(SynthConfig(out=str(src), n_images=160, size=64, seed=6))
    return src


def _task_states(flow_run_id) -> dict[str, str]:  # noqa: ANN001
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read() -> dict[str, str]:
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}

    return asyncio.run(read())


def test_retrain_runs_then_skips_finished_work_then_ingests_only_new_images(prefect_api, archive, tmp_path):
    from mlflow import MlflowClient

    from cxr.lineage import lineage
    from flows.retrain import retrain

    settings = {"source": str(archive), "workdir": str(tmp_path / "work"), "sizes": [32], "epochs": 1,
                "registered_model": "retrain-test", "workers": 1}  # fmt: skip
    first_state = retrain(**settings, return_state=True)
    first = first_state.result()
    assert first["dataset_created"] and first["model_version"] == "1" and first["promoted"]
    assert first["images_decoded"] == 160
    tags = MlflowClient().get_run(first["run_id"]).data.tags
    assert tags["cxr.prefect_flow_run_id"] == str(first_state.state_details.flow_run_id)

    second_state = retrain(**settings, return_state=True)
    second = second_state.result()
    assert not second["dataset_created"] and second["dataset_digest"] == first["dataset_digest"]
    assert second["images_decoded"] == 0
    assert second["run_id"] == first["run_id"] and second["model_version"] == "1"  # nothing retrained or re-registered
    states = _task_states(second_state.state_details.flow_run_id)
    assert states["train"] == "Cached" and states["register-and-gate"] == "Cached", states

    # the archive grows by one patient with two images
    images = archive / "images_001" / "images"
    table = archive / "Data_Entry_2017_v2020.csv"
    rows = table.read_text().splitlines()
    template = next(r for r in rows[1:] if ",No Finding," in r)
    for k in range(2):
        image_id = f"09999999_{k:03d}.png"
        shutil.copy(images / template.split(",")[0], images / image_id)
        rows.append(",".join([image_id, "No Finding", str(k), "9999999", *template.split(",")[4:]]))
    table.write_text("\n".join(rows) + "\n")
    third = retrain(**settings)
    assert third["dataset_created"] and third["dataset_digest"] != first["dataset_digest"]
    assert 2 <= third["images_decoded"] < 160 / 2  # the new images' part(s), not the archive
    assert third["run_id"] != first["run_id"] and third["model_version"] == "2"
    chain = lineage("models:/retrain-test/2")
    assert chain["dataset"]["digest"] == third["dataset_digest"] and chain["source"]["root"] == str(archive)
