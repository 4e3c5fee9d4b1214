"""The storage boundary: local files and a real S3 server (SeaweedFS) on 127.0.0.1."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from cxr import storage, storage_cas
from cxr.storage import StorageUnavailableError, UnsafePathError


def test_local_write_is_atomic_and_leaves_no_temporary_files(tmp_path):
    target = str(tmp_path / "a" / "b" / "file.bin")
    storage.write_bytes(target, b"old")
    storage.write_bytes(target, b"new", durable=True)
    assert storage.read_bytes(target) == b"new"
    assert os.listdir(tmp_path / "a" / "b") == ["file.bin"]


def test_listing_a_missing_folder_is_empty_and_reading_a_missing_file_raises(tmp_path):
    assert storage.list_files(str(tmp_path / "nope")) == []
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(str(tmp_path / "nope.txt"))


@pytest.mark.parametrize(
    "bad", ["../x.png", "a/../../x.png", "/etc/passwd", "a\\b.png", "", "a//b", "./x", "C:x", "a\x00b"]
)
def test_safe_join_refuses_paths_that_leave_the_root(bad):
    with pytest.raises(UnsafePathError):
        storage.safe_join("/data/root", bad)


def test_safe_join_keeps_nested_relative_paths():
    assert storage.safe_join("/data/root", "images_001/images/a.png") == "/data/root/images_001/images/a.png"
    assert storage.safe_join("s3://bucket/root/", "images/a.png") == "s3://bucket/root/images/a.png"


def _parquet_and_png() -> tuple[pa.Table, bytes]:
    table = pa.table({"image_id": ["a.png", "b.png"], "age": pa.array([40, 50], pa.int16()), "labels": [["Mass"], []]})
    buf = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64).astype(np.uint8)).save(buf, format="PNG")
    return table, buf.getvalue()


@pytest.mark.s3
def test_parquet_and_png_round_trip_through_s3(s3_bucket):
    table, png = _parquet_and_png()
    storage.write_parquet(table, f"{s3_bucket}/v1/metadata.parquet")
    storage.write_bytes(f"{s3_bucket}/v1/images/a.png", png)
    assert storage.read_parquet(f"{s3_bucket}/v1/metadata.parquet").equals(table)
    back = storage.read_bytes(f"{s3_bucket}/v1/images/a.png")
    assert back == png
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(back))), np.asarray(Image.open(io.BytesIO(png))))
    assert storage.list_files(f"{s3_bucket}/v1") == [f"{s3_bucket}/v1/metadata.parquet"]
    assert storage.list_files(f"{s3_bucket}/v1", recursive=True) == [
        f"{s3_bucket}/v1/images/a.png",
        f"{s3_bucket}/v1/metadata.parquet",
    ]
    assert storage.list_dirs(s3_bucket) == [f"{s3_bucket}/v1"]
    assert storage.size(f"{s3_bucket}/v1/images/a.png") == len(png)


@pytest.mark.s3
def test_s3_overwrite_replaces_the_whole_object(s3_bucket):
    storage.write_bytes(f"{s3_bucket}/LATEST", b"a" * 100_000)
    storage.write_bytes(f"{s3_bucket}/LATEST", b"b")
    assert storage.read_bytes(f"{s3_bucket}/LATEST") == b"b"


@pytest.mark.s3
def test_s3_missing_key_and_missing_bucket_raise_file_not_found(s3_bucket):
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"{s3_bucket}/nothing-here")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("s3://no-such-bucket-cxr/x")


@pytest.mark.s3
def test_s3_wrong_secret_is_a_permission_error(s3_bucket, monkeypatch, reliability_record):
    storage.write_bytes(f"{s3_bucket}/x", b"1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(PermissionError) as err:
        storage.read_bytes(f"{s3_bucket}/x")
    assert "not-the-secret" not in str(err.value)
    reliability_record.record(
        "dataset store", "a wrong S3 secret key", "PermissionError; the wrong secret does not appear in the error"
    )


@pytest.mark.s3
def test_an_unreachable_endpoint_is_retried_then_reported(s3_server, monkeypatch, reliability_record):
    from cxr.services.s3server import free_port_pairs

    [port] = free_port_pairs(1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("CXR_STORAGE_RETRIES", "2")
    with pytest.raises(StorageUnavailableError, match="after 3 attempts") as err:
        storage.read_bytes("s3://any-bucket/x")
    assert err.value.__cause__ is not None
    reliability_record.record(
        "dataset store",
        "an S3 endpoint that does not answer",
        "retried with backoff, then StorageUnavailableError naming the URL",
    )


def test_backoff_schedule_follows_the_environment(monkeypatch):
    monkeypatch.setenv("CXR_STORAGE_RETRIES", "3")
    assert storage.backoff_schedule() == (0.5, 1.0, 2.0)
    monkeypatch.setenv("CXR_STORAGE_RETRIES", "x")
    with pytest.raises(ValueError, match="CXR_STORAGE_RETRIES"):
        storage.backoff_schedule()


@pytest.mark.s3
def test_copy_within_s3_and_from_s3_to_disk(s3_bucket, tmp_path):
    storage.write_bytes(f"{s3_bucket}/a/x.npy", b"shard bytes")
    storage.copy(f"{s3_bucket}/a/x.npy", f"{s3_bucket}/b/x.npy")
    storage.copy(f"{s3_bucket}/a/x.npy", str(tmp_path / "x.npy"))
    assert storage.read_bytes(f"{s3_bucket}/b/x.npy") == (tmp_path / "x.npy").read_bytes() == b"shard bytes"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store_root(request, tmp_path):
    return str(tmp_path) if request.param == "local" else f"{request.getfixturevalue('s3_bucket')}/root"


def test_compare_and_swap_writes_refuse_a_stale_version_and_one_of_racing_creators_wins(store_root):
    from concurrent.futures import ThreadPoolExecutor

    url = storage.join(store_root, "LATEST")
    assert storage_cas.read_versioned(url) is None
    first = storage_cas.create_exclusive(url, b"a")
    assert first and storage_cas.create_exclusive(url, b"b") is None
    assert storage_cas.read_versioned(url) == storage_cas.Versioned(b"a", first)
    second = storage_cas.replace_if(url, b"c", first)
    assert (
        second and storage_cas.replace_if(url, b"d", first) is None and storage_cas.replace_if(url, b"e", None) is None
    )
    assert storage.read_bytes(url) == b"c"
    assert not storage_cas.remove_if(url, first) and storage_cas.remove_if(url, second) and not storage.exists(url)

    race = storage.join(store_root, "race")
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: storage_cas.create_exclusive(race, str(i).encode() * 1000), range(8)))
    assert sum(w is not None for w in won) == 1
    token = next(w for w in won if w)
    with ThreadPoolExecutor(8) as pool:
        swapped = list(pool.map(lambda i: storage_cas.replace_if(race, str(i).encode(), token), range(8)))
    assert sum(s is not None for s in swapped) == 1
