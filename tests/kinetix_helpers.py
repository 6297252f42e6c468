"""Shared, cached inputs for the Kinetix tests: loaded levels, the paper's level files, a tiny policy config."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from rtchunk.model import ModelConfig

TINY_MODEL = ModelConfig(channel_dim=32, channel_hidden_dim=64, token_hidden_dim=16, num_layers=1, horizon=8)
FAST = {"xla_backend_optimization_level": 0}
"""XLA options for test-only jits: physics compiles ~3x faster, runs slower (tiny problems here)."""


@functools.lru_cache(maxsize=None)
def level(name: str = "l/h17_unicycle"):
    from rtchunk.kinetix.levels import load_level

    return load_level(name)


def paper_level_dir() -> Path:
    """The paper's 12 level files: $RTCHUNK_PAPER_LEVELS, <repo>/../shared/levels/paper, or /work/shared/levels/paper."""
    repo = Path(__file__).resolve().parents[1]
    candidates = [os.environ.get("RTCHUNK_PAPER_LEVELS"), repo.parent / "shared" / "levels" / "paper",
                  Path("/work/shared/levels/paper")]
    for c in candidates:
        if c and Path(c).is_dir() and any(Path(c).glob("*.json")):
            return Path(c)
    pytest.skip("the paper's level files are not here: set RTCHUNK_PAPER_LEVELS to a directory holding them "
                "(they are not shipped with the project)")
