"""``cxr lineage MODEL_URI``: what made a model, from the registry back to the source files.

model version -> MLflow run -> manifest (digest, strategy) -> dataset version (digest, folder) -> source
archive (label table, images), read from the run's tags and the dataset's ``dataset.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cxr import storage
from cxr.data.accounting import Accounting
from cxr.data.manifest import read_manifest_info
from cxr.data.version import open_version
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


@dataclass(frozen=True)
class Lineage:
    model: ModelLink
    run: RunLink
    manifest: ManifestLink
    dataset: DatasetLink
    source: Mapping[str, str | None] | None  # root, label table, edition, box list, split lists


def lineage(model_uri: str, uri: str | None = None) -> Lineage:
    """The chain behind an MLflow model URI (``models:/NAME@ALIAS``, ``models:/NAME/V``, ``runs:/ID``)."""
    mlflow_client = client(uri)
    run_id, name, version = resolve_run(model_uri, uri)
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
    dataset, source = _dataset(run_tags.get(tags.DATASET_ROOT), run_tags.get(tags.DATASET_DIGEST))
    return Lineage(model, run_link, manifest, dataset, source)


def _dataset(root: str | None, digest: str | None) -> tuple[DatasetLink, Mapping[str, str | None] | None]:
    if not (root and digest):
        return DatasetLink(digest, None), None
    path = storage.join(root, digest)
    try:
        version = open_version(path)
    except (FileNotFoundError, OSError, ValueError) as err:
        return DatasetLink(digest, path, unreachable=str(err)), None
    info = version.info
    return DatasetLink(digest, path, info["created"], info["splits"], version.accounting), info["source"]


def format_chain(chain: Lineage) -> str:
    """The chain as indented text, one link a line."""
    m, r, man, d = chain.model, chain.run, chain.manifest, chain.dataset
    model = f"model     {m.uri}"
    if m.name:
        model += f"  ({m.name} version {m.version}, aliases: {', '.join(m.aliases) or 'none'})"
    lines = [
        model,
        f"  gate    {m.gate}: {m.gate_reasons}" if m.gate else None,
        f"run       {r.id}  (code {r.code_version}, val mean AUROC {r.val_mean_auroc}, "
        f"Prefect flow run {r.prefect_flow_run_id or '-'})",
        f"  parent  {r.parent_model}" if r.parent_model else None,
        f"manifest  {man.digest}  ({man.strategy}) at {man.uri}",
        f"dataset   {d.digest}  at {d.path}"
        + (f"  (created {d.created}, splits {dict(d.splits or {})})" if d.created else ""),
    ]
    if chain.source:
        s = chain.source
        lines.append(f"source    {s['root']}  (label table {s['label_table']}, {s['edition']} edition)")
    elif d.unreachable:
        lines.append(f"source    unknown: {d.unreachable}")
    return "\n".join(line for line in lines if line)
