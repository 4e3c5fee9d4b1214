"""``cxr stack up``, then ``cxr demo`` against it, then ``cxr stack down``: real servers, no process left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CXR = str(Path(sys.executable).parent / "cxr")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stack_up_demo_against_it_then_down_leaves_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_TRACKING", "PREFECT_API"))}
    stack = ["--dir", str(tmp_path / "stack")]
    up = subprocess.run([CXR, "stack", "up", *stack], capture_output=True, text=True, env=env, timeout=300)
    assert up.returncode == 0, up.stderr[-3000:]
    state = json.loads((tmp_path / "stack" / "stack.json").read_text())
    pids = [s["pid"] for s in state["services"].values()]
    try:
        credentials = tmp_path / "stack" / "credentials.env"
        assert oct(credentials.stat().st_mode & 0o777) == "0o600"
        secret = next(ln.split("=", 1)[1] for ln in credentials.read_text().splitlines() if "SECRET" in ln)
        assert secret not in up.stdout + up.stderr
        status = subprocess.run([CXR, "stack", "status", *stack, "--json"], capture_output=True, text=True, env=env, timeout=60)
        assert json.loads(status.stdout)["running"] is True
        for line in up.stdout.splitlines():  # what `eval "$(cxr stack env)"` does
            if line.startswith(". "):
                for kv in Path(line[2:]).read_text().splitlines():
                    key, _, value = kv.removeprefix("export ").partition("=")
                    env[key] = value
            elif line.startswith("export "):
                key, _, value = line.removeprefix("export ").partition("=")
                env[key] = value
        assert env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:") and env["PREFECT_API_URL"].endswith("/api")
        demo = subprocess.run([CXR, "demo", "--workdir", str(tmp_path / "demo"), "--n-images", "120", "--size", "64",
                               "--shard-size", "32", "--epochs", "1", "--workers", "1"],
                              capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
        assert demo.returncode == 0, demo.stderr[-3000:]
        assert f"MLflow UI:  {env['MLFLOW_TRACKING_URI']}" in demo.stdout
        assert f"Prefect UI: {env['PREFECT_API_URL'].removesuffix('/api')}" in demo.stdout
        lineage = subprocess.run([CXR, "lineage", "models:/cxr-demo@champion"], capture_output=True, text=True, env=env, timeout=120)
        assert lineage.returncode == 0 and "dataset   " in lineage.stdout
        assert "Prefect flow run -" not in lineage.stdout  # the flow run id made it into the lineage
    finally:
        down = subprocess.run([CXR, "stack", "down", *stack], capture_output=True, text=True, env=env, timeout=120)
    assert down.returncode == 0 and "stopped: prefect, mlflow, s3" in down.stderr
    assert not any(_alive(pid) for pid in pids)
    after = subprocess.run([CXR, "stack", "status", *stack], capture_output=True, text=True, env=env, timeout=60)
    assert after.returncode == 1 and "not running" in after.stdout
