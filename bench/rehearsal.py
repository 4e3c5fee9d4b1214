"""Scale rehearsal of the whole data path at the NIH archive's real size: ingest, stats, manifest, a training slice.

    .venv/bin/python bench/rehearsal.py [--sizes 10000,30000,112120] [--layout targz|folder] [--workers W]
        [--train-steps 50] [--work DIR] [--keep] [--results .cache/rehearsal.json] [--real-rate-per-core R]
        [--project-cores 16] [--cxr .venv/bin/cxr]

For each size N (default 10,000, 30,000 and the real 112,120 images), setup first, timed but not a stage:
``cxr synth --out D --n-images N --size 256 --workers <cores>`` (label sets drawn from the real v2020
prevalence), then, with ``--layout targz`` (the default), the images packed like the real download: twelve
``images_001.tar.gz`` ... ``images_012.tar.gz`` (an ``images/`` entry, then members ``images/<id>.png`` in id
order; archive boundaries at the real 4,999 / 10 x 10,000 / 7,121 split scaled to N; gzip level 1, by pigz if
present), the tables beside them and the PNG folders removed. ``--layout folder`` ingests synth's folders as
they are. Then four stages, each a fresh ``cxr`` process as a user runs it:

1. ``cxr ingest --source SRC --out OUT --size 256 --workers W --json`` (W: ``--workers``, default all cores;
   ``--json`` only to check that all N images were accepted: fewer counts as a failure);
2. ``cxr stats --dataset OUT --json``;
3. ``cxr manifest --dataset OUT --strategy weighted --out M``;
4. ``cxr train --manifest M --model small --image-size 64 --epochs 1 --max-steps S --no-tracking
   --batch-size 64 --output-dir T`` (S: ``--train-steps``; the slice also loads the manifest and scores the
   whole val split, which grows with N).

Per stage and size: wall time, images/s (images: N, or for train the images trained, steps x 64), ms per image
and its ratio to the smallest size's, the marginal ms per image from the size before (wall time added / images
added: the cost of one more image without the fixed start-up; about equal from size to size when growth is
linear; noise at sizes of a few thousand), the peak RSS of the largest single process (and what it was: "cxr
ingest", "dask worker", ...) and the peak of the summed RSS of the whole process tree (the CLI process and
every descendant: Dask workers, torchrun workers, DataLoader forks), sampled every 0.2 s with psutil. The sum
counts pages shared between processes once per process, so it is an upper bound. A stage that fails (e.g.
``cxr ingest`` on the packed layout before it supports archives) is recorded with its error's last lines and
the stages that need it are skipped. Results go to ``--results`` (JSON, rewritten after every step), a
markdown table to stdout, with the host (cores, memory, CPU model) and the date.

Goals (scale rehearsal issue), from the smallest to the largest size (10k -> 112k images):
- time per stage grows linearly with the images: ms per image at 112k / at 10k <= 1.2 (~1.0 is linear;
  below 1 is the fixed start-up cost spread thinner);
- peak memory per process stays flat, no stage holds the archive in memory: the largest process's peak RSS
  at 112k / at 10k <= 1.2;
- the real download (112,120 images, 42 GB) on a 16-core machine: projected from the measured ingest rate
  per core (images/s / workers at the largest size) x 16. 256 px synthetic PNGs decode much faster than the
  real 1024 px ones, so the projection is also printed at ``--real-rate-per-core`` (e.g. the per-core rate
  bench/ingest.py measures on real PNGs) when given.

Disk: the 112k size needs about 40 GB free (PNGs, archives, 7.3 GB of shards); less is refused up front.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
REAL_SPLIT = (4999, *(10000,) * 10, 7121)  # images per archive, images_001 ... images_012, in id order
REAL_TOTAL = sum(REAL_SPLIT)  # 112,120
REAL_GB = 42  # the real download
PX = 256
BATCH = 64
STAGES = ("ingest", "stats", "manifest", "train")
NEEDS = {"stats": "ingest", "manifest": "ingest", "train": "manifest"}
FULL_SIZE_DISK = 40 * 10**9  # bytes free the 112,120-image size needs; smaller sizes in proportion
SAMPLE_S = 0.2
HEARTBEAT_S = 60.0
TAIL_LINES = 12
GOAL_RATIO = 1.2
MIB = 2**20


class Clock:
    """Progress lines stamped with the time since the start."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def log(self, message: str) -> None:
        seconds = int(time.perf_counter() - self.start)
        print(f"[{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}] {message}", flush=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host() -> dict:
    return {
        "cores": os.cpu_count() or 1,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# --- the process tree -------------------------------------------------------------------------------------------


@dataclass
class Peaks:
    largest_rss: int = 0  # bytes, the largest single process at any sample
    largest_label: str = ""
    largest_cmdline: str = ""
    tree_rss: int = 0  # bytes, the largest sum over the tree at one sample
    tree_processes: int = 0  # processes in the tree at that sample
    most_processes: int = 0
    samples: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)  # bytes, the largest process of each kind


def describe(cmd: list[str], is_root: bool, parent_label: str, root_cmd: list[str], stage: str) -> str:
    """A short name for a process of a stage's tree, from its command line."""
    text = " ".join(cmd)
    if is_root:
        return f"cxr {stage}"
    if "resource_tracker" in text:
        return "multiprocessing resource tracker"
    if "forkserver" in text:
        return "multiprocessing forkserver"
    if "torch.distributed.run" in text or (cmd and Path(cmd[0]).name == "torchrun"):
        return "torchrun"
    if parent_label == "torchrun":
        return "torchrun worker"
    if "spawn_main" in text:  # multiprocessing spawn: a LocalCluster's nannies start their workers so
        return "dask worker" if stage == "ingest" else f"spawned by cxr {stage}"
    if cmd == root_cmd:  # a fork: synth's renderers, a DataLoader's workers
        return f"fork of cxr {stage}"
    return text if len(text) <= 60 else text[:57] + "..."


def watch(
    root: psutil.Process, stage: str, size: int, peaks: Peaks, stop: threading.Event, clock: Clock, start: float
) -> None:
    """Sample the tree under ``root`` every SAMPLE_S until ``stop``; a heartbeat line every HEARTBEAT_S."""
    try:
        root_cmd = root.cmdline()
    except psutil.Error:
        root_cmd = []
    labels: dict[psutil.Process, tuple[str, str]] = {}  # (pid, create time) -> label, command line
    by_pid: dict[int, str] = {}
    beat = start + HEARTBEAT_S
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:  # the CLI process has ended (or is a zombie): nothing more to see
            procs = []
        total = count = 0
        for proc in procs:
            try:
                if proc not in labels:
                    cmd = proc.cmdline()
                    parent = by_pid.get(proc.ppid(), "")
                    label = describe(cmd, proc == root, parent, root_cmd, stage)
                    labels[proc] = (label, " ".join(cmd)[:300])
                    by_pid[proc.pid] = label
                rss = proc.memory_info().rss
            except psutil.Error:  # ended between the listing and now, or not ours to read
                continue
            total += rss
            count += 1
            kind = labels[proc][0]
            peaks.by_kind[kind] = max(peaks.by_kind.get(kind, 0), rss)
            if rss > peaks.largest_rss:
                peaks.largest_rss = rss
                peaks.largest_label, peaks.largest_cmdline = labels[proc]
        if total > peaks.tree_rss:
            peaks.tree_rss, peaks.tree_processes = total, count
        peaks.most_processes = max(peaks.most_processes, count)
        peaks.samples += 1
        now = time.perf_counter()
        if now >= beat:
            beat = now + HEARTBEAT_S
            clock.log(
                f"  n={size:,} {stage}: running {now - start:.0f} s, {count} processes, tree RSS "
                f"{total / MIB:.0f} MiB now, peak {peaks.tree_rss / MIB:.0f} MiB"
            )
        stop.wait(SAMPLE_S)


# --- one stage ----------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    stage: str
    size: int
    status: str = "skipped"  # ok | failed | skipped
    command: str = ""
    wall_s: float | None = None
    images: int | None = None  # what images/s and ms/image count
    images_per_s: float | None = None
    ms_per_image: float | None = None
    rc: int | None = None
    error: str = ""
    peaks: Peaks = field(default_factory=Peaks)
    extra: dict = field(default_factory=dict)


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def run_stage(clock: Clock, stage: str, size: int, cmd: list[str], logs: Path, cwd: Path) -> Stage:
    """Run ``cmd`` as a fresh process, timing it and sampling its process tree; its output goes to ``logs``."""
    result = Stage(stage, size, command=shlex.join(cmd))
    out_path, err_path = logs / f"{stage}.out", logs / f"{stage}.err"
    clock.log(f"n={size:,} {stage}: {result.command}")
    stop = threading.Event()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd)
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:  # over already
            root = None
        watcher = None
        if root is not None:
            watcher = threading.Thread(
                target=watch, args=(root, stage, size, result.peaks, stop, clock, start), daemon=True
            )
            watcher.start()
        try:
            rc = proc.wait()
        except BaseException:  # Ctrl-C: the CLI got it too; give it a moment to stop its own workers
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            raise
        finally:
            wall = time.perf_counter() - start
            stop.set()
            if watcher is not None:
                watcher.join()
    result.wall_s, result.rc = round(wall, 3), rc
    if rc == 0:
        result.status = "ok"
    else:
        result.status = "failed"
        result.error = tail(err_path) or tail(out_path) or f"exit status {rc}, no output"
    return result


def finish(result: Stage, images: int | None) -> None:
    if result.status == "ok" and images and result.wall_s:
        result.images = images
        result.images_per_s = round(images / result.wall_s, 2)
        result.ms_per_image = round(1000 * result.wall_s / images, 4)


def check_ingest(result: Stage, out_path: Path, size: int) -> None:
    """An ingest that exits 0 but leaves images out (e.g. an archive layout it does not read) has failed."""
    if result.status != "ok":
        return
    try:
        accounting = json.loads(out_path.read_text())["accounting"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        result.status, result.error = "failed", f"no JSON accounting on stdout ({err!r})"
        return
    result.extra = {
        k: accounting.get(k) for k in ("accepted", "quarantined", "image_files", "label_rows", "quarantined_by_reason")
    }
    if accounting.get("accepted") != size:
        result.status = "failed"
        result.error = (
            f"accepted {accounting.get('accepted')} of {size} images; {accounting.get('image_files')} image files "
            f"found, quarantined by reason: {accounting.get('quarantined_by_reason')}"
        )


def check_train(result: Stage, out_dir: Path, manifest: Path) -> int | None:
    """Images the slice handled: trained (steps x batch, from result.json) plus the validation images it scores
    at the end (from the manifest), and the training loop's own images/s."""
    try:
        trained = json.loads((out_dir / "result.json").read_text())
    except (OSError, ValueError) as err:
        if result.status == "ok":
            result.status, result.error = "failed", f"no result.json ({err!r})"
        return None
    steps = int(trained.get("steps") or 0)
    history = trained.get("history") or [{}]
    splits = pq.read_table(manifest / "manifest.parquet", columns=["split"])["split"].to_pylist()
    scored = splits.count("val")
    result.extra = {"steps": steps, "val_images": scored, "loop_images_per_s": history[-1].get("images_per_s")}
    return steps * BATCH + scored


# --- packing ------------------------------------------------------------------------------------------------------


def archive_ends(n: int) -> list[int]:
    """Where each of the twelve archives ends among n images in id order: the real split, scaled to n."""
    ends, total = [], 0
    for count in REAL_SPLIT:
        total += count
        ends.append(round(n * total / REAL_TOTAL))
    return ends


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what a Ctrl-C stops


def _add_members(tar: tarfile.TarFile, files: list[str]) -> None:
    folder = tarfile.TarInfo("images")
    folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
    tar.addfile(folder)
    for path in files:
        tar.add(path, arcname=f"images/{os.path.basename(path)}", recursive=False)


def pack_one(out: str, files: list[str], pigz: str | None) -> int:
    """One ``images_NNN.tar.gz`` holding ``images/<id>.png``, gzip level 1; its size in bytes."""
    if pigz:
        with open(out, "wb") as sink:
            compressor = subprocess.Popen([pigz, "-1"], stdin=subprocess.PIPE, stdout=sink)
            assert compressor.stdin is not None
            with tarfile.open(fileobj=compressor.stdin, mode="w|") as tar:
                _add_members(tar, files)
            compressor.stdin.close()
            if compressor.wait() != 0:
                raise RuntimeError(f"pigz exited {compressor.returncode} writing {out}")
    else:
        with tarfile.open(out, "w:gz", compresslevel=1) as tar:
            _add_members(tar, files)
    return os.path.getsize(out)


def pack(synth: Path, source: Path, size: int, cores: int) -> dict:
    """Pack synth's PNGs into twelve archives in ``source``, move the tables there, remove ``synth``."""
    files = sorted((*synth.glob("images/*.png"), *synth.glob("images_*/images/*.png")), key=lambda p: p.name)
    if len(files) != size:
        raise RuntimeError(f"synth wrote {len(files)} PNGs, expected {size}")
    source.mkdir()
    starts = [0, *archive_ends(size)[:-1]]
    jobs = [
        (str(source / f"images_{i + 1:03d}.tar.gz"), [str(p) for p in files[a:b]])
        for i, (a, b) in enumerate(zip(starts, archive_ends(size), strict=True))
    ]
    pigz = shutil.which("pigz")
    if pigz:  # pigz uses every core on one archive at a time
        sizes = [pack_one(out, members, pigz) for out, members in jobs]
        tool = "tarfile | pigz -1"
    else:
        pool = concurrent.futures.ProcessPoolExecutor(min(cores, len(jobs)), initializer=_ignore_sigint)
        try:
            sizes = list(pool.map(pack_one, *zip(*jobs, strict=True), [None] * len(jobs)))
        finally:
            pool.shutdown(cancel_futures=True)
        tool = f"tarfile gzip level 1, {min(cores, len(jobs))} processes"
    for table in synth.iterdir():
        if table.is_file() and not table.name.startswith("."):
            shutil.move(table, source / table.name)
    shutil.rmtree(synth)
    return {
        "tool": tool,
        "archive_bytes": sum(sizes),
        "archives": {Path(out).name: len(members) for out, members in jobs},
    }


# --- one size -----------------------------------------------------------------------------------------------------


def q(path: Path) -> str:
    return shlex.quote(str(path))


def disk_needed(size: int) -> int:
    return FULL_SIZE_DISK * size // REAL_TOTAL


def rehearse(
    clock: Clock, cxr: str, folder: Path, size: int, args: argparse.Namespace, save: Callable[[], None], record: dict
) -> None:
    """Setup and the four stages for one size, into ``record`` (saved after every step)."""
    cores = os.cpu_count() or 1
    free = shutil.disk_usage(folder.parent).free
    if free < disk_needed(size):
        raise SystemExit(
            f"n={size:,} needs about {disk_needed(size) / 1e9:.0f} GB free in {folder.parent}; "
            f"{free / 1e9:.1f} GB are (pick another --work)"
        )
    logs = folder / "logs"
    logs.mkdir(parents=True)
    synth = folder / "synth"
    setup = record["setup"]
    made = run_stage(
        clock,
        "synth",
        size,
        [cxr, "synth", "--out", str(synth), "--n-images", str(size), "--size", str(PX), "--workers", str(cores)],
        logs,
        folder,
    )
    finish(made, size)
    setup["synth"] = asdict(made)
    save()
    if made.status != "ok":
        clock.log(f"n={size:,} synth failed:\n{made.error}")
        for stage in STAGES:
            record["stages"][stage] = asdict(Stage(stage, size, error="synth failed"))
        return
    clock.log(f"n={size:,} synth: {made.wall_s:.1f} s")
    if args.layout == "targz":
        clock.log(f"n={size:,} packing twelve .tar.gz archives (setup, not a stage)")
        start = time.perf_counter()
        source = folder / "source"
        setup["pack"] = pack(synth, source, size, cores)
        setup["pack"]["seconds"] = round(time.perf_counter() - start, 3)
        clock.log(
            f"n={size:,} packed: {setup['pack']['archive_bytes'] / 1e9:.2f} GB in {setup['pack']['seconds']:.1f} s "
            f"({setup['pack']['tool']})"
        )
    else:
        source = synth
    setup["source"] = str(source)
    save()

    dataset, manifest, train = folder / "dataset", folder / "manifest", folder / "train"
    lines = {
        "ingest": f"ingest --source {q(source)} --out {q(dataset)} --size {PX} --workers {args.workers} --json",
        "stats": f"stats --dataset {q(dataset)} --json",
        "manifest": f"manifest --dataset {q(dataset)} --strategy weighted --out {q(manifest)}",
        "train": f"train --manifest {q(manifest)} --model small --image-size 64 --epochs 1 "
        f"--max-steps {args.train_steps} --no-tracking --batch-size {BATCH} --output-dir {q(train)}",
    }
    commands = {stage: [cxr, *shlex.split(line)] for stage, line in lines.items()}
    done: dict[str, Stage] = {}
    for stage in STAGES:
        needed = NEEDS.get(stage)
        if needed and done[needed].status != "ok":
            result = Stage(stage, size, command=shlex.join(commands[stage]), error=f"skipped: {needed} did not succeed")
            clock.log(f"n={size:,} {stage}: {result.error}")
        else:
            result = run_stage(clock, stage, size, commands[stage], logs, folder)
            images: int | None = size
            if stage == "ingest":
                check_ingest(result, logs / "ingest.out", size)
            elif stage == "train":
                images = check_train(result, train, manifest)
            finish(result, images)
            if result.status == "ok":
                clock.log(
                    f"n={size:,} {stage}: {result.wall_s:.1f} s, {result.images_per_s or 0:.0f} img/s, largest "
                    f"process {result.peaks.largest_rss / MIB:.0f} MiB ({result.peaks.largest_label}), tree "
                    f"{result.peaks.tree_rss / MIB:.0f} MiB"
                )
            else:
                why = f"exit status {result.rc}" if result.rc else "exit status 0, but its check failed"
                clock.log(f"n={size:,} {stage} FAILED ({why}) after {result.wall_s:.1f} s:")
                print("    " + result.error.replace("\n", "\n    "), flush=True)
        done[stage] = result
        record["stages"][stage] = asdict(result)
        save()


# --- report -------------------------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{seconds:.0f} s" if minutes < 2 else f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def report(results: dict, real_rate: float | None, project_cores: int) -> dict:
    """Print the tables, the goals and the projection; return the projection for the JSON."""
    hw = results["host"]
    print()
    print(f"host: {hw['cores']} cores, {hw['memory_gib']} GiB, {hw['cpu']}; Python {hw['python']}; {hw['date']}")
    print(f"layout: {results['args']['layout']}; ingest --workers {results['args']['workers']}; images {PX} px")
    sizes = sorted(int(s) for s in results["sizes"])
    print()
    print("| size | synth s | pack s | archives GB |")
    print("|---:|---:|---:|---:|")
    for size in sizes:
        setup = results["sizes"][str(size)]["setup"]
        synth, packed = setup.get("synth") or {}, setup.get("pack") or {}
        print(
            f"| {size:,} | {fmt(synth.get('wall_s'), '.1f')} | {fmt(packed.get('seconds'), '.1f')} | "
            f"{fmt(packed['archive_bytes'] / 1e9 if packed else None, '.2f')} |"
        )
    print()
    print(
        "| stage | size | images | wall s | img/s | ms/img | ratio | marginal ms/img | largest process MiB | tree MiB "
        "| status |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
    ratios: dict[str, tuple[float | None, float | None]] = {}
    for stage in STAGES:
        rows = [results["sizes"][str(s)]["stages"].get(stage) or asdict(Stage(stage, s)) for s in sizes]
        base = rows[0]
        for before, row in zip([None, *rows], rows, strict=False):
            ratio = marginal = None
            if row["ms_per_image"] and base["ms_per_image"]:
                ratio = row["ms_per_image"] / base["ms_per_image"]
            if before and before["status"] == row["status"] == "ok" and row["images"] != before["images"]:
                marginal = 1000 * (row["wall_s"] - before["wall_s"]) / (row["images"] - before["images"])
            peaks = row["peaks"]
            largest = f"{peaks['largest_rss'] / MIB:.0f} ({peaks['largest_label']})" if peaks["samples"] else "-"
            tree = f"{peaks['tree_rss'] / MIB:.0f}" if peaks["samples"] else "-"
            status = row["status"]
            if status == "failed":
                status = f"FAILED (exit {row['rc']})" if row["rc"] else "FAILED (exit 0, check)"
            print(
                f"| {stage} | {row['size']:,} | {fmt(row['images'], ',')} | {fmt(row['wall_s'], '.1f')} | "
                f"{fmt(row['images_per_s'], '.0f')} | {fmt(row['ms_per_image'], '.3f')} | {fmt(ratio, '.2f')} | "
                f"{fmt(marginal, '.3f')} | {largest} | {tree} | {status} |"
            )
        last = rows[-1]
        time_ratio = rss_ratio = None
        if len(rows) > 1 and base["status"] == last["status"] == "ok":
            time_ratio = last["ms_per_image"] / base["ms_per_image"]
            if base["peaks"]["largest_rss"]:
                rss_ratio = last["peaks"]["largest_rss"] / base["peaks"]["largest_rss"]
        ratios[stage] = (time_ratio, rss_ratio)

    print(
        "\npeak RSS of the largest process of each kind (MiB), and its ratio from the smallest size to the largest:\n"
    )
    print("| stage | kind | " + " | ".join(f"{s:,}" for s in sizes) + " | ratio |")
    print("|---|---|" + "---:|" * (len(sizes) + 1))
    kind_ratios: dict[str, list[tuple[str, float]]] = {}
    for stage in STAGES:
        rows = [results["sizes"][str(s)]["stages"].get(stage) or asdict(Stage(stage, s)) for s in sizes]
        kinds = sorted({k for row in rows for k in row["peaks"].get("by_kind", {})})
        for kind in kinds:
            values = [row["peaks"].get("by_kind", {}).get(kind) for row in rows]
            ratio = values[-1] / values[0] if values[0] and values[-1] else None
            if ratio is not None:
                kind_ratios.setdefault(stage, []).append((kind, ratio))
            cells = " | ".join(fmt(v / MIB if v else None, ".0f") for v in values)
            print(f"| {stage} | {kind} | {cells} | {fmt(ratio, '.2f')} |")

    failed = [
        (size, stage, row)
        for size in sizes
        for stage, row in results["sizes"][str(size)]["stages"].items()
        if row["status"] == "failed"
    ]
    for size, stage, row in failed:
        print(f"\n{stage} at n={size:,} failed (exit status {row['rc']}); its last lines or the failed check:")
        print("    " + row["error"].replace("\n", "\n    "))

    if len(sizes) > 1:
        print(f"\ngoals, n={sizes[0]:,} -> {sizes[-1]:,} (ratio of the largest size to the smallest):")
        for stage, (time_ratio, rss_ratio) in ratios.items():
            if time_ratio is None:
                print(f"  {stage:<8} not measured at both sizes")
                continue
            linear = "met" if time_ratio <= GOAL_RATIO else "MISSED"
            flat = "met" if rss_ratio is not None and rss_ratio <= GOAL_RATIO else "MISSED"
            print(
                f"  {stage:<8} ms/image x{time_ratio:.2f} (linear, <= {GOAL_RATIO}: {linear}); "
                f"largest process peak RSS x{fmt(rss_ratio, '.2f')} (flat, <= {GOAL_RATIO}: {flat}); by kind: "
                + ", ".join(f"{kind} x{ratio:.2f}" for kind, ratio in kind_ratios.get(stage, []))
            )

    projection: dict = {}
    measured = [s for s in sizes if results["sizes"][str(s)]["stages"].get("ingest", {}).get("status") == "ok"]
    print()
    if not measured:
        print("projection: no ingest succeeded, nothing to project from")
        return projection
    size = measured[-1]
    ingest = results["sizes"][str(size)]["stages"]["ingest"]
    workers = results["args"]["workers"]
    per_core = ingest["images_per_s"] / workers
    # One task per .tar.gz: with more cores than archives, the largest archive (10,000 images) bounds the time.
    busy = min(project_cores, len(REAL_SPLIT)) if results["args"]["layout"] == "targz" else project_cores

    def projected(rate: float) -> float:
        if results["args"]["layout"] != "targz":
            return REAL_TOTAL / (rate * project_cores)
        return max(max(REAL_SPLIT) / rate, REAL_TOTAL / (rate * busy))

    synthetic_s = projected(per_core)
    projection = {
        "from_size": size,
        "images_per_s": ingest["images_per_s"],
        "workers": workers,
        "per_core_images_per_s": round(per_core, 2),
        "cores": project_cores,
        "seconds_at_synthetic_rate": round(synthetic_s, 1),
    }
    print(
        f"ingest rate at n={size:,}: {ingest['images_per_s']:.1f} img/s on {workers} workers = "
        f"{per_core:.1f} img/s per core ({PX} px synthetic PNGs, {results['args']['layout']} layout)"
    )
    print(
        f"projected ingest of the real download ({REAL_TOTAL:,} images, {REAL_GB} GB) on {project_cores} cores "
        f"({busy} busy: one task per archive, the largest {max(REAL_SPLIT):,} images): {duration(synthetic_s)} "
        "at that rate"
    )
    if real_rate:
        real_s = projected(real_rate)
        projection.update(real_per_core_images_per_s=real_rate, seconds_at_real_rate=round(real_s, 1))
        print(f"  at --real-rate-per-core {real_rate:g} img/s (real 1024 px PNGs): {duration(real_s)}")
    else:
        print(
            f"  caution: {PX} px synthetic PNGs decode much faster than the real 1024 px ones; pass "
            "--real-rate-per-core (e.g. bench/ingest.py's per-core rate on real PNGs) for a realistic projection"
        )
    if sizes[-1] < REAL_TOTAL:
        print(f"  (measured at n={size:,}, not the real size {REAL_TOTAL:,})")
    return projection


# --- main ---------------------------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"sizes are whole numbers separated by commas: {err}") from err
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("at least one size, each 1 or more")
    return sizes


def main() -> None:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=parse_sizes, default=[10000, 30000, REAL_TOTAL], help="images per rehearsal, comma-separated"
    )
    parser.add_argument(
        "--layout", choices=("targz", "folder"), default="targz", help="twelve .tar.gz (default) or synth's folders"
    )
    parser.add_argument("--workers", type=int, default=cores, help=f"ingest's --workers (default all cores: {cores})")
    parser.add_argument("--train-steps", type=int, default=50, help="cxr train --max-steps (default 50)")
    parser.add_argument("--work", type=Path, help="working folder (default a new one under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (default: removed)")
    parser.add_argument(
        "--results", type=Path, default=REPO / ".cache" / "rehearsal.json", help="JSON results (default .cache/)"
    )
    parser.add_argument(
        "--real-rate-per-core", type=float, help="ingest img/s per core on real 1024 px PNGs, for a second projection"
    )
    parser.add_argument("--project-cores", type=int, default=16, help="cores of the projected machine (default 16)")
    parser.add_argument(
        "--cxr", default=str(Path(sys.executable).with_name("cxr")), help="the cxr command (default: this venv's)"
    )
    args = parser.parse_args()
    if args.workers < 1 or args.train_steps < 1:
        parser.error("--workers and --train-steps are 1 or more")
    if not Path(args.cxr).is_file():
        parser.error(f"no cxr command at {args.cxr} (pass --cxr)")

    made_work = args.work is None or not args.work.exists()
    work = Path(tempfile.mkdtemp(prefix="cxr-rehearsal-", dir="/tmp")) if args.work is None else args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    folders = {size: work / f"n{size}-{args.layout}" for size in args.sizes}
    taken = [str(f) for f in folders.values() if f.exists()]
    if taken:
        raise SystemExit(f"already there (remove them or pick another --work): {', '.join(taken)}")
    needed = sum(map(disk_needed, args.sizes)) if args.keep else max(map(disk_needed, args.sizes))
    free = shutil.disk_usage(work).free
    if free < needed:
        if made_work:
            shutil.rmtree(work, ignore_errors=True)
        raise SystemExit(
            f"not enough disk: sizes {', '.join(f'{s:,}' for s in args.sizes)} need about {needed / 1e9:.0f} GB free "
            f"in {work} ({FULL_SIZE_DISK // 10**9} GB for {REAL_TOTAL:,} images{', all kept' if args.keep else ''}); "
            f"{free / 1e9:.1f} GB are. Pick another --work or fewer/smaller --sizes."
        )

    results: dict = {
        "host": host(),
        "args": {
            "sizes": args.sizes,
            "layout": args.layout,
            "workers": args.workers,
            "train_steps": args.train_steps,
            "work": str(work),
            "px": PX,
            "batch_size": BATCH,
        },
        "sizes": {str(size): {"setup": {}, "stages": {}} for size in args.sizes},
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        partial = args.results.with_name(args.results.name + ".part")
        partial.write_text(json.dumps(results, indent=2) + "\n")
        partial.replace(args.results)

    clock = Clock()
    hw = results["host"]
    clock.log(
        f"rehearsal of sizes {', '.join(f'{s:,}' for s in args.sizes)}, layout {args.layout}, in {work}; "
        f"host {hw['cores']} cores, {hw['memory_gib']} GiB, {hw['cpu']}; results to {args.results}"
    )
    try:
        try:
            for size in args.sizes:
                rehearse(clock, args.cxr, folders[size], size, args, save, results["sizes"][str(size)])
                if not args.keep:
                    shutil.rmtree(folders[size], ignore_errors=True)
        except KeyboardInterrupt:
            clock.log("interrupted; what was measured so far:")
            results["interrupted"] = True
            results["projection"] = report(results, args.real_rate_per_core, args.project_cores)
            save()
            raise SystemExit(130) from None
        results["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        results["projection"] = report(results, args.real_rate_per_core, args.project_cores)
        save()
        clock.log(f"done; results in {args.results}" + (f", work kept in {work}" if args.keep else ""))
    finally:
        if not args.keep:
            for folder in folders.values():
                shutil.rmtree(folder, ignore_errors=True)
            if made_work:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
