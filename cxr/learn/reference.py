"""What ``--model`` and ``--device`` take, checked before torch, MLflow or a model is loaded (a wrong
path is one error line in a second, not a traceback after the imports).

- a model: a ``model.pt`` (local or ``s3://``), a run folder holding one, or an MLflow URI
  (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-ID``, ``runs:/ID/...``), which MLflow
  resolves later;
- a device: ``auto`` (the GPU if there is one), ``cpu``, ``cuda`` or ``cuda:N``.
"""

from __future__ import annotations

import re

from cxr import storage
from cxr.learn.config import MLFLOW_SCHEMES, MODEL_FILE

DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def model_reference(uri: str, option: str = "--model") -> str:
    """The model ``uri`` names: an MLflow URI as it is, a run folder's ``model.pt``, or the file itself."""
    if uri.startswith(MLFLOW_SCHEMES):
        return uri
    if storage.is_file(uri):
        return uri
    if not storage.exists(uri):
        raise FileNotFoundError(
            f"{option} {uri}: does not exist (give a model.pt, its run folder, or models:/NAME@ALIAS)"
        )
    inside = storage.join(uri, MODEL_FILE)
    if storage.is_file(inside):
        return inside
    raise IsADirectoryError(f"{option} {uri}: a folder without a {MODEL_FILE} (give a model.pt or a run folder)")


def check_device(device: str) -> str:
    """``device`` if it has one of the forms a device takes."""
    if not DEVICE.fullmatch(device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return device
