"""Tracking as a plug-in (MLflow): the training loop's logger interface, runs, tags, registry, lineage."""
