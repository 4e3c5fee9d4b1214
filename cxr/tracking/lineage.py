"""``cxr lineage MODEL``: what made a model, from the registry back to the source files.

model version -> MLflow run -> manifest (digest, strategy) -> dataset version (digest, folder) -> source
archive (label table, images), read from the run's tags and the dataset's ``dataset.json``.

MODEL is any reference the CLI prints: a ``model.pt`` (local or s3://) or its run folder (the bundle and
``tracking.json`` name the MLflow run), ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-ID``
or ``runs:/ID/...``. A manifest or dataset whose file no longer carries the recorded digest is named so.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cxr import storage
from cxr.data.accounting import Accounting
from cxr.data.manifest import read_manifest_info
from cxr.data.version import open_version
from cxr.learn.config import MLFLOW_SCHEMES, MODEL_FILE, RESULT_FILE, TRACKING_FILE
from cxr.learn.result import recorded_run_id
from cxr.tracking import tags
from cxr.tracking.mlflow_run import client
from cxr.tracking.registry import FINAL_MEAN_METRIC, resolve_run


@dataclass(frozen=True)
class ModelLink:
    uri: str
    name: str | None = None
    version: str | None = None
    aliases: tuple[str, ...] = ()
    gate: str | None = None
    gate_reasons: str | None = None


@dataclass(frozen=True)
class RunLink:
    id: str
    experiment_id: str
    status: str
    code_version: str | None
    prefect_flow_run_id: str | None
    parent_model: str | None
    val_mean_auroc: float | None


@dataclass(frozen=True)
class ManifestLink:
    digest: str | None
    strategy: str | None
    uri: str | None
    matches_file: bool | None  # the manifest.json at uri still carries this digest


@dataclass(frozen=True)
class DatasetLink:
    digest: str | None
    path: str | None
    created: str | None = None
    splits: Mapping[str, int] | None = None
    accounting: Accounting | None = None
    unreachable: str | None = None  # why dataset.json could not be read
    matches_file: bool | None = None  # the dataset.json at path still carries this digest


@dataclass(frozen=True)
class Lineage:
    model: ModelLink
    run: RunLink
    manifest: ManifestLink
    dataset: DatasetLink
    # dataset.json's source: root, format, adapter {name, version}, label table, label policy, tables, edition, ...
    source: Mapping[str, Any] | None
    # a mixed manifest's other versions, each with its source
    others: tuple[tuple[DatasetLink, Mapping[str, Any] | None], ...] = ()


def run_of_file(path: str) -> str:
    """The MLflow run that trained a ``model.pt``, or the model in a run folder: the bundle's own record,
    else the folder's ``tracking.json`` or ``result.json``."""
    if storage.exists(storage.join(path, MODEL_FILE)) or storage.exists(storage.join(path, TRACKING_FILE)):
        folder, model = path, storage.join(path, MODEL_FILE)
    elif storage.exists(path):
        folder = (
            posixpath.dirname(path.rstrip("/")) if storage.is_remote(path) else os.path.dirname(os.path.abspath(path))
        )
        model = path
    else:
        raise FileNotFoundError(
            f"{path}: no such model.pt or run folder (or give an MLflow URI: models:/NAME@ALIAS, runs:/ID)"
        )
    if storage.exists(model):
        from cxr.learn.checkpoint import ModelBundle

        recorded = ModelBundle.read(model).tracking_run_id
        if recorded:
            return recorded
    recorded = recorded_run_id(folder)
    if recorded:
        return recorded
    result = storage.join(folder, RESULT_FILE)
    if storage.exists(result):
        recorded = (json.loads(storage.read_text(result)).get("tracked") or {}).get("run_id")
        if recorded:
            return recorded
    raise ValueError(f"{path}: no MLflow run is recorded for this model (trained with --no-tracking?)")


def lineage(model_uri: str, uri: str | None = None) -> Lineage:
    """The chain behind a model: a ``model.pt`` or run folder, or an MLflow URI (see the module docstring)."""
    if model_uri.startswith(MLFLOW_SCHEMES):
        run_id, name, version = resolve_run(model_uri, uri)
    else:  # a file is read (and a missing one named) before the tracking store is opened
        run_id, name, version = run_of_file(model_uri), None, None
        model_uri = storage.absolute(model_uri)
    mlflow_client = client(uri)
    run = mlflow_client.get_run(run_id)
    run_tags = run.data.tags
    model = ModelLink(model_uri, name, version)
    if name and version:
        mv = mlflow_client.get_model_version(name, version)
        model = ModelLink(
            model_uri, name, version, tuple(mv.aliases), mv.tags.get(tags.GATE_DECISION), mv.tags.get(tags.GATE_REASONS)
        )
    run_link = RunLink(
        id=run_id,
        experiment_id=run.info.experiment_id,
        status=run.info.status,
        code_version=run_tags.get(tags.CODE_VERSION),
        prefect_flow_run_id=run_tags.get(tags.PREFECT_FLOW_RUN_ID),
        parent_model=run_tags.get(tags.PARENT_MODEL),
        val_mean_auroc=run.data.metrics.get(FINAL_MEAN_METRIC),
    )
    manifest_digest, manifest_uri = run_tags.get(tags.MANIFEST_DIGEST), run_tags.get(tags.MANIFEST_URI)
    matches = None
    if manifest_uri:
        try:
            matches = read_manifest_info(manifest_uri).digest == manifest_digest
        except (FileNotFoundError, OSError, ValueError):
            matches = None
    manifest = ManifestLink(manifest_digest, run_tags.get(tags.MANIFEST_STRATEGY), manifest_uri, matches)
    mixed = json.loads(run_tags[tags.DATASETS]) if tags.DATASETS in run_tags else None
    if mixed:  # a mixed manifest: every version it drew on, the first as the dataset
        links = tuple(_dataset(v["root"], v["digest"]) for v in mixed)
        return Lineage(model, run_link, manifest, *links[0], others=links[1:])
    dataset, source = _dataset(run_tags.get(tags.DATASET_ROOT), run_tags.get(tags.DATASET_DIGEST))
    return Lineage(model, run_link, manifest, dataset, source)


def _dataset(root: str | None, digest: str | None) -> tuple[DatasetLink, Mapping[str, Any] | None]:
    if not (root and digest):
        return DatasetLink(digest, None), None
    path = storage.join(root, digest)
    matches = None
    try:
        matches = json.loads(storage.read_text(storage.join(path, "dataset.json"))).get("digest") == digest
        version = open_version(path)
    except (FileNotFoundError, OSError, ValueError) as err:
        return DatasetLink(digest, path, unreachable=str(err), matches_file=matches), None
    info = version.info
    link = DatasetLink(digest, path, info["created"], info["splits"], version.accounting, matches_file=matches)
    return link, info["source"]


def _rounded(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _counts(splits: Mapping[str, int]) -> str:
    """``test 30, train 80, val 10``."""
    return ", ".join(f"{name} {count}" for name, count in splits.items())


def format_chain(chain: Lineage) -> str:
    """The chain as indented text, one link a line."""
    m, r, man, d = chain.model, chain.run, chain.manifest, chain.dataset
    model = f"model     {m.uri}"
    if m.name:
        model += f"  ({m.name} version {m.version}, aliases: {', '.join(m.aliases) or 'none'})"
    lines: list[str | None] = [
        model,
        f"  gate    {m.gate}: {m.gate_reasons}" if m.gate else None,
        f"run       {r.id}  ({r.status}, code {r.code_version}, val mean AUROC {_rounded(r.val_mean_auroc)}, "
        f"Prefect flow run {r.prefect_flow_run_id or '-'})",
        f"  parent  {r.parent_model}" if r.parent_model else None,
        f"manifest  {man.digest}  ({man.strategy}) at {man.uri}",
        f"  warning: the manifest.json at {man.uri} no longer carries digest {man.digest}: it was rewritten after "
        "training, so it is not the manifest this model was trained on"
        if man.matches_file is False
        else None,
    ]
    for dataset, source in ((d, chain.source), *chain.others):
        lines += _dataset_lines(dataset, source)
    return "\n".join(line for line in lines if line)


def _dataset_lines(d: DatasetLink, source: Mapping[str, Any] | None) -> list[str | None]:
    """A dataset version and the source it was ingested from, with the adapter that read it."""
    lines: list[str | None] = [
        f"dataset   {d.digest}  at {d.path}"
        + (f"  (created {d.created}, splits {_counts(d.splits or {})})" if d.created else ""),
        f"  warning: the dataset.json at {d.path} no longer carries digest {d.digest}: the folder was rewritten"
        if d.matches_file is False
        else None,
    ]
    if source:
        adapter = source.get("adapter") or {"name": "nih", "version": 1}  # versions from before adapters: NIH
        lines.append(
            f"source    {source['root']}  ({adapter['name']} adapter v{adapter['version']}, "
            f"label table {source['label_table']}, {source['edition']} edition)"
        )
    elif d.unreachable:
        lines.append(f"source    unknown: {d.unreachable}")
    return lines
