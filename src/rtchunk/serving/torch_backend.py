"""The PyTorch backend: the port of the flow policy (``rtchunk.torch``) behind the same server.

Requests of a batch that share an execute horizon are sampled in one ``rtchunk.torch.sample_chunk``
call (one delay per request); each request draws its noise from its own ``torch.Generator`` seeded from
(seed, noise_index), so a request with ``rtc/seed = n`` gets the chunk ``TorchChunkPolicy(seed=n)``
returns on its first call. BID is not served here (its candidates' noise would need a generator per
request inside the sampler).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rtchunk.methods import DEFAULT_NUM_STEPS, MethodSettings, make_method
from rtchunk.serving.backends import SampleBatch, served_method_names


class TorchBackend:
    def __init__(self, policy, *, method_names: Sequence[str] | None = None, settings: MethodSettings = MethodSettings(),
                 num_steps: int = DEFAULT_NUM_STEPS, max_trained_delay: int | None = None, description: str = ""):
        if method_names is None:
            method_names = served_method_names(include_trained_prefix=max_trained_delay is not None, exclude=("bid",))
        if "bid" in method_names:
            raise ValueError("--method bid is served by the JAX backend only")
        self.policy = policy.eval()
        param = next(policy.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.obs_dim = int(policy.obs_dim)
        self.horizon = int(policy.config.horizon)
        self.action_dim = int(policy.action_dim)
        self.num_steps = int(num_steps)
        self.max_trained_delay = None if max_trained_delay is None else int(max_trained_delay)
        self.methods = {name: make_method(name, settings) for name in method_names}
        self.description = description or f"torch flow policy (obs {self.obs_dim}, chunk {self.horizon}x{self.action_dim})"

    def _noise(self, seed: int, index: int) -> torch.Tensor:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(seed) if index == 0 else int(seed) + (int(index) << 32))
        return torch.randn((1, self.horizon, self.action_dim), generator=generator, dtype=self.dtype, device=self.device)

    def sample(self, method: str, batch: SampleBatch) -> np.ndarray:
        from rtchunk.torch.sampling import Naive, sample_chunk

        m = self.methods[method]
        out = np.empty((len(batch), self.horizon, self.action_dim), np.float32)
        for s in np.unique(batch.execute_horizon):
            rows = np.flatnonzero(batch.execute_horizon == s)
            noise = torch.cat([self._noise(batch.seed[i], batch.noise_index[i]) for i in rows])
            obs = torch.as_tensor(batch.observation[rows], dtype=self.dtype, device=self.device)
            prev = torch.as_tensor(batch.prev_chunk[rows], dtype=self.dtype, device=self.device)
            delay = torch.as_tensor(batch.inference_delay[rows].astype(np.int64), device=self.device)
            with torch.no_grad():
                chunk = sample_chunk(self.policy.velocity_fn(obs), noise, m,
                                     prev_chunk=None if isinstance(m, Naive) else prev, inference_delay=delay,
                                     execute_horizon=int(s), num_steps=self.num_steps)
            out[rows] = chunk.to(torch.float32).cpu().numpy()
        return out
