"""Localization as Wang et al. (ChestX-ray8) score it: IoBB = area(predicted and truth) / area(predicted),
correct when IoBB > T; boxes from the thresholded heatmap's largest region."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.learn.localize import heatmap_box, iobb, localization_accuracy


@pytest.mark.parametrize(
    ("predicted", "truth", "expected"),
    [
        ((2, 2, 4, 4), (0, 0, 10, 10), 1.0),  # inside the truth: all of the prediction is right
        ((0, 0, 4, 4), (0, 0, 8, 8), 1.0),  # IoU would be 16/64: IoBB divides by the predicted box only
        ((0, 0, 10, 10), (0, 0, 5, 5), 0.25),  # the truth covers a quarter of the prediction
        ((0, 0, 10, 10), (5, 5, 10, 10), 0.25),  # partial overlap: 5 x 5 of 10 x 10
        ((0, 0, 10, 10), (10, 0, 5, 5), 0.0),  # touching edges share no area
        ((0, 0, 10, 10), (20, 20, 5, 5), 0.0),  # apart
        ((3, 3, 0, 5), (0, 0, 10, 10), 0.0),  # an empty prediction scores 0, not a division by zero
    ],
)
def test_iobb_is_the_intersection_over_the_predicted_box(predicted, truth, expected):
    assert iobb(predicted, truth) == pytest.approx(expected)


def test_accuracy_counts_a_box_only_above_the_threshold():
    truth = {"Mass": [(0, 0, 5, 5), (0, 0, 10, 10)]}
    predicted = {"Mass": [(0, 0, 10, 10), (0, 0, 10, 10)]}  # IoBB 0.25 and 1.0
    score = localization_accuracy(predicted, truth)["Mass"]
    assert score.n == 2
    assert score.accuracy == {0.1: 1.0, 0.25: 0.5, 0.5: 0.5}  # 0.25 is not above 0.25


def test_the_box_is_the_largest_region_above_the_threshold():
    heatmap = np.zeros((20, 20))
    heatmap[2:4, 2:4] = 1.0  # a small hot spot
    heatmap[10:16, 5:14] = 0.9  # the largest region
    x, y, w, h, heatmap_share = heatmap_box(heatmap, threshold=0.7)
    assert (x, y, w, h) == (5, 10, 9, 6)
    assert heatmap_share == pytest.approx((4 + 54) / 400)  # both regions, not the box's 54 / 400


def test_a_flat_heatmap_points_at_the_whole_image():
    assert heatmap_box(np.zeros((8, 12)))[:4] == (0.0, 0.0, 12.0, 8.0)
