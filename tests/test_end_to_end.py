"""The whole chain once, as a user runs it, shared by every test here (each checks one behaviour):

``cxr stack up`` (real S3, MLflow and Prefect servers) -> ``cxr demo`` against it -> the same demo again
(nothing new) -> the demo with another batch size -> the demo after the archive grew -> a cron
deployment run by a Prefect worker -> ``cxr stack down`` (the last test: no process left).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cxr.services.process import alive
from tests.ui import BROWSER, NO_BROWSER, rendered_text

BIN = Path(sys.executable).parent
CXR = str(BIN / "cxr")
DEMO = ["--n-images", "150", "--size", "64", "--shard-size", "32", "--epochs", "1", "--workers", "1"]

# The stack's Prefect API, read in a process of its own (this one may hold Prefect's test harness).
PREFECT = """
import asyncio, json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import FlowRunSort

async def main(what, *args):
    async with get_client() as client:
        if what == "flow-runs":  # the retrain flow's runs, oldest first
            flows = FlowFilter(name=FlowFilterName(any_=["retrain"]))
            runs = await client.read_flow_runs(flow_filter=flows, sort=FlowRunSort.START_TIME_ASC)
            return [{"id": str(r.id), "state": r.state.name} for r in runs]
        if what == "first-run":  # the retrain flow's oldest run, with the keys of its artifacts
            flows = FlowFilter(name=FlowFilterName(any_=["retrain"]))
            [run, *_] = await client.read_flow_runs(flow_filter=flows, sort=FlowRunSort.START_TIME_ASC)
            artifacts = await client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            return {"id": str(run.id), "name": run.name, "artifacts": sorted(a.key for a in artifacts)}
        if what == "task-states":
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[args[0]])))
            return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}
        deployment = await client.read_deployment_by_name(args[0])
        if what == "schedule":
            return [s.schedule.cron for s in deployment.schedules]
        if what == "start":
            return str((await client.create_flow_run_from_deployment(deployment.id, parameters={"epochs": 1})).id)
        run = await client.read_flow_run(args[1])
        return {"state": run.state.type.value, "name": run.state.name}

print(json.dumps(asyncio.run(main(*sys.argv[1:]))))
"""


@dataclass
class Chain:
    root: Path
    env: dict[str, str]
    up: subprocess.CompletedProcess
    pids: list[int]
    demos: dict[str, subprocess.CompletedProcess]

    @property
    def stack_dir(self) -> Path:
        return self.root / "stack"

    @property
    def workdir(self) -> Path:
        return self.root / "demo"

    def cxr(self, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([CXR, *args], capture_output=True, text=True, env=self.env, timeout=timeout)

    def prefect(self, *args: str) -> object:
        result = subprocess.run(
            [sys.executable, "-c", PREFECT, *args], capture_output=True, text=True, env=self.env, timeout=120
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout)


def _stack_env(up_stdout: str, env: dict[str, str]) -> dict[str, str]:
    """What `eval "$(cxr stack env)"` does to a shell."""
    for line in up_stdout.splitlines():
        if line.startswith(". "):
            for kv in Path(line[2:]).read_text().splitlines():
                key, _, value = kv.removeprefix("export ").partition("=")
                env[key] = value
        elif line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
    return env


def _grow(source: Path) -> None:
    """One new patient with two images, added to the archive."""
    images = source / "images_001" / "images"
    table = source / "Data_Entry_2017_v2020.csv"
    rows = table.read_text().splitlines()
    template = next(r for r in rows[1:] if ",No Finding," in r)
    for k in range(2):
        image_id = f"09999999_{k:03d}.png"
        shutil.copy(images / template.split(",")[0], images / image_id)
        rows.append(",".join([image_id, "No Finding", str(k), "9999999", *template.split(",")[4:]]))
    table.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    root = tmp_path_factory.mktemp("chain")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_TRACKING", "PREFECT_API"))}
    up = subprocess.run(
        [CXR, "stack", "up", "--dir", str(root / "stack")], capture_output=True, text=True, env=env, timeout=300
    )
    assert up.returncode == 0, up.stderr[-3000:]
    pids = [s["pid"] for s in json.loads((root / "stack" / "stack.json").read_text())["services"].values()]
    chain = Chain(root, _stack_env(up.stdout, env), up, pids, {})
    try:
        demo = ["demo", "--workdir", str(chain.workdir), *DEMO]
        chain.demos["first"] = chain.cxr(*demo)
        chain.demos["again"] = chain.cxr(*demo)
        chain.demos["batch16"] = chain.cxr(*demo, "--batch-size", "16")
        _grow(chain.workdir / "source")
        chain.demos["grown"] = chain.cxr(*demo)
        yield chain
    finally:
        subprocess.run([CXR, "stack", "down", "--dir", str(root / "stack")], capture_output=True, env=env, timeout=120)


def demo_ok(chain: Chain, name: str) -> str:
    result = chain.demos[name]
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def line_value(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(label))[len(label) :].strip()


def test_the_demo_ingests_trains_evaluates_and_registers(chain):
    out, err = demo_ok(chain, "first"), chain.demos["first"].stderr
    digest = re.search(r"dataset (\w+) \(new, 150 images decoded\)", out).group(1)
    assert "retrain flow (Prefect)" in err and (chain.workdir / "datasets" / digest / "dataset.json").exists()
    assert "positives per split" in out and "test split (n = " in out and "CAM T(IoBB)>0.1 / random" in out
    assert "model cxr-demo version 1: promoted to champion (no champion yet)" in out
    assert "lineage models:/cxr-demo@champion" in out
    assert (Path(line_value(out, "run folder:")) / "model.pt").exists()


def test_the_demo_tracks_to_the_stack_and_names_its_uis(chain):
    out = demo_ok(chain, "first")
    assert f"MLflow UI:  {chain.env['MLFLOW_TRACKING_URI']}" in out
    assert f"Prefect UI: {chain.env['PREFECT_API_URL'].removesuffix('/api')}" in out


def test_a_second_demo_reuses_every_finished_step(chain):
    first, again = demo_ok(chain, "first"), demo_ok(chain, "again")
    digest = re.search(r"dataset (\w+) \(new", first).group(1)
    assert "reusing the synthetic archive" in chain.demos["again"].stderr
    assert f"dataset {digest} (unchanged, 0 images decoded)" in again
    assert line_value(again, "run folder:") == line_value(first, "run folder:")
    assert "model cxr-demo version 1:" in again  # nothing retrained or re-registered
    second_run = chain.prefect("flow-runs")[1]
    states = chain.prefect("task-states", second_run["id"])
    assert states["train"] == "Cached" and states["register-and-gate"] == "Cached", states


def test_another_batch_size_trains_into_its_own_run_folder(chain):
    first, other = demo_ok(chain, "first"), demo_ok(chain, "batch16")
    first_dir, other_dir = Path(line_value(first, "run folder:")), Path(line_value(other, "run folder:"))
    assert other_dir != first_dir and (other_dir / "model.pt").exists()
    assert "model cxr-demo version 2:" in other
    for folder in (first_dir, other_dir):  # one run each: nothing appended to an earlier run's metrics
        params = [line for line in (folder / "metrics.jsonl").read_text().splitlines() if '"params"' in line]
        assert len(params) == 1
    batch = [
        json.loads(line)["params"]["batch_size"] for line in (other_dir / "metrics.jsonl").read_text().splitlines()[:1]
    ]
    assert batch == [16]


def test_a_grown_archive_decodes_only_the_parts_its_new_images_fall_in(chain):
    first, grown = demo_ok(chain, "first"), demo_ok(chain, "grown")
    old = re.search(r"dataset (\w+) \(new", first).group(1)
    new, decoded = re.search(r"dataset (\w+) \(new, (\d+) images decoded\)", grown).groups()
    assert new != old and 2 <= int(decoded) < 152  # the new images' part(s), not the archive
    assert "model cxr-demo version 3:" in grown
    lineage = chain.cxr("lineage", "models:/cxr-demo/3", timeout=120)
    assert lineage.returncode == 0, lineage.stderr
    assert f"dataset   {new}" in lineage.stdout and str(chain.workdir / "source") in lineage.stdout


def test_lineage_names_the_prefect_flow_run_that_trained_the_champion(chain):
    demo_ok(chain, "first")
    first_run = chain.prefect("flow-runs")[0]["id"]
    lineage = chain.cxr("lineage", "models:/cxr-demo/1", timeout=120)
    assert lineage.returncode == 0, lineage.stderr
    assert f"Prefect flow run {first_run}" in lineage.stdout and "dataset   " in lineage.stdout


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.skipif(BROWSER is None, reason=NO_BROWSER)
def test_the_prefect_ui_the_demo_names_shows_its_flow_run_and_artifacts_in_a_browser(chain):
    ui = line_value(demo_ok(chain, "first"), "Prefect UI:")  # the address the demo tells its user to open
    run = chain.prefect("first-run")
    artifacts = run["artifacts"]
    assert {"ingest-summary", "label-stats", "manifest", "retrain-summary", "model-card"} <= set(artifacts)
    settings = _get_json(f"{ui}/ui-settings")  # which UI (v1 or v2) a first visit gets, and where it lives
    base = settings[f"{settings['default_ui']}_base_url"].rstrip("/")
    text = rendered_text(f"{ui}{base}/runs/flow-run/{run['id']}?tab=Artifacts", [run["name"], *artifacts])
    assert "Can't connect to Server API" not in text, text[-1000:]
    assert run["name"] in text and all(key in text for key in artifacts), text[-3000:]


@pytest.mark.skipif(BROWSER is None, reason=NO_BROWSER)
def test_the_mlflow_ui_the_demo_names_shows_its_training_run_and_artifacts_in_a_browser(chain):
    out = demo_ok(chain, "first")
    ui, run_id = line_value(out, "MLflow UI:"), re.search(r"MLflow run (\w+)", out).group(1)
    run = _get_json(f"{ui}/api/2.0/mlflow/runs/get?{urllib.parse.urlencode({'run_id': run_id})}")["run"]["info"]
    listed = _get_json(f"{ui}/api/2.0/mlflow/artifacts/list?{urllib.parse.urlencode({'run_id': run_id})}")
    artifacts = [Path(f["path"]).name for f in listed["files"]]
    assert "gate.json" in artifacts
    page = f"{ui}/#/experiments/{run['experiment_id']}/runs/{run_id}/artifacts"
    text = rendered_text(page, [run["run_name"], *artifacts])
    assert run["run_name"] in text and all(name in text for name in artifacts), text[-3000:]


def test_the_demo_logs_its_model_card_which_the_mlflow_server_serves_as_html(chain):
    out = demo_ok(chain, "first")
    ui, run_id = line_value(out, "MLflow UI:"), re.search(r"MLflow run (\w+)", out).group(1)
    page = Path(line_value(out, "model card:"))  # the page in the run folder, as the demo names it
    query = urllib.parse.urlencode({"run_uuid": run_id, "path": "model_card/model_card.html"})
    with urllib.request.urlopen(f"{ui}/get-artifact?{query}", timeout=30) as response:  # what the UI's viewer loads
        assert response.headers.get_content_type() == "text/html"
        served = response.read().decode()
    assert served == page.read_text()
    assert all(f'<tr data-finding="{f}">' in served for f in ("Atelectasis", "Hernia")) and "By view position" in served
    listed = _get_json(f"{ui}/api/2.0/mlflow/artifacts/list?{urllib.parse.urlencode({'run_id': run_id})}")
    assert "model_card" in [f["path"] for f in listed["files"] if f["is_dir"]]


def test_the_stack_is_healthy_and_keeps_its_credentials_out_of_the_output(chain):
    status = chain.cxr("stack", "status", "--dir", str(chain.stack_dir), "--json", timeout=60)
    assert json.loads(status.stdout)["running"] is True
    credentials = chain.stack_dir / "credentials.env"
    assert oct(credentials.stat().st_mode & 0o777) == "0o600"
    secret = next(ln.split("=", 1)[1] for ln in credentials.read_text().splitlines() if "SECRET" in ln)
    outputs = [chain.up.stdout, chain.up.stderr, *(d.stdout + d.stderr for d in chain.demos.values())]
    assert not any(secret in text for text in outputs)


def test_a_cron_deployment_runs_through_the_api_on_a_process_worker_from_the_champion(chain):
    where = ["--source", str(chain.workdir / "source"), "--workdir", str(chain.root / "scheduled")]
    what = ["--model", "small", "--epochs", "1", "--size", "32", "--registered-model", "deploy-test", "--workers", "1"]
    start = ["--init-from", "models:/cxr-demo@champion"]  # scheduled runs go on from the champion
    deployment = ["--cron", "0 3 * * *", "--name", "deploy-test", "--pool", "test-pool"]
    made = chain.cxr("deploy", *where, *what, *start, *deployment, timeout=180)
    assert made.returncode == 0, made.stderr[-3000:]
    assert chain.prefect("schedule", "retrain/deploy-test") == ["0 3 * * *"]
    run_id = chain.prefect("start", "retrain/deploy-test")
    worker = [str(BIN / "prefect"), "worker", "start", "--pool", "test-pool", "--run-once"]
    ran = subprocess.run(worker, capture_output=True, text=True, env=chain.env, timeout=600)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert chain.prefect("state", "retrain/deploy-test", run_id) == {"state": "COMPLETED", "name": "Completed"}
    [folder] = [path.parent for path in (chain.root / "scheduled" / "runs").glob("*/*/model.pt")]
    from mlflow import MlflowClient

    tracked = json.loads((folder / "result.json").read_text())["tracked"]
    tags = MlflowClient(chain.env["MLFLOW_TRACKING_URI"]).get_run(tracked["run_id"]).data.tags
    assert tags["cxr.parent_model"] == "models:/cxr-demo@champion"


def test_stack_down_stops_every_process(chain):  # last: the chain ends here
    down = chain.cxr("stack", "down", "--dir", str(chain.stack_dir), timeout=120)
    assert down.returncode == 0 and "stopped: prefect, mlflow, s3" in down.stderr
    assert not any(alive(pid) for pid in chain.pids)
    after = chain.cxr("stack", "status", "--dir", str(chain.stack_dir), timeout=60)
    assert after.returncode == 1 and "not running" in after.stdout
