"""Tracking against a real MLflow server (SQLite backend, artifacts on the real S3 server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.data.ingest import ingest
from cxr.data.manifest import ManifestConfig, build_manifest, write_manifest
from cxr.data.plan import IngestOptions
from cxr.data.stats import dataset_stats, write_stats
from cxr.data.synth import SynthConfig, synthesize
from cxr.data.version import open_version
from cxr.findings import FINDINGS
from cxr.learn.config import TrainConfig
from cxr.learn.result import TrainResult
from cxr.learn.train import main
from cxr.services.mlflowserver import MlflowServer
from cxr.services.process import free_port
from cxr.tracking.gate import register_and_gate
from cxr.tracking.registry import ProbabilityModel

pytestmark = pytest.mark.s3
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server(s3_server, tmp_path_factory):
    from cxr import storage

    bucket = f"mlflow-{uuid.uuid4().hex[:8]}"
    fs, _ = storage.filesystem(f"s3://{bucket}")
    fs.mkdir(bucket)
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow"), f"s3://{bucket}/artifacts").start()
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = srv.url
    try:
        yield srv
    finally:
        srv.stop()
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tracked")
    synthesize(SynthConfig(out=str(root / "src"), n_images=300, size=64, seed=4))
    result = ingest(str(root / "src"), str(root / "ds"), IngestOptions(sizes=(32,)))
    version = open_version(str(root / "ds"))
    write_stats(version, dataset_stats(version))
    write_manifest(build_manifest(version, ManifestConfig("weighted")), str(root / "m"))
    return {"root": root, "digest": result.digest, "manifest": root / "m"}


@pytest.fixture(scope="module")
def gate_dataset(tmp_path_factory) -> str:
    """Another synthetic archive with most patients in validation: enough positive patients per finding
    for the gate to compare on (it compares a finding only with 10 positive patients)."""
    root = tmp_path_factory.mktemp("gate")
    synthesize(SynthConfig(out=str(root / "src"), n_images=800, size=64, seed=5))
    ingest(str(root / "src"), str(root / "ds"), IngestOptions(sizes=(32,), test_share=0.05, val_share=0.9))
    return str(root / "ds")


@pytest.fixture(scope="module")
def trained(server, prepared) -> TrainResult:
    config = TrainConfig(
        manifest=str(prepared["manifest"]),
        output_dir=str(prepared["root"] / "run"),
        model="small",
        epochs=2,
        batch_size=32,
        register="cxr-tracked",
        experiment="tracking-test",
    )
    return main(config)


def tracked_run(server, trained):
    from mlflow import MlflowClient

    client = MlflowClient(server.url)
    return client, client.get_run(trained.tracked.run_id)


def test_a_run_logs_the_resolved_config_without_secrets(server, trained):
    _, run = tracked_run(server, trained)
    assert run.data.params["model"] == "small" and run.data.params["strategy"] == "weighted"
    assert run.data.params["batch_size"] == "32" and run.data.params["register"] == "cxr-tracked"
    assert not any("SECRET" in k.upper() or "cxr-test-secret" in v for k, v in run.data.params.items())


def test_a_run_logs_metrics_per_epoch_at_the_end_and_of_the_system(server, trained):
    client, run = tracked_run(server, trained)
    assert "final_val_mean_auroc" in run.data.metrics and "val_mean_auroc" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "val_mean_auroc")) == 2
    assert any(k.startswith("system/") for k in run.data.metrics)


def test_a_run_carries_its_lineage_as_tags_and_inputs(server, prepared, trained):
    _, run = tracked_run(server, trained)
    tags = run.data.tags
    assert tags["cxr.dataset_digest"] == prepared["digest"] and tags["cxr.manifest_strategy"] == "weighted"
    assert tags["cxr.manifest_digest"] == json.loads((prepared["manifest"] / "manifest.json").read_text())["digest"]
    assert tags["cxr.code_version"]
    digests = {i.dataset.digest for i in run.inputs.dataset_inputs}
    assert prepared["digest"] in digests and tags["cxr.manifest_digest"] in digests


def test_a_run_logs_charts_validation_figures_and_the_bundle(server, trained):
    client, run = tracked_run(server, trained)
    tops = ("stats", "manifest", "val", "bundle")
    artifacts = {a.path for top in tops for a in client.list_artifacts(run.info.run_id, top)}
    expected = {"stats/prevalence.png", "stats/stats.json", "manifest/balance.png", "val/curves.png", "bundle/model.pt"}
    assert expected <= artifacts


def test_the_first_registered_version_is_promoted(trained):
    registration = trained.tracked.registration
    assert registration.name == "cxr-tracked" and registration.version == "1" and registration.promoted


def test_the_model_loads_back_by_alias_and_predicts_like_the_model_in_memory(server, prepared, trained):
    import mlflow

    from cxr.learn.inference import load_model

    served = mlflow.pyfunc.load_model("models:/cxr-tracked@champion")
    x = np.random.default_rng(0).random((3, 1, 32, 32)).astype(np.float32)
    classifier, _ = load_model(str(prepared["root"] / "run" / "model.pt"))
    with torch.no_grad():
        expected = ProbabilityModel(classifier)(torch.from_numpy(x)).numpy()
    assert np.allclose(np.asarray(served.predict(x)), expected, atol=1e-6)
    again, _ = load_model("models:/cxr-tracked@champion")  # the model.pt bundle logged beside it
    assert all(
        torch.equal(a, b) for a, b in zip(again.state_dict().values(), classifier.state_dict().values(), strict=True)
    )


def log_untrained_model(prepared, seed: int = 1) -> tuple[str, str]:
    """A real model that learned nothing (fresh weights), logged to a new run like training logs one."""
    import dataclasses

    from cxr.learn.checkpoint import ModelBundle
    from cxr.learn.models import build_model
    from cxr.tracking.mlflow_run import MlflowRun
    from cxr.tracking.registry import log_model

    bundle = ModelBundle.read(str(prepared["root"] / "run" / "model.pt"))
    torch.manual_seed(seed)
    model = build_model(bundle.model_name)
    untrained = dataclasses.replace(bundle, model=model.state_dict())
    run = MlflowRun("tracking-test", f"untrained-{seed}", system_metrics=False)
    model_uri = log_model(run, model, bundle.image_size, untrained.to_bytes())
    run.close()
    return run.run_id, model_uri


def test_the_gate_compares_on_the_same_images_keeps_a_worse_model_out_and_promotes_a_better_one(
    server, prepared, trained, gate_dataset
):
    from mlflow import MlflowClient

    client = MlflowClient(server.url)
    dataset = gate_dataset
    untrained_run, untrained_uri = log_untrained_model(prepared)
    worse = register_and_gate(untrained_run, untrained_uri, "cxr-tracked", dataset)
    assert not worse.promoted and worse.champion_version == trained.tracked.registration.version
    assert "not a significant improvement" in worse.reasons[0]
    assert client.get_model_version_by_alias("cxr-tracked", "champion").version == trained.tracked.registration.version
    assert client.get_model_version_by_alias("cxr-tracked", "challenger").version == worse.version
    tags = client.get_model_version("cxr-tracked", worse.version).tags
    assert tags["cxr.gate.decision"] == "stays challenger" and float(tags["cxr.gate.mean_gain"]) < 0
    gate = json.loads(Path(client.download_artifacts(untrained_run, "gate.json")).read_text())
    assert gate["comparison"]["n_patients"] > 1 and gate["rule"]["level"] == 0.95
    assert gate["champion_run_id"] == trained.tracked.run_id and set(gate["comparison"]["findings"]) == set(FINDINGS)

    again = register_and_gate(untrained_run, untrained_uri, "cxr-tracked", dataset)  # a retried registration
    assert again.version == worse.version and not again.promoted
    assert len(client.search_model_versions("name = 'cxr-tracked'")) == 2

    # an untrained champion: the trained model is clearly better, on the same validation images
    first = register_and_gate(untrained_run, untrained_uri, "cxr-gate-better", dataset)
    assert first.promoted and first.reasons == ("no champion yet",)
    better = register_and_gate(trained.tracked.run_id, trained.tracked.model_uri, "cxr-gate-better", dataset)
    assert better.promoted, better.reasons
    assert client.get_model_version_by_alias("cxr-gate-better", "champion").version == better.version
    assert "lower bound" in client.get_run(trained.tracked.run_id).data.tags["cxr.gate.reasons"]


def test_champion_moves_only_if_it_still_names_the_version_the_gate_compared_against(server, trained):
    import mlflow
    from mlflow import MlflowClient

    from cxr.tracking.gate import promote_if_unchanged

    client = MlflowClient(server.url)
    mlflow.set_tracking_uri(server.url)
    v1, v2, v3 = (mlflow.register_model(trained.tracked.model_uri, "cxr-cas").version for _ in range(3))
    client.set_registered_model_alias("cxr-cas", "champion", v1)
    # the gate compared v3 against v1; meanwhile another flow promoted v2
    client.set_registered_model_alias("cxr-cas", "champion", v2)
    promoted, reasons = promote_if_unchanged(client, "cxr-cas", str(v3), str(v1), ("gain ...",))
    assert not promoted and f"changed from {v1} to {v2}" in reasons[-1]
    assert client.get_model_version_by_alias("cxr-cas", "champion").version == str(v2)
    promoted, _ = promote_if_unchanged(client, "cxr-cas", str(v3), str(v2), ("gain ...",))
    assert promoted and client.get_model_version_by_alias("cxr-cas", "champion").version == str(v3)


def test_the_gate_fails_closed_when_the_champion_cannot_be_read(
    server, prepared, trained, reliability_record, monkeypatch
):
    from mlflow import MlflowClient

    from tests.faultproxy import FaultProxy

    client = MlflowClient(server.url)
    dataset = str(prepared["root"] / "ds")
    champion_run, champion_uri = log_untrained_model(prepared, seed=2)
    assert register_and_gate(champion_run, champion_uri, "cxr-closed", dataset).promoted
    client.delete_run(champion_run)
    try:
        deleted = register_and_gate(trained.tracked.run_id, trained.tracked.model_uri, "cxr-closed", dataset)
    finally:
        client.restore_run(champion_run)
    assert not deleted.promoted and deleted.failed_closed and "deleted" in deleted.reasons[0]
    assert client.get_model_version_by_alias("cxr-closed", "champion").version == "1"

    proxy = FaultProxy(server.url).start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # one 503 reaches the gate, not MLflow's retry
    try:
        proxy.fail("/api/2.0/mlflow/registered-models/get", status=503, times=1)
        unavailable = register_and_gate(
            trained.tracked.run_id, trained.tracked.model_uri, "cxr-closed", dataset, uri=proxy.url
        )
    finally:
        proxy.stop()
    assert len(proxy.failed) == 1
    assert not unavailable.promoted and unavailable.failed_closed and "503" in unavailable.reasons[0]
    assert client.get_model_version_by_alias("cxr-closed", "champion").version == "1"
    assert len(client.search_model_versions("name = 'cxr-closed'")) == 2  # the retry reused its version
    reliability_record.record(
        "registry", "the champion's run deleted", "gate failed closed: not promoted, reason recorded"
    )
    reliability_record.record(
        "registry",
        "one HTTP 503 from the MLflow server while the gate reads the champion",
        "gate failed closed: not promoted; the flow's task raises so it is retried, not cached",
    )


def test_cxr_lineage_prints_the_digest_ingest_produced(server, prepared, trained):
    result = subprocess.run(
        [str(BIN / "cxr"), "lineage", "models:/cxr-tracked/1"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert f"dataset   {prepared['digest']}" in result.stdout and str(prepared["root"] / "src") in result.stdout
    unknown = subprocess.run(
        [str(BIN / "cxr"), "lineage", "models:/no-such-model@champion"], capture_output=True, text=True, timeout=120
    )
    assert unknown.returncode == 2 and "MLflow" in unknown.stderr


def test_cxr_predict_by_alias_loads_no_mlflow_and_keeps_the_bundle_by_run(
    server, prepared, trained, tmp_path, reliability_record
):
    """``models:/NAME@ALIAS`` against a tracking server: resolved over MLflow's REST API (MLflow's client, 1.6 s of
    imports, is never loaded), the bundle read through the server's artifact proxy and kept by run in the cache;
    a damaged cached file is fetched again; an unknown alias is one error line naming it."""
    from mlflow import MlflowClient

    image = next((prepared["root"] / "src").rglob("*.png"))
    env = {**os.environ, "CXR_CACHE": str(tmp_path / "cache")}
    plain = [sys.executable, "-m", "cxr.cli", "predict", str(image), "--json", "--model"]
    first = subprocess.run(
        [plain[0], "-X", "importtime", *plain[1:], "models:/cxr-tracked@champion"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in first.stderr.splitlines() if line.startswith("import time")}
    assert not {m for m in imported if m.split(".")[0] == "mlflow"}, sorted(m for m in imported if "mlflow" in m)[:5]
    cached = tmp_path / "cache" / "models" / "runs" / trained.tracked.run_id / "model.pt"
    logged = MlflowClient(server.url).download_artifacts(trained.tracked.run_id, "bundle/model.pt", str(tmp_path))
    assert cached.read_bytes() == Path(logged).read_bytes()
    expected = json.loads(first.stdout)[0]["probabilities"]
    local = subprocess.run([*plain, str(prepared["root"] / "run" / "model.pt")], capture_output=True, text=True)
    assert json.loads(local.stdout)[0]["probabilities"] == expected, local.stderr

    cached.write_bytes(cached.read_bytes()[:1000])  # damaged on disk: fetched again
    again = subprocess.run([*plain, "models:/cxr-tracked/1"], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and json.loads(again.stdout)[0]["probabilities"] == expected, again.stderr
    assert cached.read_bytes() == Path(logged).read_bytes()

    reliability_record.record(
        "registry",
        "the cached copy of a registered model's bundle cut to 1000 bytes on disk",
        "fetched again from the tracking server and the cache mended; the same probabilities as the model.pt",
    )
    unknown = subprocess.run([*plain, "models:/cxr-tracked@nobody"], capture_output=True, text=True, env=env)
    assert unknown.returncode == 2 and unknown.stderr.count("error:") == 1, unknown.stderr
    assert "nobody" in unknown.stderr and "Traceback" not in unknown.stderr


def test_mlflow_models_serve_answers_with_14_probabilities(server, trained, tmp_path):
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/cxr-tracked@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                time.sleep(0.5)
        images = np.random.default_rng(1).random((2, 1, 32, 32)).astype(np.float32).tolist()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": images}).encode(),
            headers={"Content-Type": "application/json"},
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
        predictions = np.asarray(answer["predictions"])
        assert predictions.shape == (2, 14) and ((predictions >= 0) & (predictions <= 1)).all()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


def test_training_survives_the_server_stopping_and_keeps_what_was_logged(
    server, prepared, tmp_path, reliability_record
):
    from mlflow import MlflowClient

    args = [
        sys.executable,
        "-m",
        "cxr.learn.train",
        "--manifest",
        str(prepared["manifest"]),
        "--output-dir",
        str(tmp_path / "run"),
        "--model",
        "small",
        "--epochs",
        "12",
        "--batch-size",
        "16",
        "--experiment",
        "outage",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(server.url)
    deadline, run_id = time.monotonic() + 120, None
    while time.monotonic() < deadline and proc.poll() is None:
        experiment = client.get_experiment_by_name("outage")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and client.get_metric_history(runs[0].info.run_id, "val_mean_auroc"):
            run_id = runs[0].info.run_id
            break
        time.sleep(0.3)
    assert run_id and proc.poll() is None, "training ended before the server could be stopped"
    logged = len(client.get_metric_history(run_id, "val_mean_auroc"))
    server.stop()
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert "MLflow tracking at" in stderr and "failed" in stderr and "training goes on" in stderr
    assert (tmp_path / "run" / "model.pt").exists()
    assert (
        len([ln for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "val_mean_auroc" in ln])
        == 13
    )
    server.start()  # same port, same database
    assert len(MlflowClient(server.url).get_metric_history(run_id, "val_mean_auroc")) >= logged >= 1
    reliability_record.record(
        "tracking",
        "the MLflow server stopped during training",
        "training completed; the failure reported loudly; earlier metrics present after the restart",
    )


def test_init_from_an_mlflow_model_uri_starts_from_its_weights_and_records_the_parent(
    server, prepared, trained, tmp_path
):
    from mlflow import MlflowClient

    from cxr.learn.inference import load_model

    parent, _ = load_model("models:/cxr-tracked@champion")
    result = main(
        TrainConfig(
            manifest=str(prepared["manifest"]),
            output_dir=str(tmp_path / "child"),
            model="small",
            epochs=1,
            max_steps=1,
            lr=1e-12,
            init_from="models:/cxr-tracked@champion",
            experiment="tracking-test",
        )
    )
    child, _ = load_model(str(tmp_path / "child" / "model.pt"))
    for name, tensor in parent.state_dict().items():
        if tensor.is_floating_point() and "running" not in name:
            assert torch.allclose(tensor, child.state_dict()[name], atol=1e-6), name
    tags = MlflowClient(server.url).get_run(result.tracked.run_id).data.tags
    assert tags["cxr.parent_model"] == "models:/cxr-tracked@champion"
