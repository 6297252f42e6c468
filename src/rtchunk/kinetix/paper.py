"""The papers' benchmark settings as plain constants (importable without starting JAX or Kinetix)."""

PAPER_LEVELS: tuple[str, ...] = (
    "grasp_easy",
    "catapult",
    "cartpole_thrust",
    "hard_lunar_lander",
    "mjc_half_cheetah",
    "mjc_swimmer",
    "mjc_walker",
    "h17_unicycle",
    "chain_lander",
    "catcher_v3",
    "trampoline",
    "car_launch",
)
"""The papers' 12 benchmark levels, in the papers' order."""

PAPER_SLOTS = {
    "num_polygons": 12,
    "num_circles": 4,
    "num_joints": 6,
    "num_thrusters": 2,
    "num_motor_bindings": 4,
    "num_thruster_bindings": 2,
    "frame_skip": 2,
}
"""Every paper level is padded to these static parameters (Kinetix's ``l`` size)."""

EPISODE_STEPS = 256
"""Steps per episode (Kinetix's default, the papers' setting)."""
ACTION_NOISE_STD = 0.1
"""Gaussian noise added to every commanded action (training, data and evaluation alike)."""
