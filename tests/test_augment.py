"""The augmentation contract: a sample's augmentation depends only on (seed, epoch, its place in the
epoch), never on how many samples there are, which rank draws it, or what else is in its batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr.learn.augment import AugmentConfig, apply, epoch_parameters, resize

CONFIG = AugmentConfig()


def test_row_j_depends_only_on_seed_epoch_and_j_not_on_the_number_of_rows():
    short, long = epoch_parameters(CONFIG, 10, seed=3, epoch=2), epoch_parameters(CONFIG, 1000, seed=3, epoch=2)
    assert np.array_equal(short, long[:10])


def test_another_epoch_or_seed_draws_other_parameters():
    base = epoch_parameters(CONFIG, 50, seed=3, epoch=2)
    assert not np.allclose(base, epoch_parameters(CONFIG, 50, seed=3, epoch=3))
    assert not np.allclose(base, epoch_parameters(CONFIG, 50, seed=4, epoch=2))
    assert np.array_equal(base, epoch_parameters(CONFIG, 50, seed=3, epoch=2))


def test_the_parameters_stay_in_their_configured_ranges():
    p = epoch_parameters(AugmentConfig(crop_scale_min=0.6, rotation_deg=5.0, brightness=0.2, contrast=0.3), 5000, 0, 0)
    scale, _, cx, cy, angle, bright, contrast, flip = p.T
    assert scale.min() >= 0.6 and scale.max() <= 1.0 and np.abs([cx, cy]).max() <= 1.0
    assert np.abs(angle).max() <= np.deg2rad(5.0) + 1e-6
    assert np.abs(bright - 1).max() <= 0.2 + 1e-6 and np.abs(contrast - 1).max() <= 0.3 + 1e-6
    assert not flip.any()  # hflip is off by default: the heart sits on the left


def test_a_sample_is_augmented_the_same_alone_or_in_any_batch():
    images = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    params = torch.from_numpy(epoch_parameters(CONFIG, 6, seed=1, epoch=0))
    together = apply(images, params, 24)
    for j in range(6):
        alone = apply(images[j : j + 1], params[j : j + 1], 24)
        assert torch.allclose(alone[0], together[j], atol=1e-6)
    order = torch.tensor([5, 0, 3])
    assert torch.allclose(apply(images[order], params[order], 24), together[order], atol=1e-6)


def test_identity_parameters_leave_the_image_as_it_is():
    image = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    identity = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]])  # full crop, no turn, no change
    assert torch.allclose(apply(image, identity, 16), image, atol=1e-5)
    assert torch.equal(resize(image, 16), image)


@pytest.mark.parametrize("kwargs", [{"crop_scale_min": 0.0}, {"rotation_deg": 60.0}, {"brightness": -0.1}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        AugmentConfig(**kwargs)


def test_training_evaluation_and_prediction_make_the_same_input_from_an_image():
    from cxr.data.decode import decode_image, resize_square
    from cxr.learn.checkpoint import ModelBundle
    from cxr.learn.inference import to_float
    from cxr.learn.models import build_model
    from cxr.learn.predictor import Predictor
    from tests.conftest import NIH

    png = next((NIH / "images").glob("*.png")).read_bytes()
    gray = np.asarray(decode_image(png))
    shard = torch.from_numpy(resize_square(gray, 256).copy())[None, None]  # what ingest stores
    bundle = ModelBundle({}, "small", 224, [], shard_size=256)
    from_shard = resize(to_float(shard), 224)  # training (before augmentation) and evaluation
    predictor = Predictor(build_model("small"), bundle, torch.device("cpu"))
    assert torch.equal(predictor.model_input(gray), from_shard)  # prediction from the file (predict and serve)
