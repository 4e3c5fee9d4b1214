"""Register a trained model as ``challenger`` and gate ``champion`` on evidence, failing closed.

1. The run's model is registered once: a retry finds the version already made for the run (tag
   :data:`cxr.tracking.tags.RUN_ID`) instead of adding another.
2. The champion is read from the registered model's aliases. No ``champion`` alias: the first model is
   promoted. Any error while reading or loading the champion (a server error, a timeout, its run
   deleted, its bundle missing) fails *closed*: not promoted, the reason recorded, and
   ``Registration.failed_closed`` set so a scheduler retries rather than caches the answer.
3. Both models score the challenger's validation images (the dataset version it trained on), and
   :func:`cxr.learn.compare.compare` tests the difference with a paired bootstrap over patients;
   :func:`cxr.learn.compare.decide` applies the rule.
4. ``champion`` moves only if it still names the version the gate compared against (read again just
   before the write; MLflow has no compare-and-swap, so a window of one round trip remains).
5. The decision, its numbers and reasons go to tags on the version and the run, and to ``gate.json``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr.learn.compare import GateRule, PairedComparison, compare, decide
from cxr.records import to_plain
from cxr.redact import redact
from cxr.tracking import tags
from cxr.tracking.mlflow_run import client, tracking_uri

CHALLENGER, CHAMPION = "challenger", "champion"


GATE_FILE = "gate.json"  # the decision and its evidence, an artifact of the run judged


@dataclass(frozen=True)
class Registration:
    """A registered model version and the gate's decision about it."""

    name: str
    version: str
    promoted: bool
    reasons: tuple[str, ...]
    champion_version: str | None = None  # the version compared against (None: there was none)
    failed_closed: bool = False  # the champion could not be read: not promoted, and worth a retry

    @property
    def verdict(self) -> str:
        return "promoted to champion" if self.promoted else "stays challenger"


@dataclass(frozen=True)
class GateRecord:
    """``gate.json``: the decision with everything it rests on."""

    model: str
    version: str
    run_id: str
    dataset: str
    promoted: bool
    reasons: tuple[str, ...]
    rule: GateRule
    champion_version: str | None
    champion_run_id: str | None
    comparison: PairedComparison | None
    failed_closed: bool


class _ChampionUnreadable(Exception):
    """Reading or loading the champion failed; the gate fails closed."""


def _version_of_run(mlflow_client: Any, name: str, run_id: str) -> str | None:
    """The version already registered for ``run_id`` under ``name`` (a retried registration), if any."""
    found = mlflow_client.search_model_versions(f"name = '{name}'")
    mine = [v for v in found if v.tags.get(tags.RUN_ID) == run_id]
    return str(min(int(v.version) for v in mine)) if mine else None


def _register(mlflow_client: Any, uri: str, run_id: str, model_uri: str, name: str) -> str:
    import mlflow

    existing = _version_of_run(mlflow_client, name, run_id)
    if existing is not None:
        return existing
    mlflow.set_tracking_uri(uri)
    return str(mlflow.register_model(model_uri, name, tags={tags.RUN_ID: run_id}).version)


def _champion(mlflow_client: Any, name: str) -> tuple[str | None, str | None]:
    """(version, run id) of the current champion; (None, None) when no champion alias is set."""
    try:
        aliases = mlflow_client.get_registered_model(name).aliases
        version = aliases.get(CHAMPION)
        if version is None:
            return None, None
        model_version = mlflow_client.get_model_version(name, str(version))
        run_id = model_version.tags.get(tags.RUN_ID) or model_version.run_id
        run = mlflow_client.get_run(run_id)
        if run.info.lifecycle_stage != "active":
            raise _ChampionUnreadable(f"the champion's run {run_id} is {run.info.lifecycle_stage}")
        return str(version), run_id
    except _ChampionUnreadable:
        raise
    except Exception as err:
        raise _ChampionUnreadable(f"{type(err).__name__}: {redact(str(err))[:300]}") from err


def _model_of_run(run_id: str, uri: str, device: Any) -> tuple[Any, Any]:
    from cxr.learn.checkpoint import ModelBundle, from_bytes
    from cxr.learn.inference import bundle_model
    from cxr.tracking.registry import download_bundle

    source = f"runs:/{run_id}/model"
    bundle = ModelBundle.from_dict(from_bytes(download_bundle(source, uri)), source)
    return bundle_model(bundle, device, source), bundle


def _compare_on_val(
    challenger_run: str, champion_run: str, dataset: str, rule: GateRule, uri: str
) -> PairedComparison | None:
    """Both models on the challenger's validation images, compared; None when there are none."""
    from cxr.data.version import open_version
    from cxr.learn.inference import predict_rows, shard_store, single_process
    from cxr.learn.shards import split_rows

    info = single_process("auto")
    version = open_version(dataset)
    rows = split_rows(version.metadata(), "val", expand_repeats=False)
    if len(rows) == 0:
        return None
    challenger, challenger_bundle = _model_of_run(challenger_run, uri, info.device)
    try:
        champion, champion_bundle = _model_of_run(champion_run, uri, info.device)
    except Exception as err:
        raise _ChampionUnreadable(
            f"its model could not be loaded: {type(err).__name__}: {redact(str(err))[:300]}"
        ) from err
    probs = []
    for model, bundle in ((challenger, challenger_bundle), (champion, champion_bundle)):
        p, labels = predict_rows(model, shard_store(version, bundle), rows, bundle.image_size, info)
        probs.append(p)
    return compare(labels, probs[0], probs[1], rows.patient_ids, rule)


def register_and_gate(
    run_id: str, model_uri: str, name: str, dataset: str, rule: GateRule | None = None, uri: str | None = None
) -> Registration:
    """Register ``model_uri`` (logged by ``run_id``) under ``name`` as ``challenger``, and promote it to
    ``champion`` if the gate passes on the validation split of ``dataset`` (the version it trained on)."""
    uri, rule = uri or tracking_uri(), rule or GateRule()
    mlflow_client = client(uri)
    version = _register(mlflow_client, uri, run_id, model_uri, name)
    champion_version = champion_run = comparison = None
    failed_closed = False
    try:
        champion_version, champion_run = _champion(mlflow_client, name)
        if champion_version is None:
            promoted, reasons = True, ("no champion yet",)
        elif champion_version == version:
            promoted, reasons = True, ("already the champion",)
        else:
            comparison = _compare_on_val(run_id, champion_run, dataset, rule, uri)  # type: ignore[arg-type]
            if comparison is None:
                promoted, reasons = False, (f"dataset {dataset} has no validation images to compare on",)
            else:
                verdict = decide(comparison, rule)
                promoted, reasons = verdict.promoted, verdict.reasons
    except _ChampionUnreadable as err:
        promoted, failed_closed = False, True
        reasons = (f"not promoted: the champion could not be read ({err}); the gate fails closed",)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version)
    if promoted and champion_version != version:
        promoted, reasons = promote_if_unchanged(mlflow_client, name, version, champion_version, reasons)
    registration = Registration(name, version, promoted, reasons, champion_version, failed_closed)
    record = GateRecord(
        name,
        version,
        run_id,
        dataset,
        promoted,
        reasons,
        rule,
        champion_version,
        champion_run,
        comparison,
        failed_closed,
    )
    _record(mlflow_client, run_id, registration, record)
    return registration


def promote_if_unchanged(
    mlflow_client: Any, name: str, version: str, compared: str | None, reasons: tuple[str, ...]
) -> tuple[bool, tuple[str, ...]]:
    """Set ``champion`` to ``version`` only if it still names ``compared`` (the version the gate compared)."""
    try:
        now = mlflow_client.get_registered_model(name).aliases.get(CHAMPION)
    except Exception as err:  # noqa: BLE001 - cannot confirm: fail closed
        return False, (*reasons, f"not promoted: the champion could not be read again ({type(err).__name__})")
    now = None if now is None else str(now)
    if now != compared:
        return False, (*reasons, f"not promoted: the champion changed from {compared} to {now} while the gate ran")
    mlflow_client.set_registered_model_alias(name, CHAMPION, version)
    return True, reasons


def _record(mlflow_client: Any, run_id: str, registration: Registration, record: GateRecord) -> None:
    name, version = registration.name, registration.version
    values = {
        tags.GATE_DECISION: registration.verdict,
        tags.GATE_REASONS: " | ".join(registration.reasons)[:4900],
        tags.GATE_CHAMPION: registration.champion_version or "none",
    }
    comparison = record.comparison
    if comparison is not None and comparison.mean_gain is not None:
        values[tags.GATE_MEAN_GAIN] = f"{comparison.mean_gain:.4f}"
        values[tags.GATE_MEAN_GAIN_LOWER] = f"{comparison.mean_gain_lower:.4f}"
    for key, value in values.items():
        mlflow_client.set_model_version_tag(name, version, key, value)
        mlflow_client.set_tag(run_id, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / GATE_FILE
        path.write_text(json.dumps(to_plain(record), indent=2))
        mlflow_client.log_artifact(run_id, str(path))
