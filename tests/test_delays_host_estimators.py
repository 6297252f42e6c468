"""Delay estimators on host histories (numpy / lists, as the runtime calls them) agree with the jnp path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rtchunk.delays import FixedEstimator, MaxEstimator, QuantileEstimator


@pytest.mark.parametrize("estimator", [MaxEstimator(window=3), QuantileEstimator(q=0.9, window=4),
                                       QuantileEstimator(q=0.5, window=10), FixedEstimator(delay=2)])
def test_host_and_device_estimates_agree(estimator):
    history = np.random.default_rng(0).integers(0, 8, size=(5, 12))
    host = estimator.estimate(history)
    assert isinstance(host, np.ndarray) and host.shape == (5,)  # numpy in, numpy out: no device dispatch
    np.testing.assert_array_equal(host, np.asarray(estimator.estimate(jnp.asarray(history))))
    np.testing.assert_array_equal(host, np.asarray(jax.jit(estimator.estimate)(jnp.asarray(history))))
    for row in history:  # a plain list (the runtime's delay buffer) gives the same scalar
        assert int(estimator.estimate(list(row))) == int(estimator.estimate(row[None])[0])


def test_max_estimator_is_the_max_of_the_window():
    assert int(MaxEstimator(window=3).estimate([9, 1, 2, 3])) == 3
    assert int(MaxEstimator(window=10).estimate([4])) == 4
