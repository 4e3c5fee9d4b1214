"""Shared fixtures: quiet offline settings, the real NIH fixture files, a real S3 server on 127.0.0.1."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxr.offline import set_offline_defaults
from tests import reliability

set_offline_defaults()  # before any library reads them
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two test processes share the machine's cores: torch in each (and in the commands they start) takes one
    # thread, where two each oversubscribed 2 cores with 4 spinning OpenMP threads. Set before torch loads.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="cxr-test-prefect-")
# Training tracks to MLflow by default: the tests' runs go to a throwaway local store, never .cxr/.
_MLFLOW_DIR = tempfile.mkdtemp(prefix="cxr-test-mlflow-")
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{_MLFLOW_DIR}/mlflow.db")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

FIXTURES = Path(__file__).parent / "fixtures"
_FAULTS: list[reliability.Fault] = []
NIH = FIXTURES / "nih"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real SeaweedFS S3 server for the whole test run; yields its endpoint URL.

    Test credentials are set in the environment (the server accepts them); the endpoint goes into
    AWS_ENDPOINT_URL, which s3fs, pyarrow and boto3 all honour.
    """
    from cxr.services.s3server import S3Server

    saved = {
        k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")
    }
    os.environ["AWS_ACCESS_KEY_ID"] = "cxr-test-key"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "cxr-test-secret"
    os.environ["AWS_REGION"] = "us-east-1"
    server = S3Server(tmp_path_factory.mktemp("s3") / "data").start()
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    try:
        yield server.endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A new, empty bucket for one test, as an ``s3://`` URL."""
    from cxr import storage

    name = f"t-{uuid.uuid4().hex[:12]}"
    fs, _ = storage.filesystem(f"s3://{name}")
    fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """Prefect's test harness (a real, temporary API server) once for the whole run."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def reliability_record(request: pytest.FixtureRequest) -> Iterator[reliability.Recorder]:
    """Record the fault a test injects and what the pipeline did; kept only if the test passes."""
    recorder = reliability.Recorder(request.node.nodeid)
    yield recorder
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.passed:
        _FAULTS.extend(recorder.pending)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _FAULTS:
        reliability.write(_FAULTS)
