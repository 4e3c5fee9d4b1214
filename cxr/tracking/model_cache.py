"""The ``model.pt`` bundle behind an MLflow model URI, fetched without MLflow's client where it can be, and kept
in a local cache by registered version.

Importing MLflow's client costs about 1.6 s here, more than the rest of ``cxr predict``. Against a tracking
server (``http(s)://``) the URI is resolved with MLflow's REST API (one GET for an alias or a version, one for
the run's artifact location) and the bundle is read from the server's artifact proxy (``mlflow-artifacts:``) or
straight from its store (``s3://``, a local folder). The local SQLite store (``cxr demo``'s) is read directly,
read-only (:mod:`cxr.tracking.sqlite_store`). Logged model ids (``models:/m-ID``), other stores and anything
those readers do not find go through MLflow's client (:func:`cxr.tracking.registry.download_run_bundle`).

A registered version never changes (a new model is a new version) and points at the run that logged it; a
run's bundle never changes either. So the URI is resolved to its run on every call (an alias moves; one small
REST call), and the bundle is kept by run in ``CXR_CACHE/models/runs/<run id>/model.pt``, written atomically,
and read from there next time: a version is downloaded once. Credentials for the REST calls come from the
environment as MLflow reads them (``MLFLOW_TRACKING_TOKEN``, or ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD``, or user info in the URI); they never enter a cache path or a message.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from cxr import storage
from cxr.redact import redact
from cxr.tracking import sqlite_store
from cxr.tracking.model_uri import BUNDLE_ARTIFACT, parse

ATTEMPTS = 3  # REST calls: a connection error or a 5xx is tried again after 0.5 s, then 1 s
TIMEOUT_S = 10.0  # each REST call, as cxr.offline sets MLFLOW_HTTP_REQUEST_TIMEOUT for MLflow's client
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def cache_dir(run_id: str) -> Path:
    """Where the bundle a run logged is kept. Run ids are unique (UUIDs), unlike a version number or a server's
    address: a tracking store made afresh at the same address numbers its versions from 1 again."""
    from cxr.learn.shards import cache_root

    return cache_root() / "models" / "runs" / _SAFE.sub("_", run_id)


def resolve(model_uri: str, tracking: str) -> str:
    """The run behind ``model_uri``: by MLflow's REST API on a tracking server, from the local SQLite store's
    tables, else by MLflow's client."""
    ref = parse(model_uri)
    if ref.kind == "run":
        return ref.name
    if ref.kind == "logged" or not tracking.startswith(("http://", "https://")):
        found_here = sqlite_store.run_of(tracking, ref)  # the local SQLite store, read directly
        if found_here:
            return found_here
        from cxr.tracking.registry import resolve_run

        return resolve_run(model_uri, tracking)[0]
    if ref.kind == "alias":
        found = _Rest(tracking).get("registered-models/alias", {"name": ref.name, "alias": ref.detail}, model_uri)
    else:
        found = _Rest(tracking).get("model-versions/get", {"name": ref.name, "version": ref.detail}, model_uri)
    return str(found["model_version"]["run_id"])


def bundle_bytes(model_uri: str, tracking: str | None = None) -> bytes:
    """The bundle ``model_uri`` names: resolved to its run (it may have moved), then from the cache, or fetched
    into it (through the server's REST API, or MLflow's client for other tracking URIs)."""
    from cxr.tracking.mlflow_run import tracking_uri

    tracking = tracking or tracking_uri()
    run_id = resolve(model_uri, tracking)
    cached = cache_dir(run_id) / "model.pt"
    if cached.is_file():
        return cached.read_bytes()
    if tracking.startswith(("http://", "https://")):
        rest = _Rest(tracking)
        artifact_uri = rest.get("runs/get", {"run_id": run_id}, model_uri)["run"]["info"]["artifact_uri"]
        data = rest.artifact(artifact_uri, BUNDLE_ARTIFACT, model_uri)
    elif location := sqlite_store.artifact_location(tracking, run_id):
        data = storage.read_bytes(storage.join(location, BUNDLE_ARTIFACT))
    else:
        from cxr.tracking.registry import download_run_bundle

        data = download_run_bundle(run_id, tracking)
    cached.parent.mkdir(parents=True, exist_ok=True)
    storage.write_bytes(str(cached), data)
    return data


def forget(model_uri: str, tracking: str | None = None) -> None:
    """Drop a cached bundle that did not load (a file damaged on disk): the next call fetches it again."""
    from cxr.tracking.mlflow_run import tracking_uri

    (cache_dir(resolve(model_uri, tracking or tracking_uri())) / "model.pt").unlink(missing_ok=True)


class _Rest:
    """MLflow's REST API on a tracking server, with the credentials MLflow's client would send."""

    def __init__(self, tracking: str) -> None:
        parts = urllib.parse.urlsplit(tracking)
        self.base = urllib.parse.urlunsplit(
            (parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""), parts.path.rstrip("/"), "", "")
        )
        self.headers = {"User-Agent": "cxr"}
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        user = os.environ.get("MLFLOW_TRACKING_USERNAME") or urllib.parse.unquote(parts.username or "")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or urllib.parse.unquote(parts.password or "")
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        elif user:
            self.headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.context = None
        if parts.scheme == "https":
            insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
            cert = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
            self.context = ssl._create_unverified_context() if insecure else ssl.create_default_context(cafile=cert)

    def _open(self, url: str, model_uri: str) -> bytes:
        request = urllib.request.Request(url, headers=self.headers)
        for attempt in range(ATTEMPTS):
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=self.context) as response:
                    return response.read()
            except urllib.error.HTTPError as err:
                if err.code < 500 or attempt == ATTEMPTS - 1:
                    raise ValueError(f"MLflow: {model_uri}: {_message(err)}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == ATTEMPTS - 1:
                    reason = getattr(err, "reason", err)
                    raise ValueError(f"MLflow: {model_uri}: no answer from {redact(self.base)} ({reason})") from None
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def get(self, endpoint: str, query: dict[str, str], model_uri: str) -> dict:
        url = f"{self.base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
        return json.loads(self._open(url, model_uri))

    def artifact(self, artifact_uri: str, path: str, model_uri: str) -> bytes:
        """A run's artifact file: through the server's proxy, or from the store the run's artifacts are in."""
        if artifact_uri.startswith("mlflow-artifacts:"):
            located = urllib.parse.urlsplit(artifact_uri).path.lstrip("/")
            quoted = urllib.parse.quote(f"{located}/{path}")
            return self._open(f"{self.base}/api/2.0/mlflow-artifacts/artifacts/{quoted}", model_uri)
        location = artifact_uri.removeprefix("file://")
        return storage.read_bytes(storage.join(location, path))


def _message(err: urllib.error.HTTPError) -> str:
    """MLflow's own words for a refused call (``RESOURCE_DOES_NOT_EXIST: ...``), else the HTTP status."""
    try:
        body = json.loads(err.read())
        return f"{body.get('error_code', err.code)}: {body.get('message', '')}".strip()
    except (ValueError, OSError):
        return f"HTTP {err.code} {err.reason}"
