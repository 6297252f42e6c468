"""RemotePolicy, the robot's side: no JAX on import, the runtime driven over a socket, and its faults
(server not there at start, killed mid-run and restarted, slow, refusing the API key, rejecting a request)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from rtchunk.delays import FixedEstimator
from rtchunk.runtime import Paper, Runtime, RuntimeConfig
from rtchunk.serving.backends import ToyBackend
from rtchunk.serving.client import RemotePolicy, ServerError, ServerRefused, ServerUnavailable, ServerUnreachable
from rtchunk.serving.server import PolicyServer, ServerConfig
from serving_helpers import ACT, H, OBS, free_port, spawn_toy_server, subprocess_env, toy_server


def test_the_runtime_and_the_client_load_no_jax_flax_or_torch():
    code = ("import sys, json, rtchunk.runtime, rtchunk.serving.client\n"
            "from rtchunk.serving import RemotePolicy\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'torch', 'jaxlib'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_a_missing_server_is_a_clear_error_after_the_configured_wait():
    url = f"ws://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnreachable, match=rf"no policy server answered at {url} within connect_timeout_s = 0.3 s"):
        RemotePolicy(url, connect_timeout_s=0.3, backoff_s=0.05)


def test_the_client_waits_with_backoff_for_a_server_that_starts_later():
    port = free_port()
    server = PolicyServer(ToyBackend(OBS, H, ACT), ServerConfig(port=port))
    starter = threading.Timer(0.5, server.start)
    starter.start()
    try:
        policy = RemotePolicy(f"ws://127.0.0.1:{port}", connect_timeout_s=60, backoff_s=0.05, max_backoff_s=0.2)
        with policy:
            assert policy(np.ones(OBS, np.float32), None, 0, H).shape == (H, ACT)
    finally:
        starter.join()
        server.stop()


def test_a_wrong_or_missing_api_key_is_refused_at_once():
    with toy_server(api_key="k3y") as srv:
        for key in (None, "wrong"):
            with pytest.raises(ServerRefused, match="HTTP 401"):
                RemotePolicy(srv.url, api_key=key, connect_timeout_s=30)
        with RemotePolicy(srv.url, api_key="k3y") as policy:
            assert policy(np.ones(OBS, np.float32), None, 0, H).shape == (H, ACT)


def test_calls_send_the_rtc_inputs_and_report_the_timing_split():
    backend = ToyBackend(OBS, H, ACT, compute_s=0.02)
    with toy_server(backend) as srv, RemotePolicy(srv.url, method="rtc") as policy:
        assert (policy.horizon, policy.action_dim) == (H, ACT)
        left = np.full((5, ACT), 4.0, np.float32)
        chunk = policy(np.ones(OBS, np.float32), left, 2, 3)
        assert chunk.shape == (H, ACT) and chunk.flags.writeable
        np.testing.assert_array_equal(chunk[:2], left[:2])
        timing = policy.last_call_timing
        assert set(timing) == {"server_compute_s", "server_queue_s", "transport_s"}
        assert timing["server_compute_s"] >= 0.02 and timing["server_queue_s"] >= 0 and timing["transport_s"] > 0
        assert policy.last_batch_size == 1
        assert policy.request(np.ones(OBS), left, 2, 3).keys() == {
            "observation/state", "rtc/prev_chunk_leftover", "rtc/inference_delay", "rtc/execute_horizon", "rtc/method"}
        assert policy.request(np.ones(OBS), None, 0, H).keys() == {"observation/state"}
    with pytest.raises(ValueError, match="not served"), toy_server() as srv:
        RemotePolicy(srv.url, method="bid")


def test_a_rejected_request_raises_the_servers_message_and_the_next_call_reconnects():
    with toy_server() as srv, RemotePolicy(srv.url) as policy:
        with pytest.raises(ServerError, match=r"rtc/inference_delay: must be in \[0, 5\]"):
            policy(np.ones(OBS, np.float32), np.zeros((5, ACT), np.float32), 6, 3)
        assert not policy.connected
        assert policy(np.ones(OBS, np.float32), None, 0, H).shape == (H, ACT)
        assert policy.reconnects == 1


def test_a_slow_server_times_out_when_a_call_timeout_is_set():
    with toy_server(ToyBackend(OBS, H, ACT, compute_s=0.5)) as srv:
        with RemotePolicy(srv.url, call_timeout_s=0.1) as policy:
            with pytest.raises(TimeoutError, match="call_timeout_s = 0.1 s"):
                policy(np.ones(OBS, np.float32), None, 0, H)
            assert not policy.connected  # a late reply would answer the wrong request
        with RemotePolicy(srv.url) as policy:  # without a timeout the call just takes long
            assert policy(np.ones(OBS, np.float32), None, 0, H).shape == (H, ACT)
            assert policy.last_call_timing["server_compute_s"] >= 0.5


class Recorder:
    """The remote policy, recording each call's leftover, told delay and chunk."""

    def __init__(self, policy):
        self.policy = policy
        self.horizon = policy.horizon
        self.calls = []

    def __call__(self, observation, leftover, told_delay, execute_horizon):
        chunk = self.policy(observation, leftover, told_delay, execute_horizon)
        self.calls.append((None if leftover is None else leftover.copy(), told_delay, chunk))
        return chunk

    @property
    def last_call_timing(self):
        return self.policy.last_call_timing


class Counter:
    def __init__(self):
        self.acts = 0

    def observe(self):
        return np.full(OBS, 0.5, np.float32)

    def act(self, action):
        self.acts += 1


def _wait(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the run to get there")
        time.sleep(0.02)


def test_server_killed_mid_run_the_controller_holds_the_client_reconnects_and_rtc_resumes():
    port = free_port()
    proc = spawn_toy_server(port, compute_s=0.005)
    restarted = None
    try:
        remote = RemotePolicy(f"ws://127.0.0.1:{port}", backoff_s=0.05, max_backoff_s=0.2)
        policy = Recorder(remote)
        config = RuntimeConfig(replan=Paper(s_min=2), control_period_s=0.01, estimator=FixedEstimator(2),
                               retry_backoff_s=0.02, max_retry_backoff_s=0.1, freeze_gc=False)
        robot = Counter()
        runtime = Runtime(policy, config, robot=robot).start()
        try:
            ok = lambda: sum(e.status == "ok" for e in runtime.telemetry().inferences)  # noqa: E731
            _wait(lambda: ok() >= 3)
            proc.kill()
            proc.wait(30)
            calls_before = len(policy.calls)
            _wait(lambda: runtime.telemetry().starved.sum() >= 10 and
                  any(e.status == "error" for e in runtime.telemetry().inferences))
            ticks_in_outage = robot.acts
            restarted = spawn_toy_server(port, compute_s=0.005)
            _wait(lambda: len(policy.calls) >= calls_before + 4)
        finally:
            runtime.stop()
        runtime.raise_if_failed()
        tel = runtime.telemetry()
        errors = [e for e in tel.inferences if e.status == "error"]
        assert errors and all("ServerUnavailable" in e.error or "lost the connection" in e.error for e in errors)
        assert tel.starved.sum() >= 10 and robot.acts > ticks_in_outage  # it kept ticking, holding meanwhile
        assert remote.reconnects >= 1
        # After the restart the runtime sends the leftover it has, and the chunks continue it.
        resumed = [(left, d, chunk) for left, d, chunk in policy.calls[calls_before:] if left is not None and d > 0]
        assert resumed
        for left, d, chunk in resumed:
            np.testing.assert_array_equal(chunk[:d], left[:d])
        remote.close()
    finally:
        for p in (proc, restarted):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(30)


def test_a_call_while_the_server_is_gone_raises_and_backs_off():
    port = free_port()
    proc = spawn_toy_server(port)
    try:
        policy = RemotePolicy(f"ws://127.0.0.1:{port}", backoff_s=0.05, max_backoff_s=0.4)
        assert policy(np.ones(OBS, np.float32), None, 0, H).shape == (H, ACT)
        proc.kill()
        proc.wait(30)
        with pytest.raises(ServerUnavailable, match="lost the connection"):
            policy(np.ones(OBS, np.float32), None, 0, H)
        for _ in range(3):
            with pytest.raises(ServerUnavailable, match="cannot reconnect"):
                policy(np.ones(OBS, np.float32), None, 0, H)
        assert policy._backoff == 0.4  # doubled with each failed attempt, up to the cap
        assert policy.failures == 4 and policy.calls == 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
