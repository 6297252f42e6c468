"""A tiny continuous-control environment with the KinetixEnv interface, for fast PPO/pipeline tests.

A point in the plane must reach a target (the level: its start and target) within ``horizon`` steps;
two motor dimensions move it, one thruster dimension in [0, 1] only costs reward. Solved when the
episode ends within 0.15 of the target.
"""

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class ToyState:
    pos: jax.Array
    steps: jax.Array
    ret: jax.Array


@struct.dataclass
class ToyLevel:
    start: jax.Array
    target: jax.Array


class ToyEnv:
    obs_dim = 4
    action_dim = 3
    num_motors = 2

    def __init__(self, horizon: int = 16):
        self.horizon = horizon

    def __hash__(self):
        return hash(("toy", self.horizon))

    def __eq__(self, other):
        return isinstance(other, ToyEnv) and other.horizon == self.horizon

    def _obs(self, state, level):
        return jnp.concatenate([state.pos, level.target - state.pos])

    def reset(self, rng, level):
        state = ToyState(jnp.asarray(level.start, jnp.float32), jnp.int32(0), jnp.float32(0))
        return self._obs(state, level), state

    def step(self, rng, state, action, level):
        pos = state.pos + 0.25 * action[:2]
        dist = jnp.linalg.norm(level.target - pos)
        reward = -dist / self.horizon - 0.05 * action[2]
        steps = state.steps + 1
        done = steps >= self.horizon
        ret = state.ret + reward
        info = {"returned_episode": done, "returned_episode_returns": ret, "returned_episode_lengths": steps,
                "returned_episode_solved": done & (dist < 0.15)}
        _, fresh = self.reset(rng, level)
        nxt = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, ToyState(pos, steps, ret))
        return self._obs(nxt, level), nxt, reward, done, info

    def reset_batch(self, rng, level, num_envs):
        return jax.vmap(self.reset, in_axes=(0, None))(jax.random.split(rng, num_envs), level)

    def step_batch(self, rng, state, action, level):
        keys = jax.random.split(rng, action.shape[0])
        return jax.vmap(self.step, in_axes=(0, 0, 0, None))(keys, state, action, level)


def toy_level(start=(0.0, 0.0), target=(1.0, -0.5)) -> ToyLevel:
    return ToyLevel(jnp.asarray(start, jnp.float32), jnp.asarray(target, jnp.float32))
