"""Shrinking a level to the slots it uses, and measuring how faithful the shrunk physics is.

Physics cost grows with the padded slot counts (every pair of shapes gets a collision manifold), not
with what a level uses. Shrinking keeps only the used polygons, circles, joints and thrusters (plus
the static floor/walls/ceiling polygons), remaps joint and thruster indices, and keeps the action
dimension (motor and thruster *bindings* are unchanged). Kept slots stay in their original order, so
joints are solved in the same order and the kept collision pairs keep their relative order.

The physics is not bit-identical: the solver resolves contacts in batches of 16 pairs, and with fewer
pairs the batches group differently. ``faithfulness`` measures the effect on episode outcomes.

``expand_state`` scatters a shrunk state back into the full layout (inactive slots empty), which is how
the environment produces exactly the full level's observation from a shrunk simulation.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from kinetix.environment.env_state import EnvParams, EnvState, StaticEnvParams

from rtchunk.kinetix.levels import Level


@dataclasses.dataclass(frozen=True)
class SlotCounts:
    polygons: int
    circles: int
    joints: int
    thrusters: int

    def __str__(self):
        return f"{self.polygons}/{self.circles}/{self.joints}/{self.thrusters}"


@struct.dataclass
class SlotMap:
    """For each slot of a shrunk level, the index it had in the full layout (increasing)."""

    polygon: jax.Array  # [P']
    circle: jax.Array  # [C']
    joint: jax.Array  # [J']
    thruster: jax.Array  # [T']
    rr_pairs: jax.Array  # [nrr'] polygon-polygon manifold index in the full layout
    cr_pairs: jax.Array  # [ncr']
    cc_pairs: jax.Array  # [ncc']


def _pairs(static: StaticEnvParams):
    """The pair enumerations jax2d uses (its order: first index major), as python lists."""
    p, c, f = static.num_polygons, static.num_circles, static.num_static_fixated_polys
    cc = [(a, b) for a in range(c) for b in range(c) if a < b]
    cr = [(a, b) for a in range(c) for b in range(p)]
    rr = [(a, b) for a in range(p) for b in range(p) if a < b and not (a < f and b < f)]
    return rr, cr, cc


def _used(state: EnvState, static: StaticEnvParams) -> dict[str, set[int]]:
    p = static.num_polygons
    polys = set(range(static.num_static_fixated_polys)) | set(np.flatnonzero(state.polygon.active).tolist())
    circles = set(np.flatnonzero(state.circle.active).tolist())
    joints = set(np.flatnonzero(state.joint.active).tolist())
    thrusters = set(np.flatnonzero(state.thruster.active).tolist())
    # Shapes an active joint or thruster points at must exist, active or not.
    refs = [int(state.joint.a_index[j]) for j in joints] + [int(state.joint.b_index[j]) for j in joints]
    refs += [int(state.thruster.object_index[t]) for t in thrusters]
    for g in refs:
        (polys if g < p else circles).add(g if g < p else g - p)
    return {"polygons": polys, "circles": circles, "joints": joints, "thrusters": thrusters}


MIN_SLOTS = SlotCounts(polygons=1, circles=2, joints=1, thrusters=1)
"""jax2d needs at least one slot of each kind, and two circles (it enumerates circle pairs)."""


def used_slots(level: Level) -> SlotCounts:
    """How many slots of each kind the level needs (at least ``MIN_SLOTS``, and all static polygons)."""
    used = _used(level.state, level.static_env_params)
    return SlotCounts(*(max(len(used[f.name]), getattr(MIN_SLOTS, f.name)) for f in dataclasses.fields(SlotCounts)))


def common_counts(levels: Sequence[Level]) -> SlotCounts:
    """Slot counts that fit every level (the element-wise maximum)."""
    counts = [used_slots(lvl) for lvl in levels]
    return SlotCounts(*(max(getattr(c, f.name) for c in counts) for f in dataclasses.fields(SlotCounts)))


def shrunk_static_params(static: StaticEnvParams, counts: SlotCounts) -> StaticEnvParams:
    return static.replace(
        num_polygons=counts.polygons,
        num_circles=counts.circles,
        num_joints=counts.joints,
        num_thrusters=counts.thrusters,
    )


def _choose(used: set[int], total: int, count: int, kind: str) -> np.ndarray:
    if len(used) > count:
        raise ValueError(f"the level uses {len(used)} {kind} but only {count} slots were asked for")
    spare = [i for i in range(total) if i not in used][: count - len(used)]
    return np.array(sorted(used | set(spare)), dtype=np.int32)


def shrink_level(level: Level, counts: SlotCounts | None = None) -> tuple[EnvState, StaticEnvParams, SlotMap]:
    """(shrunk state, shrunk static params, slot map); ``counts`` defaults to what the level uses."""
    full = level.static_env_params
    counts = counts or used_slots(level)
    if counts.polygons < full.num_static_fixated_polys:
        raise ValueError(f"polygons must be >= num_static_fixated_polys={full.num_static_fixated_polys}")
    for f in dataclasses.fields(SlotCounts):
        if getattr(counts, f.name) < getattr(MIN_SLOTS, f.name):
            raise ValueError(f"{f.name} must be >= {getattr(MIN_SLOTS, f.name)} (jax2d), got {getattr(counts, f.name)}")
    s = jax.tree.map(np.asarray, level.state)
    used = _used(s, full)
    pm = _choose(used["polygons"], full.num_polygons, counts.polygons, "polygons")
    cm = _choose(used["circles"], full.num_circles, counts.circles, "circles")
    jm = _choose(used["joints"], full.num_joints, counts.joints, "joints")
    tm = _choose(used["thrusters"], full.num_thrusters, counts.thrusters, "thrusters")
    small = shrunk_static_params(full, counts)

    new_index = {int(g): i for i, g in enumerate(pm)}
    new_index.update({full.num_polygons + int(g): small.num_polygons + i for i, g in enumerate(cm)})

    def remap(global_index: np.ndarray) -> np.ndarray:
        # Inactive joints/thrusters may point at dropped shapes; they are masked out, so 0 is harmless.
        return np.array([new_index.get(int(g), 0) for g in global_index], dtype=np.int32)

    rr_full, cr_full, cc_full = (dict((pair, i) for i, pair in enumerate(ps)) for ps in _pairs(full))
    rr_small, cr_small, cc_small = _pairs(small)
    rr_map = np.array([rr_full[(pm[a], pm[b])] for a, b in rr_small], dtype=np.int32)
    cr_map = np.array([cr_full[(cm[a], pm[b])] for a, b in cr_small], dtype=np.int32)
    cc_map = np.array([cc_full[(cm[a], cm[b])] for a, b in cc_small], dtype=np.int32)
    global_map = np.concatenate([pm, full.num_polygons + cm])

    take = lambda tree, idx: jax.tree.map(lambda x: x[idx], tree)  # noqa: E731
    state = s.replace(
        polygon=take(s.polygon, pm),
        circle=take(s.circle, cm),
        joint=take(s.joint, jm).replace(
            a_index=remap(s.joint.a_index[jm]), b_index=remap(s.joint.b_index[jm])
        ),
        thruster=take(s.thruster, tm).replace(object_index=remap(s.thruster.object_index[tm])),
        collision_matrix=s.collision_matrix[np.ix_(global_map, global_map)],
        acc_rr_manifolds=take(s.acc_rr_manifolds, rr_map),
        acc_cr_manifolds=take(s.acc_cr_manifolds, cr_map),
        acc_cc_manifolds=take(s.acc_cc_manifolds, cc_map),
        thruster_bindings=s.thruster_bindings[tm],
        motor_bindings=s.motor_bindings[jm],
        motor_auto=s.motor_auto[jm],
        polygon_shape_roles=s.polygon_shape_roles[pm],
        circle_shape_roles=s.circle_shape_roles[cm],
        polygon_highlighted=s.polygon_highlighted[pm],
        circle_highlighted=s.circle_highlighted[cm],
        polygon_densities=s.polygon_densities[pm],
        circle_densities=s.circle_densities[cm],
    )
    return state, small, SlotMap(pm, cm, jm, tm, rr_map, cr_map, cc_map)


def expand_state(state: EnvState, slots: SlotMap, full: StaticEnvParams) -> EnvState:
    """A shrunk state scattered into the full layout; dropped slots are empty (inactive). Jittable."""
    from kinetix.environment.utils import create_empty_env

    empty = create_empty_env(full)
    global_map = jnp.concatenate([slots.polygon, full.num_polygons + slots.circle])

    def put(template, values, idx):
        return jax.tree.map(lambda t, v: t.at[idx].set(v.astype(t.dtype)), template, values)

    return empty.replace(
        polygon=put(empty.polygon, state.polygon, slots.polygon),
        circle=put(empty.circle, state.circle, slots.circle),
        joint=put(empty.joint, state.joint, slots.joint).replace(
            a_index=empty.joint.a_index.at[slots.joint].set(global_map[state.joint.a_index]),
            b_index=empty.joint.b_index.at[slots.joint].set(global_map[state.joint.b_index]),
        ),
        thruster=put(empty.thruster, state.thruster, slots.thruster).replace(
            object_index=empty.thruster.object_index.at[slots.thruster].set(global_map[state.thruster.object_index])
        ),
        collision_matrix=empty.collision_matrix.at[global_map[:, None], global_map[None, :]].set(state.collision_matrix),
        acc_rr_manifolds=put(empty.acc_rr_manifolds, state.acc_rr_manifolds, slots.rr_pairs),
        acc_cr_manifolds=put(empty.acc_cr_manifolds, state.acc_cr_manifolds, slots.cr_pairs),
        acc_cc_manifolds=put(empty.acc_cc_manifolds, state.acc_cc_manifolds, slots.cc_pairs),
        gravity=state.gravity,
        thruster_bindings=empty.thruster_bindings.at[slots.thruster].set(state.thruster_bindings),
        motor_bindings=empty.motor_bindings.at[slots.joint].set(state.motor_bindings),
        motor_auto=empty.motor_auto.at[slots.joint].set(state.motor_auto),
        polygon_shape_roles=empty.polygon_shape_roles.at[slots.polygon].set(state.polygon_shape_roles),
        circle_shape_roles=empty.circle_shape_roles.at[slots.circle].set(state.circle_shape_roles),
        polygon_highlighted=empty.polygon_highlighted.at[slots.polygon].set(state.polygon_highlighted),
        circle_highlighted=empty.circle_highlighted.at[slots.circle].set(state.circle_highlighted),
        polygon_densities=empty.polygon_densities.at[slots.polygon].set(state.polygon_densities),
        circle_densities=empty.circle_densities.at[slots.circle].set(state.circle_densities),
        timestep=state.timestep,
        last_distance=state.last_distance,
    )


# -- faithfulness ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Faithfulness:
    """Full vs shrunk physics on identical open-loop action sequences (first episode of each)."""

    level: str
    counts: str
    episodes: int
    outcome_match: float
    """Fraction of episodes ending the same way (solved / failed / timed out)."""
    exact_match: float
    """Fraction ending the same way at the same step."""
    solved_full: float
    solved_shrunk: float
    failed_full: float
    failed_shrunk: float
    median_agree_steps: float
    """Median number of steps before any used shape's position differs by more than 1e-3."""


def _raw_env(static: StaticEnvParams, env_params: EnvParams):
    from kinetix.environment.env import make_kinetix_env
    from kinetix.environment.spaces import ActionType, ObservationType

    return make_kinetix_env(
        ActionType.CONTINUOUS, ObservationType.SYMBOLIC_FLAT, None, env_params, static, auto_reset=False
    )


def open_loop_actions(rng: jax.Array, episodes: int, steps: int, action_dim: int, hold: int = 8) -> jax.Array:
    """Random actions in [-1, 1], each held for ``hold`` steps (chunk-like): [episodes, steps, action_dim]."""
    n = -(-steps // hold)
    a = jax.random.uniform(rng, (episodes, n, action_dim), minval=-1.0, maxval=1.0)
    return jnp.repeat(a, hold, axis=1)[:, :steps]


def _run_open_loop(env, env_params, state, actions, positions_of):
    """Step one episode without auto-reset; (outcome, length, positions per step)."""

    def step(carry, action):
        state, done, outcome, length = carry
        _, next_state, reward, next_done, info = env.step_env(jax.random.key(0), state, action, env_params)
        ended = next_done & ~done
        # Solved, failed (a death contact, or NaN), or timed out; the shaped reward cannot tell these apart.
        kind = jnp.where(info["GoalR"], 1, jnp.where(next_state.timestep >= env_params.max_timesteps, 0, -1))
        outcome = jnp.where(ended, kind, outcome)
        length = jnp.where(done, length, length + 1)
        state = jax.tree.map(lambda a, b: jnp.where(done, a, b), state, next_state)
        return (state, done | next_done, outcome, length), positions_of(state)

    init = (state, jnp.bool_(False), jnp.int32(0), jnp.int32(0))
    (_, _, outcome, length), positions = jax.lax.scan(step, init, actions)
    return outcome.astype(jnp.int32), length, positions


def faithfulness(level: Level, episodes: int = 256, seed: int = 0, counts: SlotCounts | None = None) -> Faithfulness:
    """Run the full and the shrunk level on the same random open-loop action sequences and compare."""
    small_state, small_static, slots = shrink_level(level, counts)
    full_static, env_params = level.static_env_params, level.env_params
    steps = int(env_params.max_timesteps)
    action_dim = full_static.num_motor_bindings + full_static.num_thruster_bindings
    actions = open_loop_actions(jax.random.key(seed), episodes, steps, action_dim)
    pm, cm = jnp.asarray(slots.polygon), jnp.asarray(slots.circle)
    p_used = jnp.asarray(level.state.polygon.active)[pm]
    c_used = jnp.asarray(level.state.circle.active)[cm]

    def full_positions(s):
        return jnp.concatenate([s.polygon.position[pm], s.circle.position[cm]])

    def small_positions(s):
        return jnp.concatenate([s.polygon.position, s.circle.position])

    full_env, small_env = _raw_env(full_static, env_params), _raw_env(small_static, env_params)

    @jax.jit
    def run(actions):
        full = jax.vmap(lambda a: _run_open_loop(full_env, env_params, level.state, a, full_positions))(actions)
        small = jax.vmap(lambda a: _run_open_loop(small_env, env_params, small_state, a, small_positions))(actions)
        return full, small

    (of, lf, pf), (os_, ls, ps) = jax.device_get(run(actions))
    used = np.concatenate([np.asarray(p_used), np.asarray(c_used)])
    diff = np.abs(pf - ps)[:, :, used].max(axis=(2, 3))  # [episodes, steps]
    # Only steps inside both episodes count.
    within = np.arange(steps)[None, :] < np.minimum(lf, ls)[:, None]
    diverged = (diff > 1e-3) & within
    agree = np.where(diverged.any(axis=1), diverged.argmax(axis=1), np.minimum(lf, ls))
    return Faithfulness(
        level=level.name,
        counts=str(SlotCounts(*(len(np.asarray(m)) for m in (slots.polygon, slots.circle, slots.joint, slots.thruster)))),
        episodes=episodes,
        outcome_match=float(np.mean(of == os_)),
        exact_match=float(np.mean((of == os_) & (lf == ls))),
        solved_full=float(np.mean(of == 1)),
        solved_shrunk=float(np.mean(os_ == 1)),
        failed_full=float(np.mean(of == -1)),
        failed_shrunk=float(np.mean(os_ == -1)),
        median_agree_steps=float(np.median(agree)),
    )
