"""``cxr predict`` and ``cxr evaluate`` as a new user meets them: bad inputs named before the model loads,
the dataset version scored, overlays at the image's own resolution with legible labels, charts whose
legend hides no bar."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cxr.charts import heatmap_overlay
from cxr.data.ingest import ingest
from cxr.data.plan import IngestOptions
from cxr.data.stats import LabelStats, SplitStats, finding_stats
from cxr.data.synth import SynthConfig, synthesize
from cxr.findings import FINDINGS
from cxr.learn.checkpoint import ModelBundle
from cxr.learn.predict import predict_images
from tests.bundles import untrained_bundle

CXR = [sys.executable, "-m", "cxr.cli"]
TRAINED_ON = "0123456789abcdef"  # the dataset version the test's model says it was trained on


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CXR, *args], capture_output=True, text=True, timeout=300)


def write_png(path: Path, side: int, seed: int = 0) -> Path:
    """A smooth gray image (blurred noise), like a film and unlike flat blocks."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).random((side, side)), sigma=side / 16)
    pixels = (255 * (noise - noise.min()) / (noise.max() - noise.min())).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory) -> Path:
    """An untrained ``small`` model at 32 px whose thresholds are 0, so every finding is "above threshold"."""
    return untrained_bundle(tmp_path_factory.mktemp("model") / "model.pt", dataset_digest=TRAINED_ON)


def test_predict_names_every_bad_input_in_one_line_before_loading_the_model(tmp_path):
    good = write_png(tmp_path / "good.png", 64)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    missing = tmp_path / "missing.png"
    # The model does not exist either: an error about it would mean it was read before the images were checked.
    # -X importtime lists every module the process imported: torch (seconds) must not be among them.
    args = ("predict", str(good), str(notes), str(missing), str(folder), "--model", str(tmp_path / "no.pt"))
    result = subprocess.run([sys.executable, "-X", "importtime", *CXR[1:], *args], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time")
    }
    assert "torch" not in imported and "cxr.learn.inference" not in imported
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("import time")]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    line = lines[0]
    assert "notes.txt (not a PNG or JPEG or DICOM: text)" in line and "missing.png (not found)" in line
    assert "folder.png (a folder" in line and "good.png" not in line and "no.pt" not in line
    assert "PNG" in line.split(". ")[-1]  # what to do


def test_the_overlay_is_drawn_at_the_images_own_resolution_and_is_smooth(model_pt, tmp_path):
    image = write_png(tmp_path / "film.png", 256)
    (result,) = predict_images([str(image)], str(model_pt), str(tmp_path / "hm"))
    assert len(result.findings) == len(FINDINGS)  # thresholds of 0: one overlay per finding
    overlay = np.asarray(Image.open(tmp_path / "hm" / "film_Mass.png").convert("RGB")).astype(int)
    assert overlay.shape[1] == 256  # the image's width, not the model's 32 px input, nor that enlarged
    picture = overlay[overlay.shape[0] - 256 :]  # below the title band: the image itself, 256 px tall
    # Enlarged by nearest neighbour (blocky), 7 of 8 neighbouring rows and columns are the same;
    # upsampled smoothly and drawn over the film's own pixels, hardly any are.
    same_rows = np.mean([np.array_equal(picture[i, 40:200], picture[i + 1, 40:200]) for i in range(40, 200)])
    same_cols = np.mean([np.array_equal(picture[40:200, j], picture[40:200, j + 1]) for j in range(40, 200)])
    assert same_rows < 0.1 and same_cols < 0.1, (same_rows, same_cols)
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 2000
    finding = next(f for f in result.findings if f.finding == "Mass")
    assert 0 < finding.heatmap_share <= 1 and not hasattr(finding, "extent")


def test_predict_json_and_table_name_the_heatmap_share(model_pt, tmp_path):
    """The share of the image the thresholded heatmap covers is called that, not "extent" (which read as
    the box's share of the image); numbers in the table are rounded."""
    from rich.console import Console

    from cxr.cli.tables import prediction_table
    from cxr.records import to_json

    image = write_png(tmp_path / "film.png", 64)
    (prediction,) = predict_images([str(image)], str(model_pt))
    finding = json.loads(to_json([prediction]))[0]["findings"][0]
    assert "heatmap_share" in finding and "extent" not in finding
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(prediction_table(prediction))
    table = console.export_text()
    assert "heatmap share" in table and "extent" not in table
    numbers = [w for w in table.replace(",", " ").split() if w.replace(".", "", 1).isdigit()]
    assert numbers and all(len(n.partition(".")[2]) <= 3 for n in numbers), numbers


def test_a_dicom_film_predicts_as_its_png_does(model_pt, tmp_path):
    """The same pixels as an 8-bit DICOM whose window maps them to themselves (center 128, width 256)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    png = write_png(tmp_path / "film.png", 64)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = (
        meta,
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 64, 64, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.WindowCenter, ds.WindowWidth = 128, 256
    ds.PixelData = np.asarray(Image.open(png)).tobytes()
    ds.save_as(tmp_path / "film.dcm", enforce_file_format=True)
    from_png, from_dicom = predict_images([str(png), str(tmp_path / "film.dcm")], str(model_pt))
    assert from_dicom.probabilities == from_png.probabilities and from_dicom.size == (64, 64)


def red_label(png: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The overlay's pixels, and the mask of its solid red areas (a label's background; the box's 2-3 px
    outline and text strokes are opened away)."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    return rgb, ndimage.binary_opening(red, structure=np.ones((5, 5)))


@pytest.mark.parametrize("box", [(150.0, 0.0, 100.0, 40.0), (0.0, 200.0, 40.0, 56.0)])
def test_a_box_label_is_legible_inside_the_image_below_the_title(box):
    """A box in the image's top-right corner (the label cannot go above it) or bottom-left: the label has a
    solid background, lies wholly inside the image area, below the title band, and has contrasting text."""
    image = np.full((256, 256), 90, np.uint8)
    png = heatmap_overlay(image, np.zeros((32, 32)), [("Pleural_Thickening", box, "red")], "x.png: a long title")
    rgb, label = red_label(png)
    height, width = rgb.shape[:2]
    band = height - 256  # the title band above the image
    assert width == 256 and band > 0
    rows, cols = np.nonzero(label)
    assert label.sum() > 8 * 60, "no label background"
    assert rows.min() >= band and rows.max() < height - 1 and cols.min() > 0 and cols.max() < width - 1
    inside = rgb[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert (inside.min(axis=2) > 200).sum() > 30  # white text on the red background
    assert not (rgb[:band, :, 0] > 200).__and__(rgb[:band, :, 1] < 60).any()  # nothing red in the title band


def test_the_prevalence_chart_legend_covers_no_bar():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from cxr.charts import prevalence_figure

    findings = {}
    splits = {}
    for name, n in (("train", 800), ("val", 100), ("test", 300)):
        positives = [n // (k + 2) for k in range(len(FINDINGS))]
        findings = finding_stats(n, positives)
        splits[name] = SplitStats(n, findings, n // 2, ((0,),), {}, {})
    fig = prevalence_figure(LabelStats(tuple(FINDINGS), splits))
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    assert len(legends) == 1
    where = legends[0].get_window_extent(renderer)
    bars = [patch.get_window_extent(renderer) for ax in fig.axes for patch in ax.patches]
    assert len(bars) == 3 * 2 * len(FINDINGS)
    assert not [bar for bar in bars if where.overlaps(bar)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("eval")
    synthesize(SynthConfig(out=str(root / "src"), n_images=60, size=64, seed=0))
    summary = ingest(str(root / "src"), str(root / "ds"), IngestOptions(sizes=(64,)))
    return root / "ds", summary.digest


def test_evaluate_names_the_version_and_split_it_scored_and_warns_when_the_model_did_not_train_on_it(model_pt, dataset):
    root, digest = dataset
    made = run("evaluate", "--model", str(model_pt), "--dataset", str(root), "--bootstrap", "0", "--device", "cpu")
    assert made.returncode == 0, made.stderr
    title = made.stdout.strip().splitlines()[0]
    assert f"dataset {digest}" in title and "test split" in title, made.stdout
    warnings = [line for line in made.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and TRAINED_ON in warnings[0] and digest in warnings[0], made.stderr


def test_evaluate_does_not_warn_on_the_models_own_version(model_pt, dataset, tmp_path):
    from cxr.learn.evaluate import evaluate_model

    root, digest = dataset
    bundle = ModelBundle.read(str(model_pt))
    own = tmp_path / "own.pt"
    ModelBundle(**{**bundle.to_dict(), "dataset_digest": digest}).save(str(own))
    result = evaluate_model(str(own), str(root), n_boot=0)
    assert result.model_dataset == result.dataset == digest and result.dataset_warning() is None


HEAVY = ("sklearn", "mlflow", "torch._dynamo", "torchvision", "prefect", "dask", "matplotlib")  # none predicts


@pytest.mark.parametrize("model", ["small", "densenet121"])
def test_predict_imports_nothing_prediction_does_not_use(model, model_pt, tmp_path):
    """What ``cxr predict`` loads in a fresh process: evaluation (scikit-learn), tracking (MLflow), torchvision
    (its ``ops`` import torch._dynamo; DenseNet-121 is cxr's own module), Prefect, Dask and matplotlib cost seconds
    and predict nothing."""
    image = write_png(tmp_path / "film.png", 64)
    if model != "small":
        model_pt = untrained_bundle(tmp_path / f"{model}.pt", model, threshold=0.5)
    probe = (
        "import json, sys\n"
        "from cxr.learn.predict import predict_images\n"
        f"[p] = predict_images([{str(image)!r}], {str(model_pt)!r}, device='cpu')\n"
        f"print(json.dumps([len(p.probabilities), sorted(m for m in {HEAVY!r} if m in sys.modules)]))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == [len(FINDINGS), []]


def test_predict_on_a_folder_and_a_pattern_writes_a_json_line_per_file_in_batches(model_pt, tmp_path):
    """A folder (every level below it) or a glob pattern: one JSON line per image file, in order, scored in batches
    with a progress bar on stderr; a file that cannot be used gets a line with its error and stops nothing; the
    probabilities are those of the file predicted on its own (batching changes nothing beyond 1e-5)."""
    films = tmp_path / "films"
    (films / "b").mkdir(parents=True)
    paths = [
        write_png(films / "a1.png", 64, 1),
        write_png(films / "b" / "b1.png", 80, 2),
        write_png(films / "c.png", 72, 3),
    ]
    (films / "b" / "broken.png").write_bytes(paths[0].read_bytes()[:300])
    (films / "notes.txt").write_text("not an image, and not read: no image suffix\n")
    env = {**os.environ, "CXR_PROGRESS": "1"}
    args = ["predict", str(films), "--model", str(model_pt), "--batch-size", "2", "--device", "cpu"]
    done = subprocess.run([*CXR, *args], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["image"] for line in lines] == [
        str(p) for p in (paths[0], films / "b" / "b1.png", films / "b" / "broken.png", paths[2])
    ]
    assert set(lines[2]) == {"image", "error"} and "truncated" in lines[2]["error"].lower(), lines[2]
    assert "4 images: 3 scored, 1 refused" in done.stderr and "predicting" in done.stderr, done.stderr
    alone = predict_images([str(p) for p in paths], str(model_pt))
    scored = [line for line in lines if "error" not in line]
    for single, batched in zip(alone, scored, strict=True):
        assert batched["size"] == list(single.size)
        assert max(abs(batched["probabilities"][f] - single.probabilities[f]) for f in FINDINGS) < 1e-5
        assert [f["finding"] for f in batched["findings"]] == [f.finding for f in single.findings]

    pattern = subprocess.run(
        [*CXR, "predict", str(films / "*.png"), "--model", str(model_pt)], capture_output=True, text=True, timeout=300
    )
    assert pattern.returncode == 0, pattern.stderr
    assert [json.loads(line)["image"] for line in pattern.stdout.splitlines()] == [str(paths[0]), str(paths[2])]
    nothing = run("predict", str(tmp_path / "none-*.png"), "--model", str(model_pt))
    assert nothing.returncode == 2 and "none-*.png (no file matches)" in nothing.stderr, nothing.stderr


def test_predict_by_alias_from_the_local_sqlite_store_loads_no_mlflow(model_pt, tmp_path):
    """``cxr demo``'s store (SQLite) is read directly, read-only: the alias resolved, the bundle read from the
    run's artifact folder and kept by run in the cache; MLflow's client (seconds of imports) is not loaded."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("predict-by-alias")  # its artifacts in a folder of the test's own
    with mlflow.start_run() as logged:
        mlflow.log_artifact(str(model_pt), "bundle")
    client = MlflowClient(uri)
    client.create_registered_model("cxr-local")
    version = client.create_model_version("cxr-local", f"{logged.info.artifact_uri}/bundle", run_id=logged.info.run_id)
    client.set_registered_model_alias("cxr-local", "champion", version.version)
    image = write_png(tmp_path / "film.png", 64)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "CXR_CACHE": str(tmp_path / "cache")}
    command = [*CXR, "predict", str(image), "--json", "--model"]
    by_alias = subprocess.run(
        [sys.executable, "-X", "importtime", *command[1:], "models:/cxr-local@champion"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert by_alias.returncode == 0, by_alias.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in by_alias.stderr.splitlines() if "import time" in line}
    assert not {m for m in imported if m.split(".")[0] == "mlflow"}
    cached = tmp_path / "cache" / "models" / "runs" / logged.info.run_id / "model.pt"
    assert cached.read_bytes() == model_pt.read_bytes()
    from_file = run("predict", str(image), "--json", "--model", str(model_pt))
    assert json.loads(by_alias.stdout)[0]["probabilities"] == json.loads(from_file.stdout)[0]["probabilities"]
    unknown = subprocess.run([*command, "models:/cxr-local@nobody"], capture_output=True, text=True, env=env)
    assert unknown.returncode == 2 and "nobody" in unknown.stderr and "Traceback" not in unknown.stderr
