"""``rtchunk eval``: the simulated-delay sweep, levels x methods x delays x execute horizons -> one CSV row
each, resumable (``rtchunk.kinetix.sweep``)."""

from __future__ import annotations

from rtchunk.commands import log
from rtchunk.kinetix import sweep
from rtchunk.kinetix.sweep import EvalConfig
from rtchunk.model_config import ModelConfig

PRESETS = {
    "paper": EvalConfig(),
    "cpu": EvalConfig(num_envs=256, shrink=True),
    "smoke": EvalConfig(
        levels=("l/h17_unicycle",), methods=("naive", "rtc"), delays=(1,), num_envs=16, max_timesteps=64,
        shrink=True, fast_compile=True, model=ModelConfig(channel_dim=32, channel_hidden_dim=64,
                                                            token_hidden_dim=16, num_layers=1),
    ),
}
"""Ready-made settings: the papers' sweep, a CPU-sized one, and a seconds-long smoke run."""


def main(config: EvalConfig) -> int:
    path = sweep.run(config, log=log)
    print(f"results: {path}")
    return 0
