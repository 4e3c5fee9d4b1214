"""A cron deployment of the retrain flow on a real ``prefect server``; one run through the API completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from cxr.stack import StackPaths, _start_prefect
from cxr.synth import SynthConfig, synthesize

BIN = Path(sys.executable).parent

CHECK = """
import asyncio, json, sys
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as client:
        deployment = await client.read_deployment_by_name("retrain/deploy-test")
        if sys.argv[1] == "schedule":
            print(json.dumps([s.schedule.cron for s in deployment.schedules]))
        elif sys.argv[1] == "run":
            run = await client.create_flow_run_from_deployment(deployment.id, parameters={"epochs": 1})
            print(run.id)
        else:
            run = await client.read_flow_run(sys.argv[2])
            print(json.dumps({"state": run.state.type.value, "name": run.state.name}))
asyncio.run(main())
"""


def test_a_cron_deployment_runs_through_the_api_on_a_process_worker(tmp_path):
    paths = StackPaths(tmp_path / "prefect")
    paths.logs.mkdir(parents=True)
    server = _start_prefect(paths)
    env = {**os.environ, "PREFECT_API_URL": server["url"], "PREFECT_HOME": str(paths.root / "client")}
    try:
        synthesize(SynthConfig(out=str(tmp_path / "src"), n_images=100, size=64, seed=8))
        made = subprocess.run([str(BIN / "cxr"), "deploy", "--source", str(tmp_path / "src"), "--workdir", str(tmp_path / "work"),
                               "--cron", "0 3 * * *", "--name", "deploy-test", "--pool", "test-pool", "--model", "small",
                               "--epochs", "1", "--size", "32", "--registered-model", "deploy-test", "--workers", "1"],
                              capture_output=True, text=True, env=env, timeout=180)  # fmt: skip
        assert made.returncode == 0, made.stderr[-3000:]

        def check(*args: str) -> str:
            result = subprocess.run([sys.executable, "-c", CHECK, *args], capture_output=True, text=True, env=env, timeout=120)
            assert result.returncode == 0, result.stderr[-3000:]
            return result.stdout.strip()

        assert json.loads(check("schedule")) == ["0 3 * * *"]
        run_id = check("run")
        worker = subprocess.run([str(BIN / "prefect"), "worker", "start", "--pool", "test-pool", "--run-once"],
                                capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
        assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
        assert json.loads(check("state", run_id)) == {"state": "COMPLETED", "name": "Completed"}
        assert list((tmp_path / "work" / "runs").glob("*/model.pt"))
    finally:
        os.killpg(server["pid"], signal.SIGTERM)
