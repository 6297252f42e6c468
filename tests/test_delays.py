"""Delay profiles, estimators (host histories, as the runtime calls them, agree with the jnp path) and training delays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rtchunk.delays import (
    EmpiricalDelay,
    FixedDelay,
    FixedEstimator,
    MaxEstimator,
    MixtureDelay,
    QuantileEstimator,
    TrainingDelays,
    max_delay,
    quantile,
    sample,
    sample_numpy,
    support,
)


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


def test_training_delay_distributions():
    np.testing.assert_allclose(TrainingDelays().probabilities(), [0.636, 0.234, 0.086, 0.032, 0.012], atol=1e-3)
    np.testing.assert_allclose(
        TrainingDelays(min_delay=2, max_delay=5, distribution="uniform").probabilities(), [0, 0, 0.25, 0.25, 0.25, 0.25]
    )
    p = TrainingDelays(min_delay=1, max_delay=3, decay=0.5).probabilities()
    np.testing.assert_allclose(p[1:] / p[1], [1, np.exp(-0.5), np.exp(-1.0)], rtol=1e-6)
    assert p[0] == 0
    samples = np.asarray(TrainingDelays().sample(jax.random.key(0), 20000))
    freq = np.bincount(samples, minlength=5) / samples.size
    np.testing.assert_allclose(freq, TrainingDelays().probabilities(), atol=0.015)
    for kwargs, match in [(dict(min_delay=-1), "min_delay"), (dict(min_delay=3, max_delay=2), "max_delay"),
                          (dict(distribution="normal"), "distribution"), (dict(decay=-1.0), "decay")]:
        with pytest.raises(ValueError, match=match):
            TrainingDelays(**kwargs)


def test_profiles_reduce_to_their_support():
    values, probs = support(MixtureDelay(delays=(1, 3), probs=(0.25, 0.75), spike_delay=6, spike_prob=0.2))
    np.testing.assert_array_equal(values, [1, 3, 6])
    np.testing.assert_allclose(probs, [0.2, 0.6, 0.2])
    # A tail cap merges everything above it into the cap.
    values, probs = support(MixtureDelay(delays=(1, 3), probs=(0.25, 0.75), spike_delay=6, spike_prob=0.2, tail_cap=3))
    np.testing.assert_array_equal(values, [1, 3])
    np.testing.assert_allclose(probs, [0.2, 0.8])
    # ceil(latency / period): exactly two periods stay two steps despite float rounding.
    values, probs = support(EmpiricalDelay(latencies_s=(0.04, 0.041, 0.01), control_period_s=0.02))
    np.testing.assert_array_equal(values, [1, 2, 3])
    np.testing.assert_allclose(probs, [1 / 3] * 3)
    assert max_delay(FixedDelay(4)) == 4
    assert quantile(MixtureDelay(delays=(1, 2, 5), probs=(0.5, 0.3, 0.2)), 0.5) == 1
    assert quantile(MixtureDelay(delays=(1, 2, 5), probs=(0.5, 0.3, 0.2)), 0.9) == 5


def test_numpy_and_jax_sampling_follow_the_support():
    profile = MixtureDelay(delays=(0, 2), probs=(0.3, 0.7))
    host = sample_numpy(profile, np.random.default_rng(0), size=20000)
    device = np.asarray(sample(profile, jax.random.key(0), (20000,)))
    for draws in (host, device):
        assert set(np.unique(draws)) == {0, 2}
        assert abs((draws == 2).mean() - 0.7) < 0.015
    assert np.asarray(sample(FixedDelay(3), jax.random.key(1), (4,))).tolist() == [3, 3, 3, 3]


@pytest.mark.parametrize("make, match", [
    (lambda: FixedDelay(-1), "delay must be an integer >= 0"),
    (lambda: MixtureDelay(delays=(1, 2), probs=(0.5, 0.4)), "probs must sum to 1"),
    (lambda: MixtureDelay(delays=(1,), probs=(0.5, 0.5)), "equal length"),
    (lambda: MixtureDelay(spike_prob=1.5), "spike_prob must be in"),
    (lambda: EmpiricalDelay(latencies_s=()), "latencies_s"),
    (lambda: EmpiricalDelay(control_period_s=0), "control_period_s"),
    (lambda: FixedDelay(1, tail_cap=-2), "tail_cap"),
    (lambda: MaxEstimator(window=0), "window"),
    (lambda: QuantileEstimator(q=2.0), "q must be in"),
])
def test_bad_profiles_and_estimators_name_the_parameter(make, match):
    with pytest.raises(ValueError, match=match):
        make()
