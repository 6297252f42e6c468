"""Kinetix levels: find, load, pad to the paper's slot counts, and give every array a fixed dtype.

A level is a Kinetix JSON file. It can be named by path, by a directory (every ``*.json`` in it), or by
the name of a level shipped inside ``kinetix-env`` (``l/h17_unicycle``, or just ``h17_unicycle``, which
is looked up under ``l/`` then ``m/`` then ``s/``). With ``level_dir`` a bare name is looked up there
first, which is how users point the benchmark at their own copies of the paper's 12 files.

Loaded levels hold numpy arrays only, with float32 / int32 / bool leaves: the JSON loader leaves a few
weak-typed scalars behind, and a weak-typed argument compiles a second copy of every jitted function.

Finding level files (``resolve``) imports neither JAX nor Kinetix's environment (tens of seconds on a
busy CPU), so a command can reject a misspelt level at once; parsing one imports both.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from rtchunk.choices import did_you_mean
from rtchunk.kinetix.paper import PAPER_LEVELS, PAPER_SLOTS

if TYPE_CHECKING:
    from kinetix.environment.env_state import EnvParams, EnvState, StaticEnvParams


def paper_static_env_params() -> StaticEnvParams:
    """Every paper level is padded to these slot counts (Kinetix's ``l`` size)."""
    from kinetix.environment.env_state import StaticEnvParams

    return StaticEnvParams(**PAPER_SLOTS)


def __getattr__(name: str):
    # PAPER_STATIC_ENV_PARAMS is built on first use: building it imports Kinetix's environment.
    if name == "PAPER_STATIC_ENV_PARAMS":
        return paper_static_env_params()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SLOT_FIELDS = ("num_polygons", "num_circles", "num_joints", "num_thrusters")


def packaged_level_dir() -> Path:
    import kinetix

    return Path(kinetix.__file__).resolve().parent / "levels"


@dataclasses.dataclass(frozen=True, eq=False)
class Level:
    """One loaded level: its initial physics state (numpy leaves) and the parameters it runs with."""

    name: str
    source: str
    state: EnvState
    static_env_params: StaticEnvParams
    env_params: EnvParams


# -- finding levels ----------------------------------------------------------------------------------


def _with_json(p: Path) -> Path:
    return p if p.suffix == ".json" else p.with_name(p.name + ".json")


def resolve(spec: str | os.PathLike, level_dir: str | os.PathLike | None = None) -> list[Path]:
    """The JSON files a level spec names (a file, a directory, a name in ``level_dir`` or in kinetix-env)."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise ValueError(f"level directory {path} holds no *.json level files")
        return files
    if path.is_file():
        return [path]
    tried = [str(path)]
    if level_dir is not None:
        candidate = _with_json(Path(level_dir).expanduser() / spec)
        if candidate.is_file():
            return [candidate]
        tried.append(str(candidate))
    root = packaged_level_dir()
    candidates = [_with_json(root / spec)]
    if "/" not in spec:
        candidates += [_with_json(root / size / spec) for size in ("l", "m", "s")]
    for candidate in candidates:
        if candidate.is_file():
            return [candidate]
    tried += [str(c) for c in candidates]
    if Path(spec).stem in PAPER_LEVELS:
        hint = " (four of the paper's levels do not ship with kinetix-env: pass --level-dir with your copies)"
    else:
        packaged = list_packaged()
        hint = did_you_mean(spec, packaged + [Path(n).name for n in packaged])
    raise ValueError(f"no level {spec!r}: looked for {', '.join(tried)}{hint}")


def list_packaged() -> list[str]:
    """Names of the levels shipped inside kinetix-env, e.g. ``l/h17_unicycle``."""
    root = packaged_level_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.glob("*/*.json"))


# -- loading -----------------------------------------------------------------------------------------


def fix_dtypes(tree):
    """Every leaf as a numpy array of float32, int32 or bool (no weak types, no float64)."""

    def cast(x):
        a = np.asarray(x)
        if a.dtype == np.bool_:
            return a
        if np.issubdtype(a.dtype, np.floating):
            return a.astype(np.float32)
        if np.issubdtype(a.dtype, np.integer):
            return a.astype(np.int32)
        raise ValueError(f"unexpected level array dtype {a.dtype}")

    import jax

    return jax.tree.map(cast, tree)


def _slot_counts(p: StaticEnvParams) -> dict[str, int]:
    return {f: getattr(p, f) for f in SLOT_FIELDS}


def _same_except_slots(a: StaticEnvParams, b: StaticEnvParams) -> list[str]:
    skip = set(SLOT_FIELDS) | {"screen_dim", "downscale"}
    return [
        f"{f.name}: {getattr(a, f.name)} vs {getattr(b, f.name)}"
        for f in dataclasses.fields(a)
        if f.name not in skip and getattr(a, f.name) != getattr(b, f.name)
    ]


def load_level(
    spec: str | os.PathLike,
    *,
    level_dir: str | os.PathLike | None = None,
    static_env_params: StaticEnvParams | None = None,
) -> Level:
    """Load one level file and pad it to ``static_env_params`` (default: the paper's slot counts)."""
    files = resolve(spec, level_dir)
    if len(files) != 1:
        raise ValueError(f"{spec!r} names {len(files)} levels; use load_levels for a directory")
    return _load_file(files[0], static_env_params)


def level_files(specs: Sequence[str | os.PathLike], level_dir: str | os.PathLike | None = None) -> list[Path]:
    """The level files the specs name (directories expand to their files), in order, without duplicates;
    two files with the same name (file stem) are a ``ValueError``. Imports neither JAX nor Kinetix."""
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    files: list[Path] = []
    for spec in specs:
        files += [f for f in resolve(spec, level_dir) if f.resolve() not in {g.resolve() for g in files}]
    names = [f.stem for f in files]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two levels share the name(s) {duplicates}; names are file stems and must be unique")
    return files


def load_levels(
    specs: Sequence[str | os.PathLike],
    *,
    level_dir: str | os.PathLike | None = None,
    static_env_params: StaticEnvParams | None = None,
) -> list[Level]:
    """Load every level the specs name (``level_files``), in order."""
    return [_load_file(f, static_env_params) for f in level_files(specs, level_dir)]


def _nested(value):
    """Kinetix JSON stores arrays as {"0": ..., "1": ...} dicts; turn them into nested lists."""
    if isinstance(value, dict) and "0" in value:
        return [_nested(value[str(i)]) for i in range(len(value))]
    return value


def _params_from_json(target, stored: dict):
    import flax.serialization

    return flax.serialization.from_state_dict(target, {k: _nested(v) if k != "screen_dim" else v
                                                       for k, v in stored.items()})


def parse_level_json(data: dict) -> tuple[EnvState, StaticEnvParams, EnvParams]:
    """(state with numpy leaves, static params, env params) of a Kinetix level JSON document.

    The same result as ``kinetix.util.saving.import_env_state_from_json`` (a test pins this), computed
    with numpy instead of one JAX dispatch per field, which is ~100x faster. Like Kinetix (and the
    papers' code) it ignores the file's ``gravity`` and ``highlighted`` entries and recomputes the
    collision matrix from the joints; ``max_timesteps`` is Kinetix's default.
    """
    import jax
    from kinetix.environment.env_state import EnvParams, StaticEnvParams
    from kinetix.environment.utils import create_empty_env

    stored = data["env_state"]
    default = StaticEnvParams()
    static = _params_from_json(default, {**data["static_env_params"], "downscale": default.downscale})
    static = static.replace(screen_dim=default.screen_dim)
    env_params = _params_from_json(EnvParams(), data["env_params"]).replace(max_timesteps=EnvParams().max_timesteps)
    state = jax.tree.map(np.array, create_empty_env(static))

    def fill(group, i: int, entry: dict, skip=()):
        for f in dataclasses.fields(group):
            if f.name in entry and f.name not in skip:
                array = getattr(group, f.name)
                array[i] = np.asarray(_nested(entry[f.name])).astype(array.dtype)

    for kind, count in (("circle", static.num_circles), ("polygon", static.num_polygons)):
        for i in range(count):
            entry = stored[kind][i]
            fill(getattr(state, kind), i, entry)
            getattr(state, f"{kind}_shape_roles")[i] = entry["role"]
            getattr(state, f"{kind}_densities")[i] = entry["density"]
    for i in range(static.num_joints):
        fill(state.joint, i, stored["joint"][i])
        state.motor_bindings[i] = stored["joint"][i]["motor_binding"]
    for i in range(static.num_thrusters):
        fill(state.thruster, i, stored["thruster"][i])
        state.thruster_bindings[i] = stored["thruster"][i]["thruster_binding"]
    # Kinetix reads manifold entry i into row i (for polygon pairs it broadcasts one contact to both).
    for kind in ("acc_rr_manifolds", "acc_cr_manifolds", "acc_cc_manifolds"):
        group = getattr(state, kind)
        for i in range(group.active.shape[0]):
            fill(group, i, stored[kind][i])
    return state.replace(collision_matrix=collision_matrix(static, state.joint)), static, env_params


def collision_matrix(static: StaticEnvParams, joints) -> np.ndarray:
    """jax2d's ``calculate_collision_matrix`` in numpy: shapes joined (transitively) by joints do not collide."""
    n = static.num_polygons + static.num_circles
    matrix = ~np.eye(n, dtype=bool)
    for j in list(range(static.num_joints)) * static.num_joints:  # jax2d repeats the pass num_joints times
        if not joints.active[j]:
            continue
        a, b = int(joints.a_index[j]), int(joints.b_index[j])
        shared = (matrix[a] & matrix[b]) & (matrix[:, b] & matrix[:, a])
        matrix[a] = shared
        matrix[:, b] = shared
        matrix[b] = shared
        matrix[:, a] = shared
    return matrix


def pad_state(state: EnvState, have: StaticEnvParams, want: StaticEnvParams) -> EnvState:
    """Kinetix's ``expand_env_state`` in numpy: zero-filled extra slots, circle indices shifted past the
    added polygons, the collision matrix recomputed and the warm-start manifolds emptied."""
    import jax
    from kinetix.environment.utils import create_empty_env

    empty = jax.tree.map(np.array, create_empty_env(want))

    def pad(tree, n):
        return jax.tree.map(lambda x: np.concatenate([x, np.zeros((n - x.shape[0], *x.shape[1:]), x.dtype)]), tree)

    added = want.num_polygons - have.num_polygons
    shift = lambda idx: np.where(idx >= have.num_polygons, idx + added, idx).astype(idx.dtype)  # noqa: E731
    joint = pad(state.joint, want.num_joints)
    joint = joint.replace(a_index=shift(joint.a_index), b_index=shift(joint.b_index))
    thruster = pad(state.thruster, want.num_thrusters)
    thruster = thruster.replace(object_index=shift(thruster.object_index))
    p, c = want.num_polygons, want.num_circles
    return state.replace(
        polygon=pad(state.polygon, p), circle=pad(state.circle, c), joint=joint, thruster=thruster,
        polygon_shape_roles=pad(state.polygon_shape_roles, p), circle_shape_roles=pad(state.circle_shape_roles, c),
        polygon_highlighted=pad(state.polygon_highlighted, p), circle_highlighted=pad(state.circle_highlighted, c),
        polygon_densities=pad(state.polygon_densities, p), circle_densities=pad(state.circle_densities, c),
        motor_bindings=pad(state.motor_bindings, want.num_joints), motor_auto=pad(state.motor_auto, want.num_joints),
        thruster_bindings=pad(state.thruster_bindings, want.num_thrusters),
        collision_matrix=collision_matrix(want, joint),
        acc_rr_manifolds=empty.acc_rr_manifolds, acc_cr_manifolds=empty.acc_cr_manifolds,
        acc_cc_manifolds=empty.acc_cc_manifolds,
    )


def _load_file(path: Path, static_env_params: StaticEnvParams | None) -> Level:
    import json

    static_env_params = static_env_params or paper_static_env_params()
    try:
        state, file_static, env_params = parse_level_json(json.loads(path.read_text()))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ValueError(f"{path} is not a readable Kinetix level ({type(e).__name__}: {e})") from None
    mismatched = _same_except_slots(file_static, static_env_params)
    if mismatched:
        raise ValueError(f"{path} was made with different static parameters: {'; '.join(mismatched)}")
    have, want = _slot_counts(file_static), _slot_counts(static_env_params)
    too_big = [f"{k}={have[k]} > {want[k]}" for k in SLOT_FIELDS if have[k] > want[k]]
    if too_big:
        raise ValueError(f"{path} does not fit the padding: {', '.join(too_big)}")
    if have != want:
        state = pad_state(state, file_static, static_env_params)
    return Level(
        name=path.stem,
        source=str(path),
        state=fix_dtypes(state),
        static_env_params=static_env_params,
        env_params=env_params,
    )


def stack_states(states: Sequence[EnvState]) -> EnvState:
    """Level states stacked along a new leading axis (for vmapping over levels)."""
    import jax

    return jax.tree.map(lambda *x: np.stack(x), *states)


# -- describing --------------------------------------------------------------------------------------

ROLE_NAMES = ("none", "ball", "goal", "death")


def used_counts(state: EnvState) -> dict[str, int]:
    """Active shapes, joints and thrusters of a level."""
    return {
        "polygons": int(np.sum(state.polygon.active)),
        "circles": int(np.sum(state.circle.active)),
        "joints": int(np.sum(state.joint.active)),
        "thrusters": int(np.sum(state.thruster.active)),
    }


def describe(level: Level) -> dict:
    """A summary of a level for ``rtchunk levels show``."""
    s = level.state
    roles = {}
    for kind, role, active in (
        ("polygon", s.polygon_shape_roles, s.polygon.active),
        ("circle", s.circle_shape_roles, s.circle.active),
    ):
        for r in np.asarray(role)[np.asarray(active)]:
            roles[ROLE_NAMES[int(r)]] = roles.get(ROLE_NAMES[int(r)], 0) + 1
    active_joints = np.asarray(s.joint.active)
    active_thrusters = np.asarray(s.thruster.active)
    return {
        "name": level.name,
        "source": level.source,
        "slots": _slot_counts(level.static_env_params),
        "used": used_counts(s),
        "shape_roles": roles,
        "motor_bindings": sorted({int(b) for b in np.asarray(s.motor_bindings)[active_joints & np.asarray(s.joint.motor_on)]}),
        "thruster_bindings": sorted({int(b) for b in np.asarray(s.thruster_bindings)[active_thrusters]}),
        "action_dim": level.static_env_params.num_motor_bindings + level.static_env_params.num_thruster_bindings,
        "gravity": [float(g) for g in np.asarray(s.gravity)],
        "frame_skip": level.static_env_params.frame_skip,
        "max_timesteps": int(level.env_params.max_timesteps),
    }
