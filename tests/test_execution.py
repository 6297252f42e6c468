"""The one stale-chunk rule, on numpy (the runtime) and jax.numpy (the harness)."""

import jax.numpy as jnp
import numpy as np

from rtchunk.execution import executed_action


def test_within_the_chunk_its_entry_runs_past_its_end_the_last_action_is_held():
    chunk = np.arange(8 * 2, dtype=np.float32).reshape(8, 2)
    last = np.array([-1.0, -1.0], np.float32)
    for xp in (np, jnp):
        action, starved = executed_action(chunk[3], 3, 8, last, xp)
        np.testing.assert_array_equal(action, chunk[3])
        assert not bool(starved)
        # A chunk that arrived already past its end (index >= H) is not executed: hold, and count it.
        action, starved = executed_action(chunk[7], 9, 8, last, xp)
        np.testing.assert_array_equal(action, last)
        assert bool(starved)


def test_batched_indices():
    actions = jnp.asarray([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    last = jnp.zeros((3, 2))
    action, starved = executed_action(actions, jnp.asarray([0, 8, 7]), 8, last, jnp)
    np.testing.assert_array_equal(np.asarray(action), [[1, 1], [0, 0], [3, 3]])
    np.testing.assert_array_equal(np.asarray(starved), [False, True, False])
