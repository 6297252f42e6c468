"""The papers' Kinetix environment stack as pure, jittable functions over explicit state.

One environment object serves many levels: a level is an argument (``LevelArrays``), never part of
the compiled function, so ``jax.jit(env.step)`` compiles once for every level of the same layout.
Auto-reset replays the same level. The stack, innermost first (as in the papers' code):

* Gaussian action noise (std 0.1) added to the commanded action; Kinetix then clips it (motors to
  [-1, 1], thrusters to [0, 1]). Used in training, data generation and evaluation alike.
* Observation history: the last ``obs_history`` symbolic observations, flattened (experts: 4; after a
  reset the history is the first observation repeated).
* The previous commanded action appended (experts; zeros after a reset).
* Dense distance shaping for expert training: each step costs distance / 6 / max_timesteps unless the
  step is rewarded, and an episode that ends early pays the remaining steps' cost at once.
* Episode statistics: return, length and solved at the end of each episode (in ``info``).

With ``shrink=True`` the physics runs on levels compacted to their used slots (``rtchunk.kinetix.shrink``)
and the observation is computed on the state scattered back into the full layout, so it is exactly the
full level's observation: policies do not know (or care) whether the physics was shrunk.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from kinetix.environment.env_state import EnvParams, StaticEnvParams
from kinetix.environment.env_state import EnvState as PhysicsState

from rtchunk.kinetix.levels import Level
from rtchunk.kinetix.paper import ACTION_NOISE_STD, EPISODE_STEPS
from rtchunk.kinetix.shrink import SlotCounts, SlotMap, common_counts, expand_state, shrink_level, shrunk_static_params


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Which wrappers the stack applies. Defaults: the flow policy's environment (training data and eval)."""

    action_noise_std: float = ACTION_NOISE_STD
    obs_history: int = 1
    """Observations stacked into one (the papers' experts: 4)."""
    prev_action: bool = False
    """Append the previous commanded action to the observation (the papers' experts)."""
    dense_reward: bool = False
    """The papers' distance-shaped reward for expert training."""
    max_timesteps: int = EPISODE_STEPS
    shrink: bool = False
    """Simulate levels compacted to the slots they use (faster; see rtchunk.kinetix.shrink)."""
    compact_obs: bool = False
    """Observe the compacted level (needs ``shrink``): Kinetix's symbolic observation of the used slots only,
    the full layout's entries less those that are always 0 (``KinetixEnv.full_obs_index``). For PPO
    experts, whose first layer over the stacked frames is most of their cost; the flow policy always sees
    the full layout (``flow_observation``)."""

    def __post_init__(self):
        if not self.action_noise_std >= 0:
            raise ValueError(f"action_noise_std must be >= 0, got {self.action_noise_std}")
        if not isinstance(self.obs_history, int) or self.obs_history < 1:
            raise ValueError(f"obs_history must be an integer >= 1, got {self.obs_history!r}")
        if not isinstance(self.max_timesteps, int) or self.max_timesteps < 1:
            raise ValueError(f"max_timesteps must be an integer >= 1, got {self.max_timesteps!r}")
        if self.compact_obs and not self.shrink:
            raise ValueError("compact_obs observes the shrunk level: it needs shrink=True")


POLICY_ENV = EnvConfig()
"""The environment the flow policies are trained (from data) and evaluated in."""
EXPERT_ENV = EnvConfig(obs_history=4, prev_action=True, dense_reward=True)
"""The environment the PPO experts are trained in."""


@struct.dataclass
class LevelArrays:
    """A level as the environment takes it: the initial physics state, and the slot map when shrunk."""

    state: PhysicsState
    slots: SlotMap | None = None


@struct.dataclass
class EnvState:
    physics: PhysicsState
    history: jax.Array  # [obs_history, base_obs_dim], newest last
    prev_action: jax.Array  # [action_dim]
    steps: jax.Array  # steps into the current episode (int32)
    episode_return: jax.Array  # float32


class KinetixEnv:
    """reset/step of one environment; vmap them (or use the ``*_batch`` helpers) for many."""

    def __init__(
        self,
        config: EnvConfig,
        static_env_params: StaticEnvParams,
        env_params: EnvParams,
        full_static_env_params: StaticEnvParams | None = None,
    ):
        from kinetix.environment.env import make_kinetix_env
        from kinetix.environment.spaces import ActionType, ObservationType
        from kinetix.environment.utils import create_empty_env
        from kinetix.render.renderer_symbolic_flat import make_render_symbolic

        self.config = config
        self.static_env_params = static_env_params
        self.full_static_env_params = full_static_env_params or static_env_params
        self.env_params = env_params.replace(max_timesteps=config.max_timesteps)
        self.shrunk = self.full_static_env_params != static_env_params
        self._physics = make_kinetix_env(
            ActionType.CONTINUOUS, ObservationType.SYMBOLIC_FLAT, None, self.env_params, static_env_params,
            auto_reset=False,
        )
        self._render_full = make_render_symbolic(self.env_params, self.full_static_env_params)
        self._render_compact = make_render_symbolic(self.env_params, static_env_params)
        self.num_motors = static_env_params.num_motor_bindings
        """Action dimensions [0, num_motors) drive motors (in [-1, 1]); the rest fire thrusters (in [0, 1])."""
        self.action_dim = static_env_params.num_motor_bindings + static_env_params.num_thruster_bindings
        full_empty = jax.eval_shape(lambda: create_empty_env(self.full_static_env_params))
        self.full_base_obs_dim = int(jax.eval_shape(self._render_full, full_empty).shape[-1])
        self.base_obs_dim = self.full_base_obs_dim
        """Size of one symbolic observation (before history and previous action)."""
        if config.compact_obs:
            empty = jax.eval_shape(lambda: create_empty_env(static_env_params))
            self.base_obs_dim = int(jax.eval_shape(self._render_compact, empty).shape[-1])

    @property
    def obs_dim(self) -> int:
        return self.base_obs_dim * self.config.obs_history + (self.action_dim if self.config.prev_action else 0)

    @property
    def full_obs_dim(self) -> int:
        """``obs_dim`` had the observation been rendered in the full layout."""
        return self.full_base_obs_dim * self.config.obs_history + (self.action_dim if self.config.prev_action else 0)

    def full_obs_index(self, level: LevelArrays) -> jax.Array:
        """For each entry of this environment's observation of ``level``, its index in the full-layout
        observation: ``obs == full_obs[index]`` in every state. The full layout only adds entries that are
        always 0 (Kinetix zeroes inactive slots), so a network on the compact observation whose first layer
        is the full network's rows ``index`` computes the full network exactly. Traceable (the slot map may
        be a traced argument)."""
        if not self.config.compact_obs:
            return jnp.arange(self.obs_dim)
        full, small, slots = self.full_static_env_params, self.static_env_params, level.slots
        fp, fc, fj, ft = _feature_widths(self.env_params, full)

        def kept_polygons(static):  # the renderer leaves out the fixated walls and ceiling (slots 1 .. f-1)
            return [0] + list(range(static.num_static_fixated_polys, static.num_polygons))

        row_of = np.full(full.num_polygons, -1)
        row_of[kept_polygons(full)] = np.arange(len(kept_polygons(full)))
        polygon_rows = jnp.asarray(row_of)[slots.polygon[np.array(kept_polygons(small))]]
        num_shapes = full.num_polygons + full.num_circles
        shape = jnp.concatenate([slots.polygon, full.num_polygons + slots.circle])  # compact -> full shape index
        joint_width, thruster_width = fj + 2 * num_shapes, ft + num_shapes
        circles_at = len(kept_polygons(full)) * fp
        joints_at = circles_at + full.num_circles * fc
        thrusters_at = joints_at + full.num_joints * joint_width
        gravity_at = thrusters_at + full.num_thrusters * thruster_width
        joint_cols = jnp.concatenate([jnp.arange(fj), fj + shape, fj + num_shapes + shape])
        thruster_cols = jnp.concatenate([jnp.arange(ft), ft + shape])
        frame = jnp.concatenate([
            (polygon_rows[:, None] * fp + jnp.arange(fp)).reshape(-1),
            (circles_at + slots.circle[:, None] * fc + jnp.arange(fc)).reshape(-1),
            (joints_at + slots.joint[:, None] * joint_width + joint_cols).reshape(-1),
            (thrusters_at + slots.thruster[:, None] * thruster_width + thruster_cols).reshape(-1),
            jnp.array([gravity_at]),
        ])
        parts = [k * self.full_base_obs_dim + frame for k in range(self.config.obs_history)]
        if self.config.prev_action:
            parts.append(self.config.obs_history * self.full_base_obs_dim + jnp.arange(self.action_dim))
        return jnp.concatenate(parts).astype(jnp.int32)

    def _key(self):
        return (self.config, self.static_env_params, self.full_static_env_params, self.env_params)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, KinetixEnv) and self._key() == other._key()

    def __repr__(self):
        return f"KinetixEnv({self.config}, shrunk={self.shrunk}, obs_dim={self.obs_dim}, action_dim={self.action_dim})"

    # -- observations ------------------------------------------------------------------------------
    def full_layout(self, physics: PhysicsState, level: LevelArrays) -> PhysicsState:
        """The physics state in the full (padded) layout: itself, or scattered back when shrunk."""
        if not self.shrunk:
            return physics
        return expand_state(physics, level.slots, self.full_static_env_params)

    def _full_frame(self, physics: PhysicsState, level: LevelArrays) -> jax.Array:
        return self._render_full(self.full_layout(physics, level))

    def _base_obs(self, physics: PhysicsState, level: LevelArrays) -> jax.Array:
        if self.config.compact_obs:
            return self._render_compact(physics)
        return self._full_frame(physics, level)

    def flow_observation(self, state: EnvState, level: LevelArrays) -> jax.Array:
        """What the flow policy sees in ``state``, whatever this environment observes: the newest frame,
        in the full layout, without history or previous action."""
        if self.config.compact_obs:
            return self._full_frame(state.physics, level)
        return state.history[-1]

    def _obs(self, history: jax.Array, prev_action: jax.Array) -> jax.Array:
        parts = [history.reshape(-1)]
        if self.config.prev_action:
            parts.append(prev_action)
        return jnp.concatenate(parts) if len(parts) > 1 else parts[0]

    # -- reset / step ------------------------------------------------------------------------------
    def reset(self, rng: jax.Array, level: LevelArrays) -> tuple[jax.Array, EnvState]:
        """(obs [obs_dim], state) at the start of the level. ``rng`` is unused (levels are deterministic)."""
        del rng
        physics = jax.tree.map(jnp.asarray, level.state)
        base = self._base_obs(physics, level)
        state = EnvState(
            physics=physics,
            history=jnp.repeat(base[None], self.config.obs_history, axis=0),
            prev_action=jnp.zeros(self.action_dim, jnp.float32),
            steps=jnp.int32(0),
            episode_return=jnp.float32(0.0),
        )
        return self._obs(state.history, state.prev_action), state

    def step(
        self, rng: jax.Array, state: EnvState, action: jax.Array, level: LevelArrays
    ) -> tuple[jax.Array, EnvState, jax.Array, jax.Array, dict]:
        """(obs, state, reward, done, info); when done, obs and state are already those of the replayed level.

        ``info`` holds Kinetix's ``GoalR`` and ``distance``, ``env_reward`` (Kinetix's reward before the
        dense shaping), ``returned_episode`` (= done),
        ``returned_episode_returns``, ``returned_episode_lengths`` and ``returned_episode_solved``, which
        are meaningful where ``returned_episode`` is true.
        """
        action = jnp.asarray(action, jnp.float32)
        noise_key, step_key = jax.random.split(rng)
        noisy = action + self.config.action_noise_std * jax.random.normal(noise_key, action.shape)
        _, physics, reward, done, info = self._physics.step_env(step_key, state.physics, noisy, self.env_params)
        reward = jnp.asarray(reward, jnp.float32)
        env_reward = reward
        if self.config.dense_reward:
            max_t = self.env_params.max_timesteps
            penalty = jnp.where(reward > 0, 0.0, info["distance"] / 6.0 / max_t)
            reward = reward - jnp.where(done, (max_t - state.steps) * penalty, penalty)

        episode_return = state.episode_return + reward
        length = state.steps + 1
        info = dict(info)
        info["env_reward"] = env_reward
        info["returned_episode"] = done
        info["returned_episode_returns"] = episode_return
        info["returned_episode_lengths"] = length
        info["returned_episode_solved"] = done & info["GoalR"]

        stepped_base = self._base_obs(physics, level)
        history = jnp.concatenate([state.history[1:], stepped_base[None]], axis=0)
        _, fresh = self.reset(rng, level)
        stepped = EnvState(physics, history, action, length, episode_return)
        state = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, stepped)
        return self._obs(state.history, state.prev_action), state, reward, done, info

    # -- batches -----------------------------------------------------------------------------------
    def reset_batch(self, rng: jax.Array, level: LevelArrays, num_envs: int) -> tuple[jax.Array, EnvState]:
        """``num_envs`` copies of the level: (obs [N, obs_dim], state with leading axis N)."""
        return jax.vmap(self.reset, in_axes=(0, None))(jax.random.split(rng, num_envs), level)

    def step_batch(self, rng: jax.Array, state: EnvState, action: jax.Array, level: LevelArrays):
        """Step N environments of one level (one key split N ways); action is [N, action_dim]."""
        keys = jax.random.split(rng, action.shape[0])
        return jax.vmap(self.step, in_axes=(0, 0, 0, None))(keys, state, action, level)


def _feature_widths(env_params: EnvParams, static: StaticEnvParams) -> tuple[int, int, int, int]:
    """Per-entity feature widths of Kinetix's symbolic observation (polygon, circle, joint and thruster,
    before the one-hot shape indices): the same at every slot count."""
    from kinetix.environment.utils import create_empty_env
    from kinetix.render.renderer_symbolic_common import (make_circle_features, make_joint_features,
                                                           make_polygon_features, make_thruster_features)

    state = jax.eval_shape(lambda: create_empty_env(static))
    shapes = [jax.eval_shape(lambda st, fn=fn: fn(st, env_params, static), state)[0].shape[-1] for fn in (
        make_polygon_features, make_circle_features, make_joint_features, make_thruster_features)]
    return tuple(int(w) for w in shapes)


def make_env(levels: Sequence[Level], config: EnvConfig = POLICY_ENV) -> tuple[KinetixEnv, list[LevelArrays]]:
    """One environment for all ``levels`` (they must share parameters) and each level's arrays.

    With ``config.shrink`` every level is compacted to the slots the largest of them needs, so the
    arrays keep one layout and one compiled function serves them all.
    """
    if not levels:
        raise ValueError("levels must hold at least one level")
    first = levels[0]
    for lvl in levels[1:]:
        if lvl.static_env_params != first.static_env_params:
            raise ValueError(f"levels {first.name} and {lvl.name} have different static parameters (padding)")
        if lvl.env_params != first.env_params:
            raise ValueError(f"levels {first.name} and {lvl.name} have different environment parameters")
    if not config.shrink:
        env = KinetixEnv(config, first.static_env_params, first.env_params)
        return env, [LevelArrays(lvl.state) for lvl in levels]
    counts = common_counts(levels)
    arrays = []
    for lvl in levels:
        state, _, slots = shrink_level(lvl, counts)
        arrays.append(LevelArrays(state, slots))
    small = shrunk_static_params(first.static_env_params, counts)
    return KinetixEnv(config, small, first.env_params, first.static_env_params), arrays


def slot_counts(env: KinetixEnv) -> SlotCounts:
    p = env.static_env_params
    return SlotCounts(p.num_polygons, p.num_circles, p.num_joints, p.num_thrusters)


def stack_levels(arrays: Sequence[LevelArrays]) -> LevelArrays:
    """Levels stacked along a new leading axis, for vmapping one function over levels."""
    # numpy on the host: stacking leaf by leaf with jnp would compile a tiny program per leaf shape.
    return jax.tree.map(lambda *x: np.stack([np.asarray(v) for v in x]), *arrays)
