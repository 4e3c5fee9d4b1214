"""The MLflow tag names this project writes and reads: lineage on runs, the gate's decision on model
versions. Written here once; every module that sets or reads a tag uses these names.
"""

from __future__ import annotations

PREFIX = "cxr."

# lineage, on every training run
CODE_VERSION = PREFIX + "code_version"
DATASET_DIGEST = PREFIX + "dataset_digest"  # a mixed manifest's versions: their digests joined by "+"
DATASET_ROOT = PREFIX + "dataset_root"  # of the first version; a mixed manifest's are in DATASETS
DATASETS = PREFIX + "datasets"  # a mixed manifest: JSON list of {"digest", "root"}, one per version
MANIFEST_DIGEST = PREFIX + "manifest_digest"
MANIFEST_URI = PREFIX + "manifest_uri"
MANIFEST_STRATEGY = PREFIX + "manifest_strategy"
MODEL_NAME = PREFIX + "model_name"
PREFECT_FLOW_RUN_ID = PREFIX + "prefect_flow_run_id"
PARENT_MODEL = PREFIX + "parent_model"  # --init-from
SHIFTED_DATASET_DIGEST = PREFIX + "shifted_dataset_digest"  # the imbalance study's parent run

# the registry, on model versions (RUN_ID) and on versions and runs (the gate)
RUN_ID = PREFIX + "run_id"
GATE_DECISION = PREFIX + "gate.decision"
GATE_REASONS = PREFIX + "gate.reasons"
GATE_CHAMPION = PREFIX + "gate.champion_version"  # the version the gate compared against
GATE_MEAN_GAIN = PREFIX + "gate.mean_gain"  # challenger - champion, mean val AUROC on the same images
GATE_MEAN_GAIN_LOWER = PREFIX + "gate.mean_gain_lower"  # its one-sided lower bound at the gate's level

# MLflow's own: nests a run under another (the study's child runs)
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
