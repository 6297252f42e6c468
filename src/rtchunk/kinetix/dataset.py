"""Expert datasets: how they are stored, and how behaviour cloning cuts them into action chunks.

A dataset is one checkpoint directory per level (``rtchunk.checkpoints``: safetensors + JSON, written
atomically) holding environment-major arrays, each environment's steps contiguous:

    obs [E, T, O] float32    single-frame observation before the step (what the flow policy sees)
    action [E, T, A] float32 the expert's commanded action (before the environment's action noise)
    done [E, T] bool         the episode ended with this step
    solved, episode_return, episode_length [E, T]   episode statistics, meaningful where done

The chunk at (e, t) is action[e, t : t + H] with every action after the episode's end zeroed (and
nothing read past the end of the recording).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rtchunk import checkpoints

FIELDS = ("obs", "action", "done", "solved", "episode_return", "episode_length")


@dataclasses.dataclass(frozen=True)
class Dataset:
    obs: np.ndarray
    action: np.ndarray
    done: np.ndarray
    solved: np.ndarray
    episode_return: np.ndarray
    episode_length: np.ndarray

    def __post_init__(self):
        e, t = self.done.shape
        for name in FIELDS:
            arr = getattr(self, name)
            if arr.shape[:2] != (e, t):
                raise ValueError(f"{name} must have leading shape [E={e}, T={t}], got {arr.shape}")

    @property
    def num_transitions(self) -> int:
        return int(self.done.size)

    def summary(self) -> dict:
        """Episode statistics of the recording (finished episodes only)."""
        done = self.done.astype(bool)
        n = int(done.sum())
        return {
            "transitions": self.num_transitions,
            "episodes": n,
            "solve_rate": float(self.solved[done].mean()) if n else float("nan"),
            "mean_return": float(self.episode_return[done].mean()) if n else float("nan"),
            "mean_length": float(self.episode_length[done].mean()) if n else float("nan"),
        }


def save(directory: Path, data: Dataset, meta: dict) -> Path:
    arrays = {name: np.asarray(getattr(data, name)) for name in FIELDS}
    return checkpoints.save(directory, arrays, {"kind": "expert_data", **meta, "summary": data.summary()})


def load(directory: Path) -> tuple[Dataset, dict]:
    meta = checkpoints.load_meta(directory)
    if meta.get("kind") != "expert_data":
        raise checkpoints.CheckpointError(f"{directory} holds a {meta.get('kind')!r} checkpoint, not expert data")
    arrays = checkpoints.load_arrays(directory)
    missing = [f for f in FIELDS if f not in arrays]
    if missing:
        raise checkpoints.CheckpointError(f"{directory} is missing dataset arrays: {', '.join(missing)}")
    try:
        return Dataset(**{f: arrays[f] for f in FIELDS}), meta
    except ValueError as e:
        raise checkpoints.CheckpointError(f"{directory} holds inconsistent arrays ({e})") from None


def steps_left(done: np.ndarray) -> np.ndarray:
    """[E, T] int32: how many actions from step t on belong to t's episode (t's own included), counting
    only recorded steps; an unfinished final episode runs to the end of the recording."""
    e, t = done.shape
    left = np.empty((e, t), np.int32)
    run = np.zeros(e, np.int32)
    for i in range(t - 1, -1, -1):
        run = np.where(done[:, i], 1, run + 1)
        left[:, i] = run
    return left


def chunk_actions(action: jax.Array, left: jax.Array, env_idx: jax.Array, step_idx: jax.Array, horizon: int):
    """Chunks [B, H, A] at (env_idx, step_idx) from action [E, T, A] and ``steps_left``; jit-friendly."""
    offsets = jnp.arange(horizon)
    steps = jnp.minimum(step_idx[:, None] + offsets, action.shape[1] - 1)
    chunk = action[env_idx[:, None], steps]
    keep = offsets[None, :] < left[env_idx, step_idx][:, None]
    return jnp.where(keep[..., None], chunk, 0.0)
