"""The runtime's threads on the real clock: lifecycle, shutdown, robots, faults. Nothing here asserts a timing;
the timeouts only turn a deadlock into a failure instead of a hang."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from runtime_fakes import Blocking, InpaintingFake, Integrator, Scripted

from rtchunk.runtime import (
    Paper,
    Runtime,
    RuntimeConfig,
    RuntimeStopped,
    SimulatedClock,
    SimulatedRobot,
    SinceSwap,
)

FAST = dict(control_period_s=0.002, initial_delay=2)


def wait_until(predicate, timeout=30.0):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached (deadlock?)")
        time.sleep(0.002)


def runtime_threads():
    return [t for t in threading.enumerate() if t.name.startswith("rtchunk-")]


@pytest.mark.timeout(60)
def test_run_drives_the_robot_once_per_tick():
    robot = Integrator()
    rt = Runtime(InpaintingFake(), RuntimeConfig(replan=Paper(s_min=3), **FAST), robot=robot)
    tel = rt.run(ticks=300)
    assert tel.total_ticks == 300 and len(robot.applied) == 300
    np.testing.assert_allclose(robot.applied, tel.actions[:, 0])  # act() got exactly the executed actions
    assert tel.summary()["swaps"] >= 1
    assert not rt.running and not runtime_threads()


@pytest.mark.timeout(60)
def test_context_manager_starts_and_stops_both_threads():
    with Runtime(InpaintingFake(), RuntimeConfig(replan=SinceSwap(s_min=4), **FAST), robot=Integrator()) as rt:
        assert rt.running and {t.name for t in runtime_threads()} == {"rtchunk-controller", "rtchunk-inference"}
        wait_until(lambda: rt.telemetry().summary()["swaps"] >= 2)
    assert not rt.running and not runtime_threads()


@pytest.mark.timeout(60)
def test_stop_returns_while_a_policy_call_hangs():
    policy = Blocking()
    rt = Runtime(policy, RuntimeConfig(replan=Paper(s_min=2), **FAST), robot=Integrator()).start()
    assert policy.entered.wait(30)
    ticks = rt.ticks
    wait_until(lambda: rt.ticks > ticks + 5)  # the controller keeps ticking while inference hangs
    assert rt.stop(timeout=0.2) is False  # the inference thread cannot be interrupted ...
    assert [t.name for t in runtime_threads()] == ["rtchunk-inference"]  # ... but the controller is gone
    policy.release.set()
    wait_until(lambda: not runtime_threads())  # and the hung call's thread ends once it returns
    assert rt.telemetry().summary()["swaps"] == 0  # its late result was dropped


@pytest.mark.timeout(60)
def test_stop_under_the_simulated_clock_while_waiting_for_a_hung_policy():
    policy = Blocking()
    rt = Runtime(policy, RuntimeConfig(replan=Paper(s_min=2)), robot=Integrator(), clock=SimulatedClock(3)).start()
    assert policy.entered.wait(30)
    wait_until(lambda: rt.ticks == 5)  # virtual time stands still at the tick the result is due
    assert rt.stop(timeout=0.2) is False
    policy.release.set()
    wait_until(lambda: not runtime_threads())


@pytest.mark.timeout(60)
def test_get_action_from_the_callers_loop():
    with Runtime(InpaintingFake(), RuntimeConfig(replan=Paper(s_min=3), **FAST)).start(np.zeros(2, np.float32)) as rt:
        for t in range(40):
            action = rt.get_action(np.array([t, 0], np.float32))
            assert action.shape == (1,) and not action.flags.writeable  # a read-only row of the chunk
            time.sleep(0.002)
    with pytest.raises(RuntimeStopped):
        rt.get_action(np.zeros(2, np.float32))
    tel = rt.telemetry()
    assert tel.total_ticks == 40 and np.isnan(tel.scheduled_s).all()
    assert np.isfinite(tel.jitter_s[1:]).all()  # from the intervals between calls


@pytest.mark.timeout(60)
def test_inference_errors_are_retried_while_the_controller_keeps_going():
    policy = Scripted(["raise", "raise", "ok"])
    config = RuntimeConfig(replan=Paper(s_min=2), retry_backoff_s=0.01, **FAST)
    with Runtime(policy, config, robot=Integrator()) as rt:
        wait_until(lambda: rt.telemetry().summary()["swaps"] >= 1)
    statuses = [e.status for e in rt.telemetry().inferences]
    assert statuses[:3] == ["error", "error", "ok"]
    assert rt.telemetry().total_ticks > 0 and rt.error is None


@pytest.mark.timeout(60)
def test_a_failing_robot_stops_the_runtime_and_run_raises():
    class Broken(Integrator):
        def act(self, action):
            if len(self.applied) == 7:
                raise OSError("lost the arm")
            super().act(action)

    rt = Runtime(InpaintingFake(), RuntimeConfig(replan=Paper(s_min=3), **FAST), robot=Broken())
    with pytest.raises(RuntimeError, match="controller") as info:
        rt.run(ticks=100)
    assert isinstance(info.value.__cause__, OSError)
    assert not runtime_threads()


def test_misuse_is_reported():
    rt = Runtime(InpaintingFake(), RuntimeConfig(replan=Paper(s_min=3)), robot=Integrator(), clock=SimulatedClock(1))
    with pytest.raises(RuntimeStopped):
        rt.get_action(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="observation"):
        Runtime(InpaintingFake(), RuntimeConfig(replan=Paper(s_min=3))).start()
    with pytest.raises(ValueError, match="robot"):
        Runtime(InpaintingFake(), RuntimeConfig(replan=Paper(s_min=3)), robot=object())
    rt.start(max_ticks=4)
    try:
        with pytest.raises(RuntimeError, match="controller thread"):
            rt.get_action(np.zeros(2, np.float32))
        with pytest.raises(RuntimeError, match="already started"):
            rt.start()
        assert rt.wait(30)
        wait_until(lambda: not runtime_threads())  # after max_ticks the inference thread ends by itself
        assert not rt.running
    finally:
        assert rt.stop()


# -- the simulated-robot adapter ---------------------------------------------------------------------


def point_mass_step(state, action):
    """x'' = a, semi-implicit Euler with dt = 0.1: a step function of the kind SimulatedRobot wraps."""
    position, velocity = state
    velocity = velocity + 0.1 * float(action[0])
    position = position + 0.1 * velocity
    return (position, velocity), np.array([position, velocity], np.float32), {"reward": -abs(position)}


def test_simulated_robot_steps_once_per_act_and_records_transitions():
    seen = []
    robot = SimulatedRobot(point_mass_step, (0.0, 0.0), np.zeros(2, np.float32),
                           on_step=lambda state, obs, info, action: seen.append((obs.copy(), info, float(action[0]))))
    policy = InpaintingFake()
    tel = Runtime(policy, RuntimeConfig(replan=SinceSwap(s_min=4), initial_delay=3), robot=robot,
                  clock=SimulatedClock(3)).run(ticks=15)
    assert robot.steps == 15 and len(seen) == 15
    # Replaying the executed actions through the step function gives the same trajectory.
    state = (0.0, 0.0)
    for i, action in enumerate(tel.actions):
        state, obs, info = point_mass_step(state, action)
        np.testing.assert_array_equal(seen[i][0], obs)
        assert seen[i][1] == info and seen[i][2] == action[0]
    assert robot.state == state and robot.info == info
    # The inference that started at tick 4 got that tick's observation, taken before its action was
    # applied (Algorithm 1's GETACTION(o)): the state after 3 actions.
    replay = (0.0, 0.0)
    for action in tel.actions[:3]:
        replay, obs4, _ = point_mass_step(replay, action)
    np.testing.assert_array_equal(policy.background_calls[0][0], obs4)


def test_simulated_robot_converts_observations_and_checks_step_output():
    import jax.numpy as jnp

    robot = SimulatedRobot(lambda s, a: (s + 1, {"x": jnp.ones(2) * s}), 0, {"x": jnp.zeros(2)})
    assert isinstance(robot.observe()["x"], np.ndarray)
    robot.act(np.zeros(1))
    assert robot.steps == 1 and robot.observe()["x"].tolist() == [0, 0] and robot.info is None
    bad = SimulatedRobot(lambda s, a: s, 0, np.zeros(1))
    with pytest.raises(ValueError, match="step must return"):
        bad.act(np.zeros(1))
    with pytest.raises(ValueError, match="step"):
        SimulatedRobot("nope", 0, np.zeros(1))

