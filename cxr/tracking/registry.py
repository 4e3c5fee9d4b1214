"""The model registry: log a trained model (pt2 for serving, the ``model.pt`` bundle beside it), and find
the run and bundle behind an MLflow model URI. Registering and the champion gate: :mod:`cxr.tracking.gate`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from cxr.tracking.mlflow_run import MlflowRun, client
from cxr.tracking.model_uri import BUNDLE_ARTIFACT, parse

FINAL_MEAN_METRIC = "final_val_mean_auroc"  # logged by training at its end


class ProbabilityModel(nn.Module):
    """The served model: [N, 1, S, S] float in [0, 1] -> [N, 14] probabilities."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(x))


def pip_requirements() -> list[str]:
    """Exact versions of what the served model needs (given, never guessed: guessing tries the network)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "torchvision", "numpy", "mlflow")]


def log_model(run: MlflowRun, classifier: nn.Module, image_size: int, bundle: bytes) -> str:
    """Log the model (pt2, with signature and a batch-2 input example) and the ``model.pt`` bundle; its URI."""
    import mlflow
    from mlflow.models import infer_signature

    served = ProbabilityModel(classifier).cpu().eval()
    example = torch.rand(2, 1, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = served(example).numpy()
    signature = infer_signature(example.numpy(), output)
    mlflow.set_tracking_uri(run.uri)
    with mlflow.start_run(run_id=run.run_id, log_system_metrics=False):
        info = mlflow.pytorch.log_model(
            served,
            name="model",
            input_example=example.numpy(),
            signature=signature,
            pip_requirements=pip_requirements(),
            serialization_format="pt2",
        )
    run.log_bytes("model.pt", bundle, "bundle")
    return info.model_uri


def resolve_run(model_uri: str, uri: str | None = None) -> tuple[str, str | None, str | None]:
    """(run id, registered name, version) behind ``models:/NAME@ALIAS``, ``models:/NAME/V``, ``models:/m-<id>``
    (a logged model: how MLflow 3 names the model a run logged) or ``runs:/ID/...``."""
    ref = parse(model_uri)
    if ref.kind == "run":
        return ref.name, None, None
    mlflow_client = client(uri)
    if ref.kind == "alias":
        name, version = ref.name, mlflow_client.get_model_version_by_alias(ref.name, ref.detail)
    elif ref.kind == "version":
        name, version = ref.name, mlflow_client.get_model_version(ref.name, ref.detail)
    else:  # models:/m-<id>
        logged = mlflow_client.get_logged_model(ref.name)
        if not logged.source_run_id:
            raise ValueError(f"{model_uri}: the logged model names no run it came from")
        return logged.source_run_id, None, None
    return version.run_id, name, str(version.version)


def download_bundle(model_uri: str, uri: str | None = None) -> bytes:
    """The ``model.pt`` bundle logged beside an MLflow model (its thresholds and digests come with it)."""
    return download_run_bundle(resolve_run(model_uri, uri)[0], uri)


def download_run_bundle(run_id: str, uri: str | None = None) -> bytes:
    """The ``model.pt`` bundle run ``run_id`` logged, through MLflow's client."""
    with tempfile.TemporaryDirectory() as tmp:
        local = client(uri).download_artifacts(run_id, BUNDLE_ARTIFACT, tmp)
        return Path(local).read_bytes()
