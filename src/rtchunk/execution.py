"""How a controller executes a chunk: the one rule the jitted benchmark harness and the runtime share.

At each step the controller executes the entry of its newest available chunk at the step's position in
that chunk. When that position is at or past the chunk's end (the chunk ran out before the next one
arrived, or the next one arrived already past its end because its actual delay reached H), it holds the
last executed action and the step counts as starved. Works on numpy (the runtime) and jax.numpy (the
harness, batched) alike.
"""

from __future__ import annotations

import numpy as np


def executed_action(chunk_action, index, horizon: int, last_action, xp=np):
    """(action, starved): ``chunk_action`` (the chunk's entry at ``index``, any value where ``index`` is past
    the end) while ``index < horizon``, else ``last_action``. ``index`` may be batched ([B]) with actions [B, A]."""
    if isinstance(index, (int, np.integer)):  # the runtime, once per tick: no array operations on the hot path
        starved = bool(index >= horizon)
        return (last_action if starved else chunk_action), starved
    starved = xp.asarray(index) >= horizon
    action = xp.where(starved[..., None], last_action, chunk_action)
    return action, starved
