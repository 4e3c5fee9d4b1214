"""``cxr serve`` as a client meets it: one real server process on 127.0.0.1 for the whole file, sent good
images and every kind of bad upload, answering each with the right status and one JSON sentence, and still
answering the same after all of them; the same probabilities as ``cxr predict`` and as evaluation over the
shards of a dataset version; stopped by SIGTERM in seconds with one line.

The tests run in file order against the one server (pytest-xdist's ``loadfile`` keeps the file together):
the last one stops it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image
from scipy import ndimage

from cxr.data.ingest import ingest
from cxr.data.plan import IngestOptions
from cxr.data.synth import SynthConfig, synthesize
from cxr.findings import FINDINGS
from tests.bundles import untrained_bundle
from tests.test_dicom_decode import dicom

CXR = [sys.executable, "-m", "cxr.cli"]
MAX_BODY = 2 * 2**20  # the server's --max-body here: an oversize body is cheap to send
READY_S = 60.0
TOLERANCE = 1e-5


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def film(side: int, seed: int = 0) -> np.ndarray:
    """A smooth gray image (blurred noise), like a film and unlike flat blocks."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).random((side, side)), sigma=side / 16)
    return (255 * (noise - noise.min()) / (noise.max() - noise.min())).astype(np.uint8)


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` gray pixels (correct CRCs), with a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    ready_line: str
    stderr: list[str] = field(default_factory=list)


def start_server(*args: str) -> Server:
    """``cxr serve ARGS --port 0`` in its own process, once its ready line names the port it took."""
    process = subprocess.Popen(
        [*CXR, "serve", *args, "--port", "0", "--device", "cpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:  # stderr drained all along, so the server never blocks on a full pipe
        for line in process.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("serving "):
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(READY_S) or process.poll() is not None:
        process.kill()
        raise AssertionError(f"the server did not start: {''.join(lines)[-2000:]}")
    line = next(x for x in lines if x.startswith("serving "))
    url = line.split(" on ", 1)[1].split(" ", 1)[0]
    return Server(process, url, line.strip(), lines)


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory) -> Path:
    """An untrained ``small`` model at 32 px, made from 64 px shards, every threshold 0: all 14 findings localized."""
    return untrained_bundle(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def server(model_pt) -> Iterator[Server]:
    running = start_server("--model", str(model_pt), "--max-body", str(MAX_BODY))
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait(10)


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as session:
        yield session


@pytest.fixture(scope="module")
def image_1024() -> bytes:
    return png_bytes(film(1024))


def probabilities(result: dict) -> np.ndarray:
    return np.array([result["probabilities"][f] for f in FINDINGS])


# --- good images ---------------------------------------------------------------------------------------------


def test_a_png_gets_14_probabilities_and_each_finding_a_box_inside_its_own_frame(client, image_1024):
    answer = client.post("/predict", params={"name": "film.png"}, content=image_1024)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["image"] == "film.png" and result["size"] == [1024, 1024]
    assert list(result["probabilities"]) == list(FINDINGS)
    assert all(0 < p < 1 for p in result["probabilities"].values())
    assert [f["finding"] for f in result["findings"]] == list(FINDINGS)  # thresholds of 0: every finding
    for finding in result["findings"]:
        x, y, w, h = finding["box_px"]
        assert min(x, y) >= 0 and w > 0 and h > 0 and x + w <= 1024 and y + h <= 1024, finding
        assert all(0 <= v <= 1024 for v in finding["box_1024"])
        assert finding["extent_of"] == "image" and 0 < finding["heatmap_share"] <= 1
        assert "overlay_png" not in finding


def test_overlays_are_pngs_at_the_images_own_resolution(client):
    side = 512  # not the model's 32 px, nor the 1024 px frame
    answer = client.post("/predict", params={"overlays": "true"}, content=png_bytes(film(side, seed=1)))
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["image"] == "upload" and len(result["findings"]) == len(FINDINGS)
    overlay = Image.open(io.BytesIO(base64.b64decode(result["findings"][0]["overlay_png"])))
    assert overlay.format == "PNG" and overlay.width == side
    assert side < overlay.height < side + 100  # the image, under a title band


def test_a_dicom_of_the_same_pixels_gets_the_same_probabilities(client):
    pixels = film(256, seed=2)
    as_png = client.post("/predict", content=png_bytes(pixels))
    as_dicom = client.post("/predict", content=dicom(pixels, bits=8, WindowCenter=128, WindowWidth=256))
    assert as_png.status_code == as_dicom.status_code == 200, as_dicom.text
    assert as_dicom.json()["size"] == [256, 256]
    assert np.abs(probabilities(as_png.json()) - probabilities(as_dicom.json())).max() <= TOLERANCE


# --- bad uploads ---------------------------------------------------------------------------------------------


BAD_UPLOADS = {
    "a truncated PNG": (lambda: png_bytes(film(256))[:3000], ["unreadable_image"]),
    "a text file": (lambda: b"patient notes, not an image\n", ["unreadable_image", "not a PNG or JPEG or DICOM: text"]),
    "a PNG claiming 60000 x 60000 px": (
        lambda: png_claiming(60000, 60000),
        ["too_large", "3600000000 px claimed", "67108864 pixels"],
    ),
    "a PNG claiming 9000 x 9000 px": (lambda: png_claiming(9000, 9000), ["too_large", "9000 x 9000", "67108864"]),
}


@pytest.mark.parametrize("kind", list(BAD_UPLOADS))
def test_an_upload_that_is_no_usable_image_is_422_with_decodings_reason_and_answered_fast(
    client, kind, reliability_record
):
    make, words = BAD_UPLOADS[kind]
    start = time.perf_counter()
    answer = client.post("/predict", content=make())
    took = time.perf_counter() - start
    assert answer.status_code == 422 and set(answer.json()) == {"error"}, answer.text
    assert all(w in answer.json()["error"] for w in words), answer.text
    assert took < 5.0  # refused from the header, no pixel decoded
    reliability_record.record(
        "serving",
        f"{kind} sent to POST /predict",
        "422 with decoding's reason in one JSON sentence; the server goes on serving",
    )


def test_a_body_over_max_body_is_413_before_it_is_read_with_or_without_content_length(client, reliability_record):
    declared = client.post("/predict", content=b"\0" * (MAX_BODY + 1))

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        for _ in range(4 * MAX_BODY // 65536):
            yield b"\0" * 65536

    streamed = client.post("/predict", content=chunks())
    for answer in (declared, streamed):
        assert answer.status_code == 413, answer.text
        assert "--max-body" in answer.json()["error"] and str(MAX_BODY) in answer.json()["error"]
    assert str(MAX_BODY + 1) in declared.json()["error"]  # refused from the header
    reliability_record.record(
        "serving",
        "a body over --max-body, declared by Content-Length and chunked without one",
        "413 before the body is held: refused from the header, or as soon as the stream passes the limit",
    )


def test_an_empty_body_is_400(client):
    answer = client.post("/predict", content=b"")
    assert answer.status_code == 400 and "empty" in answer.json()["error"], answer.text


def test_an_unknown_path_or_method_or_parameter_is_json_naming_what_is_served(client):
    missing, wrong, misspelt = client.get("/nope"), client.get("/predict"), client.post("/predict?overlay=1")
    assert missing.status_code == 404 and "POST /predict" in missing.json()["error"], missing.text
    assert wrong.status_code == 405 and "use POST" in wrong.json()["error"], wrong.text
    assert misspelt.status_code == 400 and "'overlay'" in misspelt.json()["error"], misspelt.text


# --- batches -------------------------------------------------------------------------------------------------


def entry(name: str, data: bytes) -> dict[str, str]:
    return {"name": name, "data": base64.b64encode(data).decode()}


def test_a_batch_answers_each_image_in_order_a_prediction_or_its_error(client, reliability_record):
    good = png_bytes(film(256, seed=3))
    batch = {"images": [entry("good.png", good), entry("notes.txt", b"not an image\n"), entry("again.png", good)]}
    answer = client.post("/predict/batch", json=batch)
    assert answer.status_code == 200, answer.text
    first, bad, again = answer.json()["results"]
    assert first["image"] == "good.png" and len(first["probabilities"]) == len(FINDINGS)
    assert bad == {"image": "notes.txt", "error": "unreadable_image: not a PNG or JPEG or DICOM: text"}
    assert again["image"] == "again.png" and probabilities(again).tolist() == probabilities(first).tolist()
    single = client.post("/predict", content=good).json()
    assert np.abs(probabilities(single) - probabilities(first)).max() <= TOLERANCE  # batched as one alone
    reliability_record.record(
        "serving", "a batch holding one image that is not an image", "that entry is an error, the others are scored"
    )


@pytest.mark.parametrize(
    "body, words",
    [
        (b"{not json", ["not JSON"]),
        (b'{"pictures": []}', ["'images'"]),
        (b'{"images": []}', ["no image"]),
        (b'{"images": [{"name": "a.png"}]}', ["images[0]", "'data'"]),
        (b'{"images": [{"name": "a.png", "data": "not base64!"}]}', ["images[0] (a.png)", "base64"]),
    ],
)
def test_a_malformed_batch_is_400_naming_what_is_wrong(client, body, words):
    answer = client.post("/predict/batch", content=body)
    assert answer.status_code == 400 and all(w in answer.json()["error"] for w in words), answer.text


def test_a_batch_over_max_batch_is_413(client):
    answer = client.post("/predict/batch", json={"images": [entry(f"{k}.png", b"x") for k in range(65)]})
    assert answer.status_code == 413 and "--max-batch" in answer.json()["error"], answer.text


# --- after all of that ---------------------------------------------------------------------------------------


def test_after_every_bad_request_health_is_ok_and_an_image_scores_as_before(client, image_1024, model_pt):
    health = client.get("/health")
    assert health.status_code == 200, health.text
    described = health.json()
    assert described["status"] == "ok" and described["model"] == "small" and described["image_size"] == 32
    assert described["findings"] == list(FINDINGS) and described["model_uri"] == str(model_pt)
    assert described["thresholds"] == dict.fromkeys(FINDINGS, 0.0)
    assert described["limits"]["max_body_bytes"] == MAX_BODY and described["limits"]["max_pixels"] == 8192 * 8192
    first = client.post("/predict", content=image_1024).json()
    again = client.post("/predict", content=image_1024).json()
    assert probabilities(first).tolist() == probabilities(again).tolist()


def test_an_unexpected_failure_is_logged_once_and_answered_500_without_its_traceback(model_pt, caplog):
    """In this process (the app without uvicorn): scoring fails once with a bug; the next request scores."""
    import anyio

    from cxr.learn.predictor import Predictor
    from cxr.serving.app import build_app
    from cxr.serving.limits import ServeLimits
    from cxr.serving.scoring import Scorer

    predictor = Predictor.load(str(model_pt), "cpu")
    score, calls = predictor.score, []

    def failing_once(grays, names):
        calls.append(names)
        if len(calls) == 1:
            raise RuntimeError("a bug in scoring, with a secret detail")
        return score(grays, names)

    predictor.score = failing_once  # type: ignore[method-assign]
    image = png_bytes(film(128))
    transport = httpx.ASGITransport(app=build_app(Scorer(lambda: predictor), str(model_pt), ServeLimits()))

    async def twice() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as session:
            return await session.post("/predict", content=image), await session.post("/predict", content=image)

    with caplog.at_level(logging.ERROR, "cxr.serving"):
        failed, scored = anyio.run(twice)
    assert failed.status_code == 500 and set(failed.json()) == {"error"}, failed.text
    assert "secret" not in failed.text and "Traceback" not in failed.text
    logged = [r for r in caplog.records if r.name == "cxr.serving"]
    assert len(logged) == 1 and logged[0].exc_info and "secret" in str(logged[0].exc_info[1])
    assert scored.status_code == 200 and len(scored.json()["probabilities"]) == len(FINDINGS)


def test_it_listens_on_127_0_0_1_only_by_default(server):
    assert server.url.startswith("http://127.0.0.1:") and server.ready_line.endswith(
        "(POST /predict, POST /predict/batch, GET /health)"
    )
    port = int(server.url.rsplit(":", 1)[1])
    listening = [
        c.laddr
        for c in psutil.Process(server.process.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening == [("127.0.0.1", port)]


# --- the same numbers everywhere -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic NIH-layout source of 128 px films and its version with 64 px shards (the model's)."""
    root = tmp_path_factory.mktemp("version")
    synthesize(SynthConfig(out=str(root / "src"), n_images=12, size=128, seed=0))
    ingest(str(root / "src"), str(root / "ds"), IngestOptions(sizes=(64,)))
    return root / "src", root / "ds"


def test_an_image_scores_the_same_through_predict_serve_and_evaluation(client, model_pt, version):
    from cxr.data.version import open_version
    from cxr.learn.inference import load_model, predict_rows, shard_store, single_process
    from cxr.learn.shards import split_rows

    source, dataset = version
    image = sorted(source.rglob("*.png"))[3]
    served = probabilities(client.post("/predict", content=image.read_bytes()).json())
    printed = subprocess.run(
        [*CXR, "predict", str(image), "--model", str(model_pt), "--json", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert printed.returncode == 0, printed.stderr
    predicted = probabilities(json.loads(printed.stdout)[0])
    opened = open_version(str(dataset))
    model, bundle = load_model(str(model_pt))
    rows = split_rows(opened.metadata(), None, expand_repeats=False)
    evaluated, _ = predict_rows(model, shard_store(opened, bundle), rows, bundle.image_size, single_process())
    row = evaluated[rows.image_ids.index(image.name)]
    assert np.abs(served - predicted).max() <= TOLERANCE, (served, predicted)
    assert np.abs(served - row).max() <= TOLERANCE, (served, row)


# --- the command's own errors, and its stop ------------------------------------------------------------------


def test_a_port_in_use_is_one_error_line(model_pt, server):
    port = server.url.rsplit(":", 1)[1]
    done = subprocess.run(
        [*CXR, "serve", "--model", str(model_pt), "--port", port, "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: port") and "in use" in done.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model", "missing.pt"], ["missing.pt", "does not exist"]),
        (["--device", "bogus"], ["bogus"]),
        (["--model", __file__], ["cannot be loaded as a model bundle"]),
        (["--host", "no-such-host.invalid"], ["no-such-host.invalid"]),
        (["--max-body", "0"], ["--max-body"]),
    ],
)
def test_a_bad_option_is_one_error_line_and_nothing_binds(model_pt, args, words):
    given = {"--model": str(model_pt), "--device": "cpu"}
    given.update(dict(zip(args[::2], args[1::2], strict=True)))
    done = subprocess.run(
        [*CXR, "serve", *(x for pair in given.items() for x in pair), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error:") and all(w in done.stderr for w in words), done.stderr
    assert "serving" not in done.stderr


def test_the_command_line_loads_no_web_framework():
    code = (
        "import sys, cxr.cli; print(sorted(m for m in ('anyio', 'starlette', 'uvicorn', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_the_limits_default_to_decodings_largest_file_and_four_predict_batches():
    from cxr.data.source_image import ANY_FORMAT
    from cxr.learn.config import PREDICT_BATCH
    from cxr.serving.limits import ServeLimits

    assert ServeLimits().max_body == ANY_FORMAT.max_bytes == 64 * 2**20
    assert ServeLimits().max_batch == 4 * PREDICT_BATCH


def test_sigterm_stops_the_server_within_seconds_with_one_line(server, reliability_record):
    """The last test of the file: it stops the module's server."""
    server.process.send_signal(signal.SIGTERM)
    start = time.perf_counter()
    code = server.process.wait(10)
    took = time.perf_counter() - start
    time.sleep(0.2)  # the reader thread takes the last line
    tail = "".join(server.stderr[server.stderr.index(server.ready_line + "\n") + 1 :])
    assert code == 128 + signal.SIGTERM and took < 10, tail
    assert tail.count("\n") == 1 and tail.startswith("interrupted by SIGTERM: the server on"), tail
    assert "Traceback" not in "".join(server.stderr)
    reliability_record.record(
        "serving", "SIGTERM to a serving `cxr serve`", "stopped within seconds: one line, exit 143"
    )
