"""Loading levels (names, paths, directories, padding, fixed dtypes) and shrinking them to their used slots."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kinetix_helpers import level, paper_level_dir
from rtchunk.kinetix import levels, shrink  # imports kinetix.environment first (kinetix's import order)
from kinetix.render.renderer_symbolic_flat import make_render_symbolic  # noqa: E402  isort: skip
from kinetix.util.saving import expand_env_state, load_from_json_file  # noqa: E402  isort: skip


def test_names_resolve_to_packaged_files_and_level_dir_comes_first(tmp_path):
    packaged = levels.packaged_level_dir() / "l" / "h17_unicycle.json"
    assert levels.resolve("l/h17_unicycle") == [packaged]
    assert levels.resolve("h17_unicycle") == [packaged]
    assert levels.resolve(str(packaged)) == [packaged]
    mine = tmp_path / "h17_unicycle.json"
    mine.write_text(packaged.read_text())
    assert levels.resolve("h17_unicycle", level_dir=tmp_path) == [mine]
    assert levels.resolve(tmp_path) == [mine]
    with pytest.raises(ValueError, match="--level-dir"):
        levels.resolve("catcher_v3")  # a paper level kinetix-env does not ship
    with pytest.raises(ValueError, match="no level"):
        levels.resolve("no_such_level")
    assert "l/h17_unicycle" in levels.list_packaged()


def test_loading_matches_kinetix_with_fixed_dtypes_and_one_compile():
    raw, raw_static, raw_params = load_from_json_file("l/h17_unicycle")
    lvl = level()
    assert (lvl.static_env_params, lvl.env_params) == (raw_static, raw_params)
    assert jax.tree.structure(lvl.state) == jax.tree.structure(raw)
    for mine, theirs in zip(jax.tree.leaves(lvl.state), jax.tree.leaves(raw)):
        np.testing.assert_array_equal(mine, np.asarray(theirs))
    # Kinetix leaves weak-typed scalars behind; ours are strongly typed float32/int32/bool numpy arrays.
    assert any(getattr(x, "weak_type", False) for x in jax.tree.leaves(raw))
    leaves = jax.tree.leaves(lvl.state)
    assert all(isinstance(x, np.ndarray) for x in leaves)
    assert {x.dtype for x in leaves} <= {np.dtype("float32"), np.dtype("int32"), np.dtype("bool")}
    f = jax.jit(lambda s: s.polygon.position.sum() + s.timestep + s.last_distance)
    f(lvl.state)
    f(levels.fix_dtypes(raw))
    f(level("l/h4_cartpole").state)
    assert f._cache_size() == 1


def test_small_levels_are_padded_like_kinetix_pads_them():
    lvl = level("s/h1_thrust_over_ball")
    assert lvl.static_env_params == levels.PAPER_STATIC_ENV_PARAMS
    assert lvl.state.polygon.active.shape == (12,) and lvl.state.joint.active.shape == (6,)
    path = levels.resolve("s/h1_thrust_over_ball")[0]
    small, small_static, _ = levels.parse_level_json(json.loads(path.read_text()))
    theirs = expand_env_state(jax.tree.map(jnp.asarray, small), levels.PAPER_STATIC_ENV_PARAMS)
    for mine, ref in zip(jax.tree.leaves(lvl.state), jax.tree.leaves(theirs)):
        np.testing.assert_array_equal(mine, np.asarray(ref))
    assert levels.used_counts(lvl.state) == levels.used_counts(small)
    too_small = levels.PAPER_STATIC_ENV_PARAMS.replace(num_polygons=4)
    with pytest.raises(ValueError, match="does not fit"):
        levels.load_level("l/h17_unicycle", static_env_params=too_small)
    with pytest.raises(ValueError, match="different static parameters"):
        levels.load_level("l/h17_unicycle", static_env_params=levels.PAPER_STATIC_ENV_PARAMS.replace(frame_skip=1))


def test_describe():
    d = levels.describe(level())
    assert d["name"] == "h17_unicycle" and d["action_dim"] == 6
    assert d["used"] == {"polygons": 6, "circles": 2, "joints": 2, "thrusters": 0}
    assert d["shape_roles"] == {"none": 5, "goal": 1, "death": 1, "ball": 1}


# -- shrinking ---------------------------------------------------------------------------------------


def test_shrink_keeps_used_slots_in_order_and_remaps_indices():
    lvl = level()
    assert shrink.used_slots(lvl) == shrink.SlotCounts(6, 2, 2, 1)
    small, static, slots = shrink.shrink_level(lvl)
    assert (static.num_polygons, static.num_circles, static.num_joints, static.num_thrusters) == (6, 2, 2, 1)
    assert static.num_motor_bindings == 4 and static.num_thruster_bindings == 2  # the action is unchanged
    for m in (slots.polygon, slots.circle, slots.joint, slots.thruster):
        assert np.all(np.diff(m) > 0)
    full = lvl.state
    p, c = lvl.static_env_params.num_polygons, static.num_polygons

    def shape_position(state, index, num_polygons):
        return state.polygon.position[index] if index < num_polygons else state.circle.position[index - num_polygons]

    for j_small, j_full in enumerate(slots.joint):
        if full.joint.active[j_full]:
            for attr in ("a_index", "b_index"):
                np.testing.assert_array_equal(
                    shape_position(small, getattr(small.joint, attr)[j_small], c),
                    shape_position(full, getattr(full.joint, attr)[j_full], p))
    # Collision flags between kept shapes are unchanged.
    g = np.concatenate([slots.polygon, p + slots.circle])
    np.testing.assert_array_equal(small.collision_matrix, full.collision_matrix[np.ix_(g, g)])


def test_expanding_a_shrunk_level_restores_every_used_slot_and_the_observation():
    lvl = level()
    small, static, slots = shrink.shrink_level(lvl)
    full_static = lvl.static_env_params
    expanded = jax.jit(shrink.expand_state, static_argnums=2)(small, slots, full_static)
    s = lvl.state
    used = {"polygon": s.polygon.active, "circle": s.circle.active, "joint": s.joint.active}
    for kind, mask in used.items():
        for a, b in zip(jax.tree.leaves(getattr(expanded, kind)), jax.tree.leaves(getattr(s, kind))):
            np.testing.assert_array_equal(np.asarray(a)[mask], np.asarray(b)[mask])
    render = jax.jit(make_render_symbolic(lvl.env_params, full_static))
    np.testing.assert_array_equal(render(expanded), render(jax.tree.map(jnp.asarray, s)))


def test_common_counts_and_too_small_layouts():
    lvl = level()
    other = level("s/h1_thrust_over_ball")
    common = shrink.common_counts([lvl, other])
    assert common == shrink.SlotCounts(*(max(a, b) for a, b in zip(
        vars(shrink.used_slots(lvl)).values(), vars(shrink.used_slots(other)).values())))
    state, _, _ = shrink.shrink_level(other, common)
    assert state.polygon.active.shape == (common.polygons,)
    with pytest.raises(ValueError, match="slots"):
        shrink.shrink_level(lvl, shrink.SlotCounts(5, 2, 2, 1))
    with pytest.raises(ValueError, match="circles must be >= 2"):
        shrink.shrink_level(level("l/h4_cartpole"), shrink.SlotCounts(8, 1, 2, 1))
    with pytest.raises(ValueError, match="num_static_fixated_polys"):
        shrink.shrink_level(lvl, shrink.SlotCounts(3, 2, 2, 1))


def test_paper_levels_load_and_shrink():
    directory = paper_level_dir()
    # The two paper levels kinetix-env does not ship that use the most slots.
    loaded = levels.load_levels(["catcher_v3", "cartpole_thrust"], level_dir=directory)
    assert [lvl.name for lvl in loaded] == ["catcher_v3", "cartpole_thrust"]
    assert [str(shrink.used_slots(lvl)) for lvl in loaded] == ["12/2/3/2", "9/2/1/2"]  # >= 2 circles (jax2d)
    assert shrink.common_counts(loaded) == shrink.SlotCounts(12, 2, 3, 2)
