"""Wilson intervals, percentiles, smoothness and seam metrics (numpy; shared by the harness and the runtime)."""

import math

import numpy as np
import pytest

from rtchunk import metrics


def test_wilson_interval_exact_values():
    # 8 of 10 at 95 %: the textbook Wilson interval (0.490, 0.943).
    low, high = metrics.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert metrics.wilson_interval(0, 0) == (0.0, 1.0)
    assert metrics.wilson_interval(10, 10)[1] == pytest.approx(1.0) and metrics.wilson_interval(0, 10)[0] == 0.0
    assert metrics.wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    with pytest.raises(ValueError, match="successes <= trials"):
        metrics.wilson_interval(3, 2)


def test_percentiles_and_empty():
    assert metrics.percentiles([1, 2, 3, 4, 5], qs=(50,)) == {"p50": 3.0}
    assert math.isnan(metrics.percentiles([])["p99"])


def test_smoothness_and_seams_respect_the_valid_mask():
    actions = np.array([[0.0], [1.0], [3.0], [10.0]])
    assert metrics.smoothness(actions) == {"max_delta_action": 7.0, "max_ddelta_action": 5.0}
    valid = np.array([True, True, True, False])
    assert metrics.smoothness(actions, valid) == {"max_delta_action": 2.0, "max_ddelta_action": 1.0}
    switched = np.array([False, False, True, True])
    np.testing.assert_array_equal(metrics.seam_jumps(actions, switched, valid), [2.0])
    assert metrics.seam_summary([1.0, 3.0])["seam_jump_mean"] == 2.0
    assert math.isnan(metrics.seam_summary([])["seam_jump_mean"])
    with pytest.raises(ValueError, match="valid must have shape"):
        metrics.smoothness(actions, valid[:2])
