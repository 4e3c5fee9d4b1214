"""``cxr lineage MODEL_URI``: what made a model, from the registry back to the source files.

model version -> MLflow run -> manifest (digest, strategy) -> dataset version (digest, folder) -> source
archive (label table, images), read from the run's tags and the dataset's ``dataset.json``.
"""

from __future__ import annotations

import json
from typing import Any

from cxr import storage
from cxr.dataset import open_version


def lineage(model_uri: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """The chain behind an MLflow model URI (``models:/NAME@ALIAS``, ``models:/NAME/V``, ``runs:/ID``)."""
    from mlflow import MlflowClient

    from cxr.registry import resolve_run
    from cxr.tracking import tracking_uri as default_uri

    client = MlflowClient(tracking_uri or default_uri())
    run_id, name, version = resolve_run(model_uri, tracking_uri)
    run = client.get_run(run_id)
    tags = run.data.tags
    chain: dict[str, Any] = {"model": {"uri": model_uri, "name": name, "version": version}}
    if name and version:
        mv = client.get_model_version(name, version)
        chain["model"].update({"aliases": list(mv.aliases), "gate": mv.tags.get("cxr.gate.decision"),
                               "gate_reasons": mv.tags.get("cxr.gate.reasons")})  # fmt: skip
    chain["run"] = {"id": run_id, "experiment_id": run.info.experiment_id, "status": run.info.status,
                    "code_version": tags.get("cxr.code_version"), "prefect_flow_run_id": tags.get("cxr.prefect_flow_run_id"),
                    "parent_model": tags.get("cxr.parent_model"), "val_mean_auroc": run.data.metrics.get("final_val_mean_auroc")}  # fmt: skip
    chain["manifest"] = {"digest": tags.get("cxr.manifest_digest"), "strategy": tags.get("cxr.manifest_strategy"),
                         "uri": tags.get("cxr.manifest_uri")}  # fmt: skip
    root, digest = tags.get("cxr.dataset_root"), tags.get("cxr.dataset_digest")
    chain["dataset"] = {"digest": digest, "path": storage.join(root, digest) if root and digest else None}
    if root and digest:
        try:
            info = open_version(storage.join(root, digest)).info
            chain["dataset"].update({"created": info["created"], "splits": info["splits"], "accounting": info["accounting"]})
            chain["source"] = info["source"]
        except (FileNotFoundError, OSError, ValueError) as err:
            chain["dataset"]["unreachable"] = str(err)
    manifest_uri = chain["manifest"]["uri"]
    if manifest_uri:
        try:
            recorded = json.loads(storage.read_text(storage.join(manifest_uri, "manifest.json")))["digest"]
            chain["manifest"]["matches_file"] = recorded == chain["manifest"]["digest"]
        except (FileNotFoundError, OSError, ValueError, KeyError):
            chain["manifest"]["matches_file"] = None
    return chain


def format_chain(chain: dict[str, Any]) -> str:
    """The chain as indented text, one link a line."""
    m, r, man, d = chain["model"], chain["run"], chain["manifest"], chain["dataset"]
    lines = [
        f"model     {m['uri']}" + (f"  ({m['name']} version {m['version']}, aliases: {', '.join(m.get('aliases') or []) or 'none'})" if m.get("name") else ""),
        f"  gate    {m.get('gate')}: {m.get('gate_reasons')}" if m.get("gate") else None,
        f"run       {r['id']}  (code {r['code_version']}, val mean AUROC {r['val_mean_auroc']}, Prefect flow run {r['prefect_flow_run_id'] or '-'})",
        f"  parent  {r['parent_model']}" if r.get("parent_model") else None,
        f"manifest  {man['digest']}  ({man['strategy']}) at {man['uri']}",
        f"dataset   {d['digest']}  at {d['path']}" + (f"  (created {d['created']}, splits {d['splits']})" if d.get("created") else ""),
    ]
    source = chain.get("source")
    if source:
        lines.append(f"source    {source['root']}  (label table {source['label_table']}, {source['edition']} edition)")
    elif d.get("unreachable"):
        lines.append(f"source    unknown: {d['unreachable']}")
    return "\n".join(line for line in lines if line)
