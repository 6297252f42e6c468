"""The PyTorch port loads a JAX checkpoint and gives the same chunk for every method (max abs diff <= 1e-4)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flax.nnx as nnx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _torch_policies import ACTION_DIM, OBS_DIM, SMALL, saved_random_policy  # noqa: E402

from rtchunk import sampling as js  # noqa: E402
from rtchunk.checkpoints import CheckpointError, save  # noqa: E402
from rtchunk.torch import model as tm  # noqa: E402
from rtchunk.torch import sampling as ts  # noqa: E402

B, H = 4, SMALL.horizon
TOLERANCE = 1e-4
DELAYS = np.array([0, 1, 3, 5])
EXECUTE = 3
NUM_BID = 5


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch_parity")
    strong, strong_dir = saved_random_policy(root / "strong", seed=0)
    weak, weak_dir = saved_random_policy(root / "weak", seed=1)
    return {"jax": strong, "torch": tm.load_policy(strong_dir)[0], "jax_weak": weak, "torch_weak": tm.load_policy(weak_dir)[0],
            "dir": strong_dir}


@pytest.fixture(scope="module")
def inputs():
    rs = np.random.RandomState(0)
    return {
        "obs": rs.randn(B, OBS_DIM).astype(np.float32),
        "noise": rs.randn(B, H, ACTION_DIM).astype(np.float32),
        "prev": rs.randn(B, H, ACTION_DIM).astype(np.float32),
        "extra": np.array(jax.random.normal(jax.random.key(5), (NUM_BID - 1, B, H, ACTION_DIM))),
    }


def test_random_weights_exercise_every_block(policies, inputs):
    """Guard against the identity-block trap: zeroing one block's output changes the velocity."""
    policy = tm.load_policy(policies["dir"])[0]
    obs, x = torch.from_numpy(inputs["obs"]), torch.from_numpy(inputs["noise"])
    with torch.no_grad():
        before = policy(obs, x, torch.tensor(0.3))
        policy.blocks[-1].channel_out.weight.zero_()
        after = policy(obs, x, torch.tensor(0.3))
    assert (before - after).abs().max() > 1e-2


@pytest.mark.parametrize("tau_shape", [(), (B,), (B, H)])
def test_velocity_matches_jax(policies, inputs, tau_shape):
    tau = np.asarray(np.random.RandomState(1).rand(*tau_shape), np.float32)
    want = np.asarray(nnx.jit(lambda p, *a: p(*a))(policies["jax"], jnp.asarray(inputs["obs"]), jnp.asarray(inputs["noise"]), jnp.asarray(tau)))
    with torch.no_grad():
        got = policies["torch"](torch.from_numpy(inputs["obs"]), torch.from_numpy(inputs["noise"]), torch.from_numpy(tau))
    # Not bit-exact: XLA and PyTorch round the embedding's float32 pow/linspace differently, and the
    # highest frequency (period 4e-3) turns one ulp of its factor into ~1e-4 rad of phase.
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=TOLERANCE)


def _methods(policies, inputs):
    key = jax.random.key(5)  # the JAX BID draws its extra candidates exactly as inputs["extra"]
    extra = torch.from_numpy(inputs["extra"])
    return {
        "naive": (js.Naive(), ts.Naive()),
        "rtc": (js.RTC(), ts.RTC()),
        "rtc linear beta 2": (js.RTC(schedule="linear", max_guidance_weight=2.0), ts.RTC(schedule="linear", max_guidance_weight=2.0)),
        "hard mask": (js.HardMask(), ts.HardMask()),
        "jacobian-free": (js.JacobianFree(), ts.JacobianFree()),
        "trained prefix": (js.TrainedPrefix(), ts.TrainedPrefix()),
        "bid": (js.BID(rng=key, num_samples=NUM_BID), ts.BID(num_samples=NUM_BID, candidate_noise=extra)),
        "bid weak": (
            js.BID(rng=key, num_samples=NUM_BID, top_k=2, weak_velocity_fn=policies["jax_weak"].velocity_fn(jnp.asarray(inputs["obs"]))),
            ts.BID(num_samples=NUM_BID, candidate_noise=extra, top_k=2,
                   weak_velocity_fn=policies["torch_weak"].velocity_fn(torch.from_numpy(inputs["obs"]))),
        ),
    }


METHODS = ["naive", "rtc", "rtc linear beta 2", "hard mask", "jacobian-free", "trained prefix", "bid", "bid weak"]


def _noise_at_1(velocity_fn):
    fn = lambda x, t: -velocity_fn(x, 1 - t)  # noqa: E731
    fn.accepts_broadcast_time = True
    return fn


@pytest.mark.parametrize("name", METHODS)
def test_chunk_matches_jax_for_every_method(policies, inputs, name):
    jax_method, torch_method = _methods(policies, inputs)[name]
    kwargs = dict(inference_delay=DELAYS, execute_horizon=EXECUTE, num_steps=5)
    want = np.asarray(js.sample_chunk(policies["jax"].velocity_fn(jnp.asarray(inputs["obs"])), jnp.asarray(inputs["noise"]),
                                      jax_method, prev_chunk=jnp.asarray(inputs["prev"]), **kwargs))
    velocity_fn = policies["torch"].velocity_fn(torch.from_numpy(inputs["obs"]))
    noise, prev = torch.from_numpy(inputs["noise"]), torch.from_numpy(inputs["prev"])
    got = ts.sample_chunk(velocity_fn, noise, torch_method, prev_chunk=prev, **kwargs).numpy()
    assert np.abs(got - want).max() <= TOLERANCE, np.abs(got - want).max()
    # The same policy seen through LeRobot's convention gives the same chunk.
    if name.startswith("bid weak"):
        torch_method = ts.BID(num_samples=NUM_BID, candidate_noise=torch_method.candidate_noise, top_k=2,
                              weak_velocity_fn=_noise_at_1(torch_method.weak_velocity_fn))
    got_1 = ts.sample_chunk(_noise_at_1(velocity_fn), noise, torch_method, prev_chunk=prev, time_convention="noise_at_1",
                            **kwargs).numpy()
    assert np.abs(got_1 - want).max() <= TOLERANCE, np.abs(got_1 - want).max()
    # The methods differ from one another here, so agreement is not agreement with Naive by accident.
    if name != "naive":
        naive = ts.sample_chunk(velocity_fn, noise, ts.Naive(), **kwargs).numpy()
        assert np.abs(got - naive).max() > 1e-2


def test_load_policy_rejects_a_mismatching_checkpoint(tmp_path, policies):
    meta = json.loads((policies["dir"] / "meta.json").read_text())
    meta.pop("format_version")
    arrays = tm.FlowPolicy(OBS_DIM, ACTION_DIM, SMALL).flax_names()
    wrong = {name: np.zeros((1,), np.float32) for name in arrays}
    save(tmp_path / "wrong", wrong, meta)
    with pytest.raises(CheckpointError, match="in_proj/kernel: expected float32"):
        tm.load_policy(tmp_path / "wrong")
    save(tmp_path / "other", {"w": np.zeros(2, np.float32)}, {"kind": "expert"})
    with pytest.raises(CheckpointError, match="not a flow policy"):
        tm.load_policy(tmp_path / "other")


def test_time_table_matches_dense_time_and_jax(policies, inputs):
    from rtchunk.sampling import TimeTable as JaxTimeTable
    from rtchunk.torch.sampling import TimeTable

    obs, x = torch.from_numpy(inputs["obs"]), torch.from_numpy(inputs["noise"])
    # Any number of distinct times (TrainedPrefix uses two); an index [1, H] broadcasts over the batch.
    for values, rows in (([0.2, 1.0, 0.6], B), ([0.4, 1.0], B), ([0.4, 1.0], 1)):
        values = np.array(values, np.float32)
        index = np.random.RandomState(2).randint(0, len(values), (rows, H))
        with torch.no_grad():
            table = TimeTable(torch.from_numpy(values), torch.from_numpy(index))
            got = policies["torch"](obs, x, table)
            dense = policies["torch"](obs, x, table.dense((B, H)))
        np.testing.assert_allclose(got.numpy(), dense.numpy(), atol=1e-5)
        want = np.asarray(policies["jax"](jnp.asarray(inputs["obs"]), jnp.asarray(inputs["noise"]),
                                          JaxTimeTable(jnp.asarray(values), jnp.asarray(index))))
        np.testing.assert_allclose(got.numpy(), want, atol=TOLERANCE)
