"""The model registry: log a trained model (pt2 for serving, the ``model.pt`` bundle beside it), and find
the run and bundle behind an MLflow model URI. Registering and the champion gate: :mod:`cxr.tracking.gate`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from cxr.tracking.mlflow_run import MlflowRun, client

FINAL_MEAN_METRIC = "final_val_mean_auroc"  # logged by training at its end
BUNDLE_ARTIFACT = "bundle/model.pt"


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
    if model_uri.startswith("runs:/"):
        run_id = model_uri[len("runs:/") :].split("/")[0]
        if not run_id:
            raise ValueError(f"{model_uri!r} names no run: runs:/RUN_ID/model")
        return run_id, None, None
    if not model_uri.startswith("models:/") or not model_uri[len("models:/") :].strip("/"):
        raise ValueError(
            f"not an MLflow model URI: {model_uri!r} (models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-ID, runs:/ID)"
        )
    mlflow_client = client(uri)
    rest = model_uri[len("models:/") :].rstrip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        version = mlflow_client.get_model_version_by_alias(name, alias)
    elif "/" in rest:
        name, number = rest.rsplit("/", 1)
        version = mlflow_client.get_model_version(name, number)
    else:  # models:/m-<id>
        logged = mlflow_client.get_logged_model(rest)
        if not logged.source_run_id:
            raise ValueError(f"{model_uri}: the logged model names no run it came from")
        return logged.source_run_id, None, None
    return version.run_id, name, str(version.version)


def download_bundle(model_uri: str, uri: str | None = None) -> bytes:
    """The ``model.pt`` bundle logged beside an MLflow model (its thresholds and digests come with it)."""
    run_id, _, _ = resolve_run(model_uri, uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = client(uri).download_artifacts(run_id, BUNDLE_ARTIFACT, tmp)
        return Path(local).read_bytes()
