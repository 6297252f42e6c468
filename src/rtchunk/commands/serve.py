"""``rtchunk serve``: serve a trained flow policy over openpi's websocket protocol, with RTC and batching."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Literal

import tyro

from rtchunk.methods import DEFAULT_NUM_STEPS, MethodSettings
from rtchunk.serving.checkpoint import BACKENDS
from rtchunk.serving.server import ServerConfig


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    policy_dir: Path
    """A checkpoint, or a `rtchunk train-policy` run (its last epoch is served)."""
    level: str | None = None
    """Which level's policy, when the run holds several."""
    backend: Literal["jax", "torch"] = "jax"
    """jax: the Flax model, batched in one compiled call; torch: the PyTorch port of the same checkpoint."""
    num_flow_steps: int = DEFAULT_NUM_STEPS
    """Euler steps of the flow."""
    warmup: bool = True
    """Compile the default method and naive for every batch-size bucket before listening."""
    server: Annotated[ServerConfig, tyro.conf.arg(name="")] = ServerConfig()
    method_settings: MethodSettings = MethodSettings()
    """The methods' knobs (as in `rtchunk eval`): guidance weight, BID's N and K."""

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not isinstance(self.num_flow_steps, int) or self.num_flow_steps < 1:
            raise ValueError(f"--num-flow-steps must be an integer >= 1, got {self.num_flow_steps!r}")


def main(config: ServeConfig) -> int:
    from rtchunk.serving.checkpoint import load_backend
    from rtchunk.serving.server import PolicyServer

    backend, path = load_backend(config.policy_dir, backend=config.backend, level=config.level,
                                 settings=config.method_settings, num_steps=config.num_flow_steps,
                                 max_batch=config.server.max_batch, default_method=config.server.method)
    server = PolicyServer(backend, config.server)
    if config.warmup and hasattr(backend, "warmup"):
        backend.warmup(tuple(dict.fromkeys((server.served.default_method, "naive"))))

    def ready(s: PolicyServer) -> None:
        print(f"serving {path} ({config.backend}) on {s.url}; methods: {', '.join(s.served.methods)} "
              f"(default {s.served.default_method}); health: http://{s.url[5:]}/healthz", flush=True)

    try:
        server.run(on_ready=ready)
    except KeyboardInterrupt:
        pass
    return 0
