"""Reading shards at scale: a bounded number of open memory maps, and S3 shards fetched once per node."""

from __future__ import annotations

import http.client
import os
import resource
import subprocess
import sys
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from cxr.data.ingest import ingest
from cxr.data.integrity import hash_file
from cxr.data.manifest import ManifestConfig, build_manifest, write_manifest
from cxr.data.plan import IngestOptions
from cxr.data.synth import SynthConfig, synthesize
from cxr.data.version import open_version
from cxr.learn.shards import ShardStore, gather, split_rows

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def test_a_store_keeps_at_most_max_open_shards_mapped_and_reads_them_all(tmp_path):
    hashes = {}
    for i in range(10):
        (tmp_path / "v" / "shards" / "8").mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "v" / "shards" / "8" / f"shard-{i:05d}.npy", np.full((2, 8, 8), i, np.uint8))
        hashes[f"shard-{i:05d}"] = hash_file(str(tmp_path / "v" / "shards" / "8" / f"shard-{i:05d}.npy"))
    store = ShardStore(str(tmp_path / "v"), "d", 8, max_open=3, hashes=hashes)
    for i in list(range(10)) * 2:
        assert store.array(f"shard-{i:05d}")[1, 0, 0] == i
        assert store.open_shards <= 3


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory) -> Path:
    """A dataset of 1,700 images with one shard each (about 1,360 in train and val), and a manifest of it."""
    root = tmp_path_factory.mktemp("many")
    synthesize(SynthConfig(out=str(root / "src"), n_images=1700, size=64, seed=3, workers=2))
    summary = ingest(str(root / "src"), str(root / "ds"), IngestOptions(sizes=(16,), part_images=1))
    version = open_version(summary.path)
    rows = version.metadata(columns=["shard", "split"]).to_pylist()
    assert len({r["shard"] for r in rows if r["split"] in ("train", "val")}) > 1100  # what one training opens
    write_manifest(build_manifest(version, ManifestConfig("none")), str(root / "m"))
    return root


def _at_most_1024_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def test_training_and_evaluation_over_1100_shards_fit_in_1024_file_descriptors(many_shards):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    limited = {"capture_output": True, "text": True, "env": env, "timeout": 600, "preexec_fn": _at_most_1024_files}
    run = ["--output-dir", str(many_shards / "run"), "--model", "small", "--epochs", "1", "--no-tracking"]
    trained = subprocess.run(
        [sys.executable, "-m", "cxr.learn.train", "--manifest", str(many_shards / "m"), *run], **limited
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    model, dataset = str(many_shards / "run" / "model.pt"), str(many_shards / "ds")
    evaluate = ["evaluate", "--model", model, "--dataset", dataset, "--bootstrap", "0", "--json"]
    scored = subprocess.run([sys.executable, "-m", "cxr.cli", *evaluate], **limited)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert '"split": "test"' in scored.stdout


class CountingProxy(ThreadingHTTPServer):
    """A transparent HTTP proxy in front of the real S3 server that counts the GETs of each object."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.gets: Counter[str] = Counter()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Forward)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(BaseHTTPRequestHandler):
    server: CountingProxy

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.command == "GET":
            with self.server.lock:
                self.server.gets[urllib.parse.urlsplit(self.path).path] += 1
        upstream = http.client.HTTPConnection(self.server.upstream.hostname, self.server.upstream.port, timeout=60)
        # the Host header is forwarded as the client signed it (SigV4 covers it)
        upstream.request(self.command, self.path, body, dict(self.headers.items()))
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy(s3_server: str) -> Iterator[CountingProxy]:
    server = CountingProxy(s3_server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.s3
def test_two_ranks_on_one_node_fetch_each_s3_shard_once(s3_bucket, proxy, tmp_path, monkeypatch):
    synthesize(SynthConfig(out=str(tmp_path / "src"), n_images=200, size=64, seed=4))
    summary = ingest(str(tmp_path / "src"), f"{s3_bucket}/ds", IngestOptions(sizes=(16,), part_images=8))
    version = open_version(summary.path)
    write_manifest(build_manifest(version, ManifestConfig("none")), str(tmp_path / "m"))
    metadata = version.metadata(columns=["shard", "split"]).to_pylist()
    shards = {r["shard"] for r in metadata if r["split"] in ("train", "val")}  # what training reads
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AWS_ENDPOINT_URL": proxy.endpoint}
    env["CXR_CACHE"] = str(tmp_path / "cache")
    train = ["-m", "cxr.learn.train", "--manifest", str(tmp_path / "m"), "--output-dir", str(tmp_path / "run")]
    args = ["--standalone", "--nproc-per-node=2", *train, "--model", "small", "--epochs", "1", "--no-tracking"]
    result = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    shard_gets = {path: n for path, n in proxy.gets.items() if "/shards/16/" in path}
    assert len(shard_gets) == len(shards) > 10  # every shard was read through the proxy ...
    assert set(shard_gets.values()) == {1}  # ... once, for both ranks
    # a reader here, through the proxy, finds every shard in the node's cache: no GET more
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setenv("CXR_CACHE", str(tmp_path / "cache"))
    rows = split_rows(version.metadata(), "train", expand_repeats=False)
    images = gather(ShardStore(summary.path, summary.digest, 16), rows, np.arange(len(rows)))
    assert images.shape == (len(rows), 16, 16)
    assert sum(n for path, n in proxy.gets.items() if "/shards/16/" in path) == len(shards)
