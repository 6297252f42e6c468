"""The policy server on loopback with the numpy toy backend: replies, batching, errors, health, API key."""

from __future__ import annotations

import threading
import urllib.request

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from rtchunk.serving import protocol
from rtchunk.serving.backends import SampleBatch, ToyBackend, bucket_for, bucket_sizes
from rtchunk.serving.server import PolicyServer, ServerConfig
from serving_helpers import ACT, H, OBS, raw_connect, request, toy_server


@pytest.fixture(scope="module")
def server():
    with toy_server(max_wait_ms=1.0) as s:
        yield s


def infer(ws, req: dict):
    ws.send(protocol.packb(req))
    return protocol.unpackb(ws.recv(timeout=10))


def test_bucket_sizes():
    assert bucket_sizes(1) == (1,) and bucket_sizes(8) == (1, 2, 4, 8) and bucket_sizes(6) == (1, 2, 4, 6)
    assert bucket_for(3, (1, 2, 4, 8)) == 4 and bucket_for(8, (1, 2, 4, 8)) == 8
    b = SampleBatch(np.ones((3, 2), np.float32), np.zeros((3, 4, 1), np.float32), np.array([0, 1, 2], np.int32),
                    np.ones(3, np.int32), np.zeros(3, np.uint32), np.arange(3, dtype=np.uint32))
    assert len(b.padded(4)) == 4 and b.padded(4).inference_delay.tolist() == [0, 1, 2, 2]


def test_metadata_then_naive_and_rtc_replies(server):
    ws, meta = raw_connect(server.url)
    with ws:
        assert (meta["horizon"], meta["action_dim"], meta["default_method"]) == (H, ACT, "rtc")
        reply = infer(ws, request())
        actions = reply["actions"]
        assert actions.dtype == np.float32 and actions.shape == (H, ACT)
        assert set(reply["server_timing"]) == {"infer_ms", "queue_ms", "batch_size"}
        assert reply["server_timing"]["batch_size"] == 1
        left = np.full((5, ACT), 9.0, np.float32)
        rtc = infer(ws, request(prev_chunk_leftover=left, inference_delay=3, execute_horizon=3))["actions"]
        np.testing.assert_array_equal(rtc[:3], left[:3])
        assert np.abs(rtc[3:] - actions[3:]).max() < 0.01  # the toy's fresh part: the same up to noise


def test_the_same_seed_gives_the_same_chunk(server):
    ws, _ = raw_connect(server.url)
    with ws:
        a = infer(ws, request(seed=5))["actions"]
        b = infer(ws, request(seed=5))["actions"]
        c = infer(ws, request(seed=6))["actions"]
        d = infer(ws, request())["actions"]
        e = infer(ws, request())["actions"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(d, e)


def test_healthz_answers_200(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as r:
        assert r.status == 200


BAD = [
    ({protocol.OBSERVATION_KEY: np.ones(OBS + 2, np.float32)}, "observation/state"),
    ({protocol.OBSERVATION_KEY: np.ones(OBS, np.int64)}, "observation/state"),
    ({protocol.OBSERVATION_KEY: np.array([np.nan] * OBS, np.float32)}, "observation/state"),
    (request(prev_chunk_leftover=np.zeros((5, ACT + 1), np.float32)), "rtc/prev_chunk_leftover"),
    (request(prev_chunk_leftover=np.zeros((5, ACT), np.float32), inference_delay=7), "rtc/inference_delay"),
    (request(prev_chunk_leftover=np.zeros((5, ACT), np.float32), method="bid"), "rtc/method"),
]


@pytest.mark.parametrize("req, key", BAD)
def test_a_bad_request_gets_one_line_naming_the_key_then_close_1011_and_others_carry_on(server, req, key):
    other, _ = raw_connect(server.url)
    ws, _ = raw_connect(server.url)
    with other, ws:
        ws.send(protocol.packb(req))
        message = ws.recv(timeout=10)
        assert isinstance(message, str) and message.startswith(f"{key}: ") and "\n" not in message
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
        assert info.value.rcvd.code == 1011
        assert infer(other, request())["actions"].shape == (H, ACT)


@pytest.mark.parametrize("payload, key", [(b"\xc1\x00", "frame"), ("a text frame", "frame"),
                                          (protocol.packb(request())[:-3], "frame")])
def test_malformed_truncated_and_text_frames_are_refused(server, payload, key):
    ws, _ = raw_connect(server.url)
    with ws:
        ws.send(payload)
        message = ws.recv(timeout=10)
        assert isinstance(message, str) and message.startswith(f"{key}: ")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)


def test_an_oversized_frame_is_refused_unread_and_the_server_stays_up():
    with toy_server(max_frame_bytes=4096) as srv:
        ws, _ = raw_connect(srv.url)
        with ws:
            ws.send(protocol.packb(request(obs=np.ones(OBS, np.float32), big=np.zeros(10_000, np.float32))))
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=10)
            assert info.value.rcvd.code == 1009  # message too big
        ws, _ = raw_connect(srv.url)
        with ws:
            assert infer(ws, request())["actions"].shape == (H, ACT)


def test_api_key_is_required_when_set():
    with toy_server(api_key="s3cret") as srv:
        for headers in (None, {"Authorization": "Api-Key wrong"}, {"Authorization": "s3cret"}):
            with pytest.raises(InvalidStatus) as info:
                raw_connect(srv.url, headers)
            assert info.value.response.status_code == 401
        ws, _ = raw_connect(srv.url, {"Authorization": "Api-Key s3cret"})
        with ws:
            assert infer(ws, request())["actions"].shape == (H, ACT)
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=10) as r:
            assert r.status == 200
        assert srv.stats.requests == 1  # the refused connections never reached inference


def _concurrent(url, n, req_of):
    """n connections, each sends one request at the same moment; returns their replies."""
    conns = [raw_connect(url)[0] for _ in range(n)]
    replies = [None] * n
    barrier = threading.Barrier(n)

    def go(i):
        barrier.wait()
        replies[i] = infer(conns[i], req_of(i))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for c in conns:
        c.close()
    return replies


def test_requests_of_several_connections_are_sampled_in_one_batch_with_their_own_inputs():
    backend = ToyBackend(OBS, H, ACT, compute_s=0.05)
    with toy_server(backend, max_wait_ms=2000.0, max_batch=4) as srv:
        # Four connections: the batch leaves once all four wait (no need to sit out max_wait_ms).
        def req_of(i):
            return request(obs=np.full(OBS, 0.1 * i, np.float32), prev_chunk_leftover=np.full((5, ACT), i, np.float32),
                           inference_delay=i % 4, seed=i)

        replies = _concurrent(srv.url, 4, req_of)
        assert backend.batch_sizes == [4]
        assert [r["server_timing"]["batch_size"] for r in replies] == [4] * 4
        alone = []
        for i in range(4):
            ws, _ = raw_connect(srv.url)
            with ws:
                alone.append(infer(ws, req_of(i))["actions"])
        for i, r in enumerate(replies):
            np.testing.assert_array_equal(r["actions"], alone[i])
            np.testing.assert_array_equal(r["actions"][: i % 4], np.full((i % 4, ACT), i, np.float32))


def test_different_methods_go_in_different_batches():
    backend = ToyBackend(OBS, H, ACT, compute_s=0.02)
    with toy_server(backend, max_wait_ms=2000.0, max_batch=4) as srv:
        left = np.zeros((5, ACT), np.float32)
        replies = _concurrent(srv.url, 4, lambda i: request(prev_chunk_leftover=left, method=("rtc", "naive")[i % 2]))
        assert sorted(backend.batch_sizes) == [2, 2] and all(r["actions"].shape == (H, ACT) for r in replies)


def test_a_client_that_disconnects_while_batched_does_not_break_the_batch():
    backend = ToyBackend(OBS, H, ACT, compute_s=0.3)
    with toy_server(backend, max_wait_ms=50.0, max_batch=4) as srv:
        first, _ = raw_connect(srv.url)
        first.send(protocol.packb(request(seed=1)))  # occupies the sampler for 0.3 s
        leaver, _ = raw_connect(srv.url)
        stayer, _ = raw_connect(srv.url)
        leaver.send(protocol.packb(request(seed=2)))
        stayer.send(protocol.packb(request(seed=3)))
        leaver.close()  # gone while its request waits for the next batch
        assert protocol.unpackb(first.recv(timeout=10))["actions"].shape == (H, ACT)
        assert protocol.unpackb(stayer.recv(timeout=10))["actions"].shape == (H, ACT)
        # ... and gone while being sampled: the others still get their replies.
        a, _ = raw_connect(srv.url)
        b, _ = raw_connect(srv.url)
        a.send(protocol.packb(request(seed=4)))
        b.send(protocol.packb(request(seed=5)))
        a.close()
        assert protocol.unpackb(b.recv(timeout=10))["actions"].shape == (H, ACT)
        for c in (first, stayer, b):
            c.close()
        ws, _ = raw_connect(srv.url)
        with ws:
            assert infer(ws, request())["actions"].shape == (H, ACT)


def test_server_config_names_the_bad_flag():
    for kwargs, flag in [({"port": 70000}, "--port"), ({"max_batch": 0}, "--max-batch"),
                         ({"max_wait_ms": -1.0}, "--max-wait-ms"), ({"api_key": "a b"}, "--api-key"),
                         ({"max_frame_bytes": 10}, "--max-frame-bytes")]:
        with pytest.raises(ValueError, match=f"^{flag} "):
            ServerConfig(**kwargs)
    with pytest.raises(ValueError, match="--method: unknown 'rtx'"):
        PolicyServer(ToyBackend(), ServerConfig(method="rtx"))



def test_sampling_on_the_event_loop_thread_batches_and_answers_the_same():
    backend = ToyBackend(OBS, H, ACT, compute_s=0.02)
    with toy_server(backend, max_wait_ms=2000.0, max_batch=4, sample_in_loop=True) as srv:
        replies = _concurrent(srv.url, 3, lambda i: request(seed=i))
        assert backend.batch_sizes == [3]
        with toy_server(ToyBackend(OBS, H, ACT)) as threaded:
            ws, _ = raw_connect(threaded.url)
            with ws:
                for i, r in enumerate(replies):
                    np.testing.assert_array_equal(r["actions"], infer(ws, request(seed=i))["actions"])


class FailsOnce(ToyBackend):
    def __init__(self):
        super().__init__(OBS, H, ACT)
        self.failed = False

    def sample(self, method, batch):
        if not self.failed:
            self.failed = True
            raise RuntimeError("out of memory")
        return super().sample(method, batch)


def test_a_failing_sampler_answers_its_batch_with_an_error_and_the_server_stays_up():
    with toy_server(FailsOnce()) as srv:
        ws, _ = raw_connect(srv.url)
        with ws:
            ws.send(protocol.packb(request()))
            message = ws.recv(timeout=10)
            assert message == "server: sampling failed: RuntimeError: out of memory"
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
        ws, _ = raw_connect(srv.url)
        with ws:
            assert infer(ws, request())["actions"].shape == (H, ACT)
