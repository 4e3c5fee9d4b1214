"""The model registry: log a trained model, register it as ``challenger``, and gate ``champion``.

A new version becomes ``champion`` only if its mean validation AUROC beats the champion's by at least
``margin`` and no finding's validation AUROC drops by more than ``max_drop``; with no champion yet it
is promoted. The decision and each reason are logged as tags on the version and its run, and as
``gate.json`` in the run's artifacts.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr.findings import FINDINGS

CHALLENGER, CHAMPION = "challenger", "champion"


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


def log_model(logger: Any, classifier: nn.Module, bundle: dict[str, Any]) -> str:
    """Log the model (pt2, with signature and a batch-2 input example) and the ``model.pt`` bundle; its URI."""
    import mlflow
    from mlflow.models import infer_signature

    size = int(bundle["image_size"])
    served = ProbabilityModel(classifier).cpu().eval()
    example = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = served(example).numpy()
    signature = infer_signature(example.numpy(), output)
    mlflow.set_tracking_uri(logger.uri)
    with mlflow.start_run(run_id=logger.run_id, log_system_metrics=False):
        info = mlflow.pytorch.log_model(
            served, name="model", input_example=example.numpy(), signature=signature,
            pip_requirements=pip_requirements(), serialization_format="pt2",
        )  # fmt: skip
    buf = io.BytesIO()
    torch.save(bundle, buf)
    logger.log_bytes("model.pt", buf.getvalue(), "bundle")
    return info.model_uri


@dataclass
class GateDecision:
    promoted: bool
    reasons: list[str] = field(default_factory=list)
    challenger: dict[str, Any] = field(default_factory=dict)
    champion: dict[str, Any] | None = None


def _val_metrics(client: Any, run_id: str) -> dict[str, Any]:
    metrics = client.get_run(run_id).data.metrics
    return {
        "mean": metrics.get("final_val_mean_auroc"),
        "findings": {f: metrics.get(f"final_val_auroc_{f}") for f in FINDINGS},
    }


def decide(challenger: dict[str, Any], champion: dict[str, Any] | None, margin: float, max_drop: float) -> GateDecision:
    """The gate's rule, on plain numbers (tested on its own)."""
    if challenger["mean"] is None:
        return GateDecision(False, ["the challenger has no validation AUROC"], challenger, champion)
    if champion is None or champion["mean"] is None:
        return GateDecision(True, ["no champion yet"], challenger, champion)
    reasons = []
    gain = challenger["mean"] - champion["mean"]
    ok = gain >= margin
    reasons.append(f"mean val AUROC {challenger['mean']:.4f} vs champion {champion['mean']:.4f}: "
                   f"{gain:+.4f} {'>=' if ok else '<'} margin {margin:+.4f}")  # fmt: skip
    for f in FINDINGS:
        new, old = challenger["findings"].get(f), champion["findings"].get(f)
        if new is not None and old is not None and old - new > max_drop:
            ok = False
            reasons.append(f"{f} drops {old - new:.4f} ({old:.4f} -> {new:.4f}), more than {max_drop:.4f}")
    if ok:
        reasons.append(f"no finding drops by more than {max_drop:.4f}")
    return GateDecision(ok, reasons, challenger, champion)


def register_and_gate(run_id: str, model_uri: str, name: str, margin: float = 0.0, max_drop: float = 0.02,
                      tracking_uri: str | None = None) -> tuple[str, GateDecision]:  # fmt: skip
    """Register ``model_uri`` under ``name`` as ``challenger``; promote it to ``champion`` if the gate passes."""
    import mlflow
    from mlflow import MlflowClient

    from cxr.tracking import tracking_uri as default_uri

    uri = tracking_uri or default_uri()
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    version = mlflow.register_model(model_uri, name, tags={"cxr.run_id": run_id}).version
    client.set_registered_model_alias(name, CHALLENGER, version)
    challenger = _val_metrics(client, run_id)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
        champion_run = current.tags.get("cxr.run_id", current.run_id)
        champion = _val_metrics(client, champion_run) if current.version != version else None
    except Exception:  # noqa: BLE001 - MLflow raises when the alias is not set yet
        champion = None
    decision = decide(challenger, champion, margin, max_drop)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    text = "promoted to champion" if decision.promoted else "stays challenger"
    for key, value in (("cxr.gate.decision", text), ("cxr.gate.reasons", " | ".join(decision.reasons))):
        client.set_model_version_tag(name, version, key, value)
        client.set_tag(run_id, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gate.json"
        path.write_text(json.dumps({"model": name, "version": version, **asdict(decision)}, indent=2))
        client.log_artifact(run_id, str(path))
    return str(version), decision


def resolve_run(model_uri: str, tracking_uri: str | None = None) -> tuple[str, str | None, str | None]:
    """(run id, registered name, version) behind ``models:/NAME@ALIAS``, ``models:/NAME/V`` or ``runs:/ID/...``."""
    from mlflow import MlflowClient

    from cxr.tracking import tracking_uri as default_uri

    client = MlflowClient(tracking_uri or default_uri())
    if model_uri.startswith("runs:/"):
        return model_uri[len("runs:/") :].split("/")[0], None, None
    if not model_uri.startswith("models:/"):
        raise ValueError(f"not an MLflow model URI: {model_uri!r} (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID)")
    rest = model_uri[len("models:/") :]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    else:
        name, number = rest.rsplit("/", 1)
        version = client.get_model_version(name, number)
    return version.run_id, name, str(version.version)


def download_bundle(model_uri: str, tracking_uri: str | None = None) -> bytes:
    """The ``model.pt`` bundle logged beside an MLflow model (its thresholds and digests come with it)."""
    from mlflow import MlflowClient

    from cxr.tracking import tracking_uri as default_uri

    run_id, _, _ = resolve_run(model_uri, tracking_uri)
    client = MlflowClient(tracking_uri or default_uri())
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, "bundle/model.pt", tmp)
        return Path(local).read_bytes()
