"""The model registry: log a trained model, register it as ``challenger``, and gate ``champion``.

A new version becomes ``champion`` only if its mean validation AUROC beats the champion's by at least
``margin`` and no finding's validation AUROC drops by more than ``max_drop``; with no champion yet it
is promoted. The decision and each reason are logged as tags on the version and its run, and as
``gate.json`` in the run's artifacts.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cxr.findings import FINDINGS
from cxr.records import to_plain
from cxr.tracking import tags
from cxr.tracking.mlflow_run import MlflowRun, client, tracking_uri

CHALLENGER, CHAMPION = "challenger", "champion"
FINAL_MEAN_METRIC = "final_val_mean_auroc"  # logged by training at its end; what the gate compares
FINAL_FINDING_METRIC = "final_val_auroc_{}"


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


@dataclass(frozen=True)
class ValAurocs:
    """A run's final validation AUROCs: the mean and each finding's (None where undefined)."""

    mean: float | None
    findings: Mapping[str, float | None]


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    reasons: tuple[str, ...]
    challenger: ValAurocs
    champion: ValAurocs | None = None


@dataclass(frozen=True)
class Registration:
    """A registered model version and the gate's decision about it."""

    name: str
    version: str
    promoted: bool
    reasons: tuple[str, ...]

    @property
    def verdict(self) -> str:
        return "promoted to champion" if self.promoted else "stays challenger"


def _val_aurocs(mlflow_client: object, run_id: str) -> ValAurocs:
    metrics = mlflow_client.get_run(run_id).data.metrics  # type: ignore[attr-defined]
    return ValAurocs(metrics.get(FINAL_MEAN_METRIC), {f: metrics.get(FINAL_FINDING_METRIC.format(f)) for f in FINDINGS})


def decide(challenger: ValAurocs, champion: ValAurocs | None, margin: float, max_drop: float) -> GateDecision:
    """The gate's rule, on plain numbers (tested on its own)."""
    if challenger.mean is None:
        return GateDecision(False, ("the challenger has no validation AUROC",), challenger, champion)
    if champion is None or champion.mean is None:
        return GateDecision(True, ("no champion yet",), challenger, champion)
    gain = challenger.mean - champion.mean
    ok = gain >= margin
    reasons = [
        f"mean val AUROC {challenger.mean:.4f} vs champion {champion.mean:.4f}: "
        f"{gain:+.4f} {'>=' if ok else '<'} margin {margin:+.4f}"
    ]
    for f in FINDINGS:
        new, old = challenger.findings.get(f), champion.findings.get(f)
        if new is not None and old is not None and old - new > max_drop:
            ok = False
            reasons.append(f"{f} drops {old - new:.4f} ({old:.4f} -> {new:.4f}), more than {max_drop:.4f}")
    if ok:
        reasons.append(f"no finding drops by more than {max_drop:.4f}")
    return GateDecision(ok, tuple(reasons), challenger, champion)


def register_and_gate(
    run_id: str, model_uri: str, name: str, margin: float = 0.0, max_drop: float = 0.02, uri: str | None = None
) -> Registration:
    """Register ``model_uri`` under ``name`` as ``challenger``; promote it to ``champion`` if the gate passes."""
    import mlflow

    uri = uri or tracking_uri()
    mlflow_client = client(uri)
    mlflow.set_tracking_uri(uri)
    version = str(mlflow.register_model(model_uri, name, tags={tags.RUN_ID: run_id}).version)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version)
    challenger = _val_aurocs(mlflow_client, run_id)
    try:
        current = mlflow_client.get_model_version_by_alias(name, CHAMPION)
        champion_run = current.tags.get(tags.RUN_ID, current.run_id)
        champion = _val_aurocs(mlflow_client, champion_run) if str(current.version) != version else None
    except Exception:  # noqa: BLE001 - MLflow raises when the alias is not set yet
        champion = None
    decision = decide(challenger, champion, margin, max_drop)
    if decision.promoted:
        mlflow_client.set_registered_model_alias(name, CHAMPION, version)
    registration = Registration(name, version, decision.promoted, decision.reasons)
    for key, value in ((tags.GATE_DECISION, registration.verdict), (tags.GATE_REASONS, " | ".join(decision.reasons))):
        mlflow_client.set_model_version_tag(name, version, key, value)
        mlflow_client.set_tag(run_id, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gate.json"
        path.write_text(json.dumps({"model": name, "version": version, **to_plain(decision)}, indent=2))
        mlflow_client.log_artifact(run_id, str(path))
    return registration


def resolve_run(model_uri: str, uri: str | None = None) -> tuple[str, str | None, str | None]:
    """(run id, registered name, version) behind ``models:/NAME@ALIAS``, ``models:/NAME/V`` or ``runs:/ID/...``."""
    if model_uri.startswith("runs:/"):
        return model_uri[len("runs:/") :].split("/")[0], None, None
    if not model_uri.startswith("models:/"):
        raise ValueError(f"not an MLflow model URI: {model_uri!r} (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID)")
    mlflow_client = client(uri)
    rest = model_uri[len("models:/") :]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        version = mlflow_client.get_model_version_by_alias(name, alias)
    else:
        name, number = rest.rsplit("/", 1)
        version = mlflow_client.get_model_version(name, number)
    return version.run_id, name, str(version.version)


def download_bundle(model_uri: str, uri: str | None = None) -> bytes:
    """The ``model.pt`` bundle logged beside an MLflow model (its thresholds and digests come with it)."""
    run_id, _, _ = resolve_run(model_uri, uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = client(uri).download_artifacts(run_id, "bundle/model.pt", tmp)
        return Path(local).read_bytes()
