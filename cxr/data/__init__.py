"""The data stage: an NIH archive becomes a dataset version, its label statistics and manifests.

No torch and no MLflow here (a test checks it): ingest workers and statistics stay light.
"""
