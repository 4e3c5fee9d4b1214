"""The reliability diagram's bins and the calibration error, against a hand computation."""

from __future__ import annotations

import numpy as np

from cxr.learn.calibration import expected_calibration_error, reliability


def test_reliability_bins_and_the_calibration_error_by_hand():
    y = np.array([0, 0, 1, 0, 1, 1, np.nan, 1])
    p = np.array([0.05, 0.15, 0.12, 0.55, 0.58, 0.95, 0.99, 1.0])
    diagram = reliability(y, p, bins=4)  # [0, .25) [.25, .5) [.5, .75) [.75, 1]
    assert diagram.n == 7  # the missing label is left out
    assert [b.n for b in diagram.bins] == [3, 0, 2, 2]
    first, empty, third, last = diagram.bins
    assert (first.lo, first.hi) == (0.0, 0.25) and np.isclose(first.mean_predicted, (0.05 + 0.15 + 0.12) / 3)
    assert np.isclose(first.observed, 1 / 3) and empty.mean_predicted is None and empty.observed is None
    assert np.isclose(third.mean_predicted, 0.565) and third.observed == 0.5
    assert np.isclose(last.mean_predicted, 0.975) and last.observed == 1.0  # p = 1.0 falls in the last bin
    by_hand = (3 * abs(0.32 / 3 - 1 / 3) + 2 * abs(0.565 - 0.5) + 2 * abs(0.975 - 1.0)) / 7
    assert np.isclose(diagram.ece, by_hand) and np.isclose(expected_calibration_error(y, p, bins=4), by_hand)
    assert reliability(np.array([np.nan]), np.array([0.3])).ece is None
