"""Serving real flow policies: the JAX backend (batched == alone, one compilation per bucket, the
in-process sampler's chunks for the same seed), TrainedPrefix's trained range, checkpoint lookup, the
serve command's flags, and the PyTorch backend."""

from __future__ import annotations

import numpy as np
import pytest

from rtchunk.methods import RTC, MethodSettings
from rtchunk.serving.backends import SampleBatch
from rtchunk.serving.checkpoint import find_checkpoint, load_backend
from rtchunk.serving.client import RemotePolicy, ServerError
from rtchunk.serving.server import PolicyServer, ServerConfig
from serving_helpers import ACT, H, LEVEL, OBS, TRAINED_MAX_DELAY, write_checkpoints


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return write_checkpoints(tmp_path_factory.mktemp("serving_ckpt"))


@pytest.fixture(scope="module")
def backend(paths):
    backend, path = load_backend(paths["run"], max_batch=4)
    assert path == paths["last"]
    return backend


def batch_of(n: int, seed: int = 0) -> SampleBatch:
    rng = np.random.default_rng(seed)
    s = rng.integers(2, 6, n).astype(np.int32)
    d = np.array([rng.integers(0, H - si + 1) for si in s], np.int32)
    prev = rng.normal(size=(n, H, ACT)).astype(np.float32)
    for i in range(n):
        prev[i, H - s[i]:] = 0.0
    return SampleBatch(rng.normal(size=(n, OBS)).astype(np.float32), prev, d, s,
                       rng.integers(0, 2**32, n, dtype=np.uint32), rng.integers(0, 100, n).astype(np.uint32))


def row(batch: SampleBatch, i: int) -> SampleBatch:
    return SampleBatch(*(getattr(batch, f)[i:i + 1] for f in SampleBatch.__dataclass_fields__))


def test_served_methods_follow_the_checkpoint(backend, paths):
    assert list(backend.methods) == ["naive", "rtc", "rtc_linear", "hard_mask", "jacobian_free", "bid"]
    assert backend.max_trained_delay is None and backend.buckets == (1, 2, 4)
    prefix, _ = load_backend(paths["prefix_run"], max_batch=4)
    assert "trained_prefix" in prefix.methods and prefix.max_trained_delay == TRAINED_MAX_DELAY


def test_a_batched_chunk_equals_the_chunk_the_request_gets_alone_and_compiles_once_per_bucket(backend):
    batch = batch_of(3)
    together = backend.sample("rtc", batch)  # bucket 4, one row of padding
    assert together.shape == (3, H, ACT) and np.isfinite(together).all()
    for i in range(3):
        np.testing.assert_array_equal(backend.sample("rtc", row(batch, i))[0], together[i])
    compiled = backend.compiled_variants
    for seed in range(1, 4):  # other delays, execute horizons, leftovers and sizes: no new compilation
        other = batch_of(1 + seed % 3, seed)
        backend.sample("rtc", other if len(other) != 2 else row(other, 0))
    assert backend.compiled_variants == compiled == 2


def test_a_request_with_a_seed_gets_the_in_process_samplers_chunk(backend, paths):
    from rtchunk.checkpoints import load_policy
    from rtchunk.policy_adapter import FlowChunkPolicy

    policy, _ = load_policy(paths["last"])
    seed = 1234
    local = FlowChunkPolicy(policy, RTC(), seed=seed)
    b = batch_of(3, seed=11)
    # FlowChunkPolicy's call k draws its noise from (seed, k): so does a request with noise index k.
    b = SampleBatch(b.observation, b.prev_chunk, b.inference_delay, b.execute_horizon,
                    np.full(3, seed, np.uint32), np.arange(3, dtype=np.uint32))
    served = backend.sample("rtc", b)
    for i in range(3):
        s, d = int(b.execute_horizon[i]), int(b.inference_delay[i])
        expected = local(b.observation[i], b.prev_chunk[i, : H - s], d, s)
        np.testing.assert_allclose(served[i], expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(served[0], served[1])


def test_trained_prefix_is_served_within_its_trained_range_only(paths):
    backend, _ = load_backend(paths["prefix_run"], max_batch=1, method_names=("naive", "trained_prefix"))
    with PolicyServer(backend, ServerConfig(port=0, method="trained_prefix")).start() as server:
        with RemotePolicy(server.url) as policy:
            left = np.random.default_rng(0).normal(size=(5, ACT)).astype(np.float32)
            chunk = policy(np.ones(OBS, np.float32), left, TRAINED_MAX_DELAY, 3)
            np.testing.assert_array_equal(chunk[:TRAINED_MAX_DELAY], left[:TRAINED_MAX_DELAY])
            with pytest.raises(ServerError, match=r"rtc/inference_delay: .*trained with delays up to 2"):
                policy(np.ones(OBS, np.float32), left, TRAINED_MAX_DELAY + 1, 3)


def test_trained_prefix_needs_a_prefix_trained_checkpoint(paths):
    with pytest.raises(ValueError, match="--method trained_prefix needs a model trained with prefix conditioning"):
        load_backend(paths["run"], default_method="trained_prefix")


def test_find_checkpoint(paths, tmp_path):
    assert find_checkpoint(paths["run"]) == paths["last"]
    assert find_checkpoint(paths["run"] / LEVEL) == paths["last"]
    assert find_checkpoint(paths["last"]) == paths["last"]
    assert find_checkpoint(paths["run"], LEVEL) == paths["last"]
    with pytest.raises(ValueError, match="^--policy-dir: no trained policy at"):
        find_checkpoint(tmp_path / "nothing")
    with pytest.raises(ValueError, match="^--policy-dir: no policy checkpoint for level 'other_level'"):
        find_checkpoint(paths["run"], "other_level")
    import shutil

    shutil.copytree(paths["run"] / LEVEL, tmp_path / "two" / "a")
    shutil.copytree(paths["run"] / LEVEL, tmp_path / "two" / "b")
    with pytest.raises(ValueError, match=r"^--level: .* several levels \(a, b\)"):
        find_checkpoint(tmp_path / "two")


def test_serve_flags_are_checked_with_their_names(tmp_path):
    from rtchunk.commands.serve import ServeConfig

    with pytest.raises(ValueError, match="^--num-flow-steps must be"):
        ServeConfig(policy_dir=tmp_path, num_flow_steps=0)
    with pytest.raises(ValueError, match="^--backend must be one of jax, torch"):
        ServeConfig(policy_dir=tmp_path, backend="tf")
    with pytest.raises(ValueError, match="^--max-batch must be"):
        ServeConfig(policy_dir=tmp_path, server=ServerConfig(max_batch=0))
    with pytest.raises(ValueError, match="^--max-guidance-weight|max_guidance_weight"):
        ServeConfig(policy_dir=tmp_path, method_settings=MethodSettings(max_guidance_weight=-1.0))


def test_the_torch_backend_gets_the_torch_adapters_chunk_for_the_same_seed(paths):
    from rtchunk.torch import TorchChunkPolicy
    from rtchunk.torch import load_policy as load_torch_policy

    backend, _ = load_backend(paths["run"], backend="torch")
    assert "bid" not in backend.methods and "rtc" in backend.methods
    policy, _ = load_torch_policy(paths["last"])
    batch = batch_of(3, seed=11)
    batch = SampleBatch(batch.observation, batch.prev_chunk, batch.inference_delay, batch.execute_horizon,
                        batch.seed, np.zeros(3, np.uint32))
    served = backend.sample("rtc", batch)  # rows 0 and 1 share an execute horizon: one call
    for i in range(3):
        s, d = int(batch.execute_horizon[i]), int(batch.inference_delay[i])
        local = TorchChunkPolicy.from_flow_policy(policy, method=RTC(), seed=int(batch.seed[i]))
        expected = local(batch.observation[i], batch.prev_chunk[i, : H - s], d, s)
        np.testing.assert_allclose(served[i], expected, rtol=1e-5, atol=1e-5)
