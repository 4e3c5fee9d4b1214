"""What a model card can say about where a model came from: its lineage (source archive -> dataset version ->
manifest -> run -> model), the settings it trained with, the data's prevalence and what balancing did, and the
gate's record when the model came through the registry.

Each part is read where it lives and may be missing (a model trained with ``--no-tracking`` has no MLflow
run, so no lineage and no gate record): the card then says why, it does not fail.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr import storage
from cxr.data.manifest import ManifestInfo, read_manifest_info
from cxr.data.stats import LabelStats, dataset_stats
from cxr.data.version import DatasetVersion
from cxr.records import from_json
from cxr.redact import redact
from cxr.tracking.gate import GATE_FILE, GateRecord
from cxr.tracking.lineage import Lineage, lineage


@dataclass(frozen=True)
class Provenance:
    lineage: Lineage | None
    lineage_missing: str | None  # why there is no lineage
    settings: Mapping[str, Any]  # the training settings the model's bundle records
    trained_on: str | None  # the dataset version(s) the model trained on (its bundle's record)
    stats: LabelStats | None  # of the version scored
    manifest: ManifestInfo | None  # the manifest the model trained on
    manifest_missing: str | None
    gate: GateRecord | None  # None: the model did not come through the gate (or its record is unreadable)


def gather(model_uri: str, version: DatasetVersion, settings: Mapping[str, Any], trained_on: str | None) -> Provenance:
    """Everything the card says about the model's origin; what cannot be read is named, not raised."""
    chain, missing = None, None
    try:
        chain = lineage(model_uri)
    except Exception as err:  # noqa: BLE001 - no run recorded, tracking unreachable: the card says so
        missing = redact(f"{type(err).__name__}: {err}")[:300]
    manifest, manifest_missing = None, "no lineage: the manifest is not known"
    if chain is not None and chain.manifest.uri:
        try:
            manifest, manifest_missing = read_manifest_info(chain.manifest.uri), None
        except Exception as err:  # noqa: BLE001 - moved or removed since training
            manifest_missing = redact(f"{chain.manifest.uri}: {type(err).__name__}: {err}")[:300]
    return Provenance(
        lineage=chain,
        lineage_missing=missing,
        settings=dict(settings),
        trained_on=trained_on,
        stats=version_stats(version),
        manifest=manifest,
        manifest_missing=manifest_missing,
        gate=gate_record(chain.run.id) if chain is not None else None,
    )


def version_stats(version: DatasetVersion) -> LabelStats:
    """The version's ``stats.json`` when ``cxr stats`` wrote one, else counted now."""
    url = version.file("stats.json")
    if storage.exists(url):
        return from_json(LabelStats, storage.read_text(url))
    return dataset_stats(version)


def gate_record(run_id: str) -> GateRecord | None:
    """The gate's record on run ``run_id``, if the gate judged it."""
    from cxr.tracking.mlflow_run import client

    mlflow_client = client()
    try:
        if GATE_FILE not in {f.path for f in mlflow_client.list_artifacts(run_id)}:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow_client.download_artifacts(run_id, GATE_FILE, tmp)
            return from_json(GateRecord, Path(path).read_text())
    except Exception:  # noqa: BLE001 - unreadable: the card shows the registry's tags from the lineage instead
        return None
