"""The flow policy: time shapes, the split input projection, the training-time RTC loss."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY, random_inputs, tiny_policy

from rtchunk import FlowPolicy, ModelConfig, TrainingDelays, flow_matching_loss

H, A, O, B = 8, 3, 6, 4


@pytest.fixture(scope="module")
def policy():
    return tiny_policy(O, A)


def test_default_config_is_the_papers():
    c = ModelConfig()
    assert (c.channel_dim, c.channel_hidden_dim, c.token_hidden_dim, c.num_layers, c.horizon) == (256, 512, 64, 4, 8)


def test_scalar_per_sample_and_per_token_time_agree(policy):
    obs, x, _ = random_inputs(B, H, A, O)
    full = policy(obs, x, jnp.full((B, H), 0.3))
    np.testing.assert_allclose(policy(obs, x, jnp.float32(0.3)), full, atol=1e-5)
    np.testing.assert_allclose(policy(obs, x, jnp.full((B,), 0.3)), full, atol=1e-5)
    np.testing.assert_allclose(policy(obs, x, jnp.full((1, H), 0.3)), full, atol=1e-5)


def test_time_table_equals_dense_time(policy):
    from rtchunk.sampling import TimeTable

    obs, x, _ = random_inputs(B, H, A, O)
    values = jnp.array([0.2, 1.0, 0.7])
    for index in (jnp.array([[1, 1, 0, 0, 2, 0, 0, 0]]), jax.random.randint(jax.random.key(0), (B, H), 0, 3)):
        table = TimeTable(values, index)
        np.testing.assert_allclose(policy(obs, x, table), policy(obs, x, table.dense((B, H))), atol=1e-5)
    with pytest.raises(ValueError, match="TimeTable"):
        policy(obs, x, TimeTable(values, jnp.zeros((B, H - 1), jnp.int32)))


def test_time_is_per_token(policy):
    """Changing one token's time changes the output (through token mixing), and the modulation of that
    token is its own: a per-token time is not averaged away."""
    obs, x, _ = random_inputs(B, H, A, O)
    tau = jnp.full((B, H), 0.3)
    base = policy(obs, x, tau)
    moved = policy(obs, x, tau.at[:, 2].set(1.0))
    assert not np.allclose(base[:, 2], moved[:, 2], atol=1e-4)
    # Per-token time equals evaluating each sample with its own tau row.
    mixed = jnp.stack([jnp.linspace(0, 1, H)] * B)
    out = policy(obs, x, mixed)
    for b in range(B):
        np.testing.assert_allclose(out[b], policy(obs[b : b + 1], x[b : b + 1], mixed[b : b + 1])[0], atol=1e-5)


def test_split_projection_is_the_same_function(policy):
    obs, x, _ = random_inputs(B, H, A, O)
    tau = jax.random.uniform(jax.random.key(0), (B, H))
    np.testing.assert_allclose(policy(obs, x, tau), policy.velocity_unsplit(obs, x, tau), atol=1e-5)
    np.testing.assert_allclose(policy.velocity_fn(obs)(x, tau), policy(obs, x, tau), atol=1e-6)


def test_fresh_policy_starts_with_identity_blocks():
    """adaLN-zero: with zero modulation every block is the identity, so the output does not depend on tau."""
    p = FlowPolicy(O, A, TINY, rngs=nnx.Rngs(0))
    obs, x, _ = random_inputs(B, H, A, O)
    np.testing.assert_allclose(p(obs, x, 0.1), p(obs, x, 0.9), atol=1e-6)


def test_shapes_are_checked(policy):
    obs, x, _ = random_inputs(B, H, A, O)
    with pytest.raises(ValueError, match="obs"):
        policy(obs[:, :-1], x, 0.5)
    with pytest.raises(ValueError, match="x_t"):
        policy(obs, x[:, :-1], 0.5)
    with pytest.raises(ValueError, match="tau"):
        policy(obs, x, jnp.zeros((B, H + 1)))
    with pytest.raises(ValueError, match="channel_dim"):
        ModelConfig(channel_dim=7)
    with pytest.raises(ValueError, match="num_layers"):
        ModelConfig(num_layers=0)


class _Recorder:
    """A stand-in policy that records its inputs and returns a chosen prediction."""

    def __init__(self, prediction):
        self.prediction, self.calls = prediction, []

    def __call__(self, obs, x_t, tau):
        self.calls.append((x_t, tau))
        return self.prediction(x_t)


def test_loss_masks_the_prefix_and_feeds_it_clean():
    obs, actions, _ = random_inputs(B, H, A, O)
    delays = TrainingDelays(min_delay=3, max_delay=3)
    rng = jax.random.key(5)
    rec = _Recorder(lambda x: jnp.zeros_like(x))
    base = flow_matching_loss(rec, rng, obs, actions, delays)
    x_t, tau = rec.calls[0]
    np.testing.assert_array_equal(x_t[:, :3], actions[:, :3])
    np.testing.assert_array_equal(tau[:, :3], 1.0)
    assert np.all(np.asarray(tau[:, 3:]) < 1.0) and np.all(np.asarray(tau[:, 3:]) == np.asarray(tau[:, 3:4]))
    # Anything predicted on the prefix is ignored; the postfix mean is over postfix tokens only.
    wild = flow_matching_loss(_Recorder(lambda x: jnp.zeros_like(x).at[:, :3].set(1e3)), rng, obs, actions, delays)
    np.testing.assert_allclose(wild, base, rtol=1e-6)
    noise = jax.random.normal(jax.random.split(rng, 3)[0], actions.shape)
    np.testing.assert_allclose(base, jnp.mean(jnp.square(actions - noise)[:, 3:]), rtol=1e-5)


def test_loss_without_delays_is_plain_flow_matching(policy):
    obs, actions, _ = random_inputs(B, H, A, O)
    rng = jax.random.key(2)
    k_noise, k_time, _ = jax.random.split(rng, 3)
    noise = jax.random.normal(k_noise, actions.shape)
    tau = jax.random.uniform(k_time, (B, 1))
    x_t = (1 - tau[..., None]) * noise + tau[..., None] * actions
    expected = jnp.mean(jnp.square(policy(obs, x_t, jnp.broadcast_to(tau, (B, H))) - (actions - noise)))
    np.testing.assert_allclose(flow_matching_loss(policy, rng, obs, actions), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="max_delay"):
        flow_matching_loss(policy, rng, obs, actions, TrainingDelays(max_delay=H))


def test_loss_gradient_trains(policy):
    """A few Adam steps on a fixed batch lower the loss (the model and loss are wired for training)."""
    import optax

    obs, actions, _ = random_inputs(B, H, A, O)
    graphdef, params = nnx.split(policy)
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, rng):
        loss, grads = jax.value_and_grad(lambda p: flow_matching_loss(nnx.merge(graphdef, p), rng, obs, actions,
                                                                      TrainingDelays()))(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state, loss

    eval_rng = jax.random.key(99)
    before = flow_matching_loss(nnx.merge(graphdef, params), eval_rng, obs, actions, TrainingDelays())
    for i in range(30):
        params, state, _ = step(params, state, jax.random.key(i))
    after = flow_matching_loss(nnx.merge(graphdef, params), eval_rng, obs, actions, TrainingDelays())
    assert after < 0.8 * before
