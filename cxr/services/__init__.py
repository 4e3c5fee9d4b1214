"""Local servers (S3, MLflow, Prefect) for the tests and `cxr stack`; the library never imports these."""
