"""Training-time RTC helpers for PyTorch: delay distribution, per-token time, postfix-only loss."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _torch_policies import OBS_DIM, saved_random_policy  # noqa: E402

from rtchunk.model import TrainingDelays, flow_matching_loss  # noqa: E402
from rtchunk.torch import model as tm  # noqa: E402
from rtchunk.torch import training as tt  # noqa: E402


@pytest.mark.parametrize("delays", [TrainingDelays(), TrainingDelays(1, 5, "uniform"), TrainingDelays(0, 6, "exp", 0.5)])
def test_sample_delays_follow_training_delays(delays):
    n = 40_000
    got = tt.sample_delays(delays, n, generator=torch.Generator().manual_seed(0))
    assert got.dtype == torch.int64 and got.shape == (n,)
    freq = np.bincount(got.numpy(), minlength=delays.max_delay + 1) / n
    p = delays.probabilities()
    assert freq[: delays.min_delay].sum() == 0 and len(freq) == delays.max_delay + 1
    # 4.5 standard errors per bin: fails with probability ~1e-5 per bin for a correct sampler.
    np.testing.assert_array_less(np.abs(freq - p), 4.5 * np.sqrt(p * (1 - p) / n) + 1e-12)


def test_sample_delays_validation():
    with pytest.raises(ValueError, match="delays must be a rtchunk.model.TrainingDelays"):
        tt.sample_delays({"max_delay": 3}, 4)
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        tt.sample_delays(TrainingDelays(), 0)


def test_token_time_and_noisy_chunk_per_convention():
    delay = torch.tensor([0, 2, 3])
    time = torch.tensor([0.25, 0.5, 0.75])
    actions = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(1))
    at_0 = tt.token_flow_time(time, delay, 4, "noise_at_0")
    at_1 = tt.token_flow_time(time[:, None], delay, 4, "noise_at_1")
    torch.testing.assert_close(at_0, torch.tensor([[0.25] * 4, [1, 1, 0.5, 0.5], [1, 1, 1, 0.75]]))
    torch.testing.assert_close(at_1, torch.tensor([[0.25] * 4, [0, 0, 0.5, 0.5], [0, 0, 0, 0.75]]))
    for convention, t in (("noise_at_0", at_0), ("noise_at_1", at_1)):
        x = tt.noisy_chunk(actions, noise, t, convention)
        assert torch.equal(x[1, :2], actions[1, :2]) and torch.equal(x[2, :3], actions[2, :3])  # clean prefix, exactly
    torch.testing.assert_close(tt.noisy_chunk(actions, noise, at_0)[0], 0.75 * noise[0] + 0.25 * actions[0])
    torch.testing.assert_close(tt.noisy_chunk(actions, noise, at_1, "noise_at_1")[0], 0.25 * noise[0] + 0.75 * actions[0])
    torch.testing.assert_close(tt.velocity_target(actions, noise), actions - noise)
    torch.testing.assert_close(tt.velocity_target(actions, noise, "noise_at_1"), noise - actions)
    assert tt.clean_time("noise_at_0") == 1.0 and tt.clean_time("noise_at_1") == 0.0
    with pytest.raises(ValueError, match="so a postfix remains"):
        tt.token_flow_time(time, torch.tensor([0, 4, 1]), 4)
    with pytest.raises(ValueError, match="time_convention must be one of"):
        tt.token_flow_time(time, delay, 4, "noise_at_half")


def test_postfix_mean_ignores_the_prefix_including_nan():
    loss = torch.arange(24, dtype=torch.float32).reshape(2, 4, 3).requires_grad_(True)
    delay = torch.tensor([1, 3])
    poisoned = torch.where(tt.postfix_mask(delay, 4)[..., None], loss, torch.full_like(loss, float("nan")))
    value = tt.postfix_mean(poisoned, delay)
    manual = torch.cat([loss[0, 1:].flatten(), loss[1, 3:].flatten()]).mean()
    torch.testing.assert_close(value, manual)
    value.backward()
    assert torch.isfinite(loss.grad).all() and loss.grad[0, 0].abs().sum() == 0 and loss.grad[1, 2].abs().sum() == 0
    torch.testing.assert_close(tt.postfix_mean(loss.detach().sum(-1), delay), loss.detach().sum(-1)[[0, 0, 0, 1], [1, 2, 3, 3]].mean())


def test_loss_matches_the_jax_flow_matching_loss(tmp_path):
    """Same weights, noise, times and delays: the PyTorch training step computes the JAX loss, in both conventions."""
    jax_policy, directory = saved_random_policy(tmp_path / "p", seed=3)
    policy = tm.load_policy(directory)[0]
    batch, horizon, action_dim = 6, policy.config.horizon, policy.action_dim
    delays = TrainingDelays(0, 4, "exp", 1.0)
    rng = jax.random.key(7)
    rs = np.random.RandomState(0)
    obs = rs.randn(batch, OBS_DIM).astype(np.float32)
    actions = rs.randn(batch, horizon, action_dim).astype(np.float32)
    want = float(flow_matching_loss(jax_policy, rng, jnp.asarray(obs), jnp.asarray(actions), delays))
    # The draws flow_matching_loss makes from rng, replayed.
    noise_rng, time_rng, delay_rng = jax.random.split(rng, 3)
    noise = torch.from_numpy(np.array(jax.random.normal(noise_rng, actions.shape)))
    tau = torch.from_numpy(np.array(jax.random.uniform(time_rng, (batch, 1))))
    delay = torch.from_numpy(np.array(delays.sample(delay_rng, batch))).long()
    assert delay.max() > 0  # the prefix path is exercised

    obs_t, actions_t = torch.from_numpy(obs), torch.from_numpy(actions)
    models = {
        "noise_at_0": (policy, tau),
        # The same network seen as a LeRobot-style model: t = 1 - tau, predicts noise - action.
        "noise_at_1": (lambda o, x, t: -policy(o, x, 1 - t), 1 - tau),
    }
    for time_convention, (model, time) in models.items():
        inputs = tt.prefix_conditioned_inputs(actions_t, noise, time, delay, time_convention)
        got = tt.postfix_mean((model(obs_t, inputs.x_t, inputs.time) - inputs.target) ** 2, delay)
        assert abs(got.item() - want) <= 1e-5 * max(1.0, abs(want)), time_convention
        policy.zero_grad()
        got.backward()
        assert policy.out_proj.weight.grad is not None
