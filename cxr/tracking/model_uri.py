"""What an MLflow model URI names (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-ID``,
``runs:/ID``), and where a run keeps the ``model.pt`` bundle: one reading for the registry and the model cache."""

from __future__ import annotations

from dataclasses import dataclass

BUNDLE_ARTIFACT = "bundle/model.pt"  # where training logs the bundle in its run (cxr.tracking.registry)


@dataclass(frozen=True)
class ModelRef:
    """What an MLflow model URI names: a registered version (by alias or number), a run, or a logged model."""

    kind: str  # "alias", "version", "run" or "logged"
    name: str  # registered name, run id or logged model id
    detail: str = ""  # the alias or the version number


def parse(model_uri: str) -> ModelRef:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-ID`` or ``runs:/RUN_ID/...``."""
    if model_uri.startswith("runs:/"):
        run_id = model_uri[len("runs:/") :].split("/")[0]
        if not run_id:
            raise ValueError(f"{model_uri!r} names no run: runs:/RUN_ID/model")
        return ModelRef("run", run_id)
    rest = model_uri[len("models:/") :].strip("/") if model_uri.startswith("models:/") else ""
    if not rest:
        raise ValueError(
            f"not an MLflow model URI: {model_uri!r} (models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-ID, runs:/ID)"
        )
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return ModelRef("alias", name, alias)
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        return ModelRef("version", name, version)
    return ModelRef("logged", rest)
