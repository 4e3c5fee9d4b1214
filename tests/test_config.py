"""Training settings: every flag explains itself, configs survive the command line, and a run is named
by exactly the settings that change its result."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest

from cxr.learn.config import TrainConfig, get_args_parser, result_settings
from cxr.learn.launch import in_runs_folder, run_key, run_name, torchrun_command

BASE = TrainConfig(manifest="m", output_dir="runs/x", model="small", epochs=2)


def test_every_flag_has_help_that_says_what_it_means():
    helps = {action.dest: action.help for action in get_args_parser()._actions if action.dest != "help"}
    assert set(helps) == {f.name for f in dataclasses.fields(TrainConfig)}
    for name, text in helps.items():
        assert text and len(text.split()) >= 3 and not text.startswith("(default"), name


def test_the_help_printed_shows_the_meaning_and_the_default():
    result = subprocess.run(
        [sys.executable, "-m", "cxr.learn.train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "images per step over all processes; each takes an equal share, so 1 and 8 GPUs train the same way" in text
    assert (
        "(default: 32 on CPU, 128 per GPU, or --global-batch-size / processes)" in text
        and "(default: None)" not in text
    )
    assert "AdamW learning rate for a global batch of --lr-batch images, scaled linearly" in text
    assert "random horizontal flip; off because the heart sits on the left (default: False)" in text


@pytest.mark.parametrize(
    "config",
    [
        BASE,
        dataclasses.replace(BASE, augment=False, hflip=True, lr=3e-4, image_size=48, register="r", flow_run_id="f-1"),
        dataclasses.replace(BASE, weights="w.pth", freeze_epochs=1, tracking=False, gate_max_drop=0.05),
    ],
)
def test_a_config_survives_its_command_line(config):
    assert TrainConfig.from_args(config.to_args()) == config


def test_the_result_settings_leave_out_paths_and_lineage_ids():
    settings = result_settings(BASE)
    assert {"manifest", "output_dir", "flow_run_id", "parent_run_id", "resume", "run_name", "device"}.isdisjoint(
        settings
    )
    assert {"model", "epochs", "batch_size", "image_size", "seed", "lr"} <= set(settings)


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({"batch_size": 16}, False),
        ({"image_size": 48}, False),
        ({"seed": 1}, False),
        ({"augment": False}, False),
        ({"output_dir": "elsewhere"}, True),
        ({"flow_run_id": "another-flow-run"}, True),
        ({"checkpoint_every": 100}, True),
    ],
)
def test_a_run_is_named_by_the_settings_that_change_its_model(change, same):
    assert (run_name(dataclasses.replace(BASE, **change), "d1", 1) == run_name(BASE, "d1", 1)) is same


def test_the_manifest_and_the_number_of_processes_are_part_of_the_name():
    assert run_name(BASE, "d1", 1) != run_name(BASE, "d2", 1) != run_name(BASE, "d2", 2)
    assert run_name(BASE, "d1", 1).startswith("d1-small-")


def test_a_run_folder_is_its_name_under_the_runs_root():
    placed = in_runs_folder(BASE, "/work/runs", "d1", 2)
    assert placed.output_dir == f"/work/runs/{run_name(BASE, 'd1', 2)}"
    assert dataclasses.replace(placed, output_dir=BASE.output_dir) == BASE


def test_a_placed_run_is_cached_by_its_folder():
    here, there = in_runs_folder(BASE, "/a/runs", "d1", 1), in_runs_folder(BASE, "/b/runs", "d1", 1)
    assert run_key(here, "d1", 1) != run_key(there, "d1", 1)  # another workdir: another run
    assert run_key(here, "d1", 1).startswith(run_name(BASE, "d1", 1))
    with pytest.raises(ValueError, match="not named by its settings"):
        run_key(dataclasses.replace(here, batch_size=64), "d1", 1)


def test_torchrun_gets_the_config_as_flags():
    command = torchrun_command(dataclasses.replace(BASE, batch_size=16), nproc=2)
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert command[5:7] == ["-m", "cxr.learn.train"]
    assert TrainConfig.from_args(command[7:]) == dataclasses.replace(BASE, batch_size=16)
    with pytest.raises(ValueError, match="nproc must be >= 1"):
        torchrun_command(BASE, 0)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown model"):
        TrainConfig(manifest="m", model="vgg")
    with pytest.raises(ValueError, match="unknown setting"):
        TrainConfig.from_dict({"manifest": "m", "learning_rate": 1})
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(manifest="m", weights="a", init_from="b")
    with pytest.raises(ValueError, match="crop_scale_min"):
        TrainConfig(manifest="m", crop_scale_min=0.0)


def test_a_global_batch_is_shared_equally_and_refused_when_it_cannot_be():
    config = dataclasses.replace(BASE, batch_size=None, global_batch_size=256)
    assert config.batches(world_size=1, cuda=True) == (256, 256)
    assert config.batches(world_size=8, cuda=True) == (32, 256)
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        config.batches(world_size=3, cuda=True)
    with pytest.raises(ValueError, match="disagree"):
        dataclasses.replace(config, batch_size=16).batches(world_size=8, cuda=False)


def test_the_per_process_default_batch_suits_the_device():
    config = dataclasses.replace(BASE, batch_size=None)
    assert config.batches(world_size=2, cuda=False) == (32, 64)
    assert config.batches(world_size=8, cuda=True) == (128, 1024)


def test_the_learning_rate_scales_linearly_with_the_global_batch():
    config = dataclasses.replace(BASE, lr=1e-3, lr_batch=256)
    assert config.scaled_lr(256) == pytest.approx(1e-3) and config.scaled_lr(1024) == pytest.approx(4e-3)


def test_the_schedule_warms_up_linearly_then_decays_on_a_cosine_to_zero():
    from cxr.learn.run import lr_schedule

    factor = lr_schedule(dataclasses.replace(BASE, epochs=4, warmup_epochs=1), steps_per_epoch=10)
    assert [factor(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert factor(9) == pytest.approx(1.0) and factor(10) == pytest.approx(1.0)
    assert factor(25) == pytest.approx(0.5) and factor(39) == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))
    no_warmup = lr_schedule(dataclasses.replace(BASE, epochs=2), steps_per_epoch=10)
    assert no_warmup(0) == 1.0 and no_warmup(10) == pytest.approx(0.5)
