"""The wire format (openpi's msgpack layout, no pickle) and request checks that name the bad key."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from rtchunk.methods import MethodSettings, make_method
from rtchunk.serving import protocol
from rtchunk.serving.protocol import ProtocolError, ServedPolicy, packb, parse_request, unpackb

OBS, H, ACT = 4, 8, 2
SERVED = ServedPolicy(OBS, H, ACT, {n: make_method(n, MethodSettings(), rng=0) for n in ("naive", "rtc", "trained_prefix")},
                      "rtc", max_trained_delay=2)


def frame(**keys):
    req = {protocol.OBSERVATION_KEY: np.arange(OBS, dtype=np.float32)}
    req.update({k.replace("__", "/"): v for k, v in keys.items()})
    return packb(req)


def test_arrays_travel_as_maps_with_bytes_keys_and_come_back_equal():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = msgpack.unpackb(packb({"a": arr, "s": np.int64(7)}), raw=False)
    assert raw["a"][b"__ndarray__"] is True and raw["a"][b"dtype"] == "<f4" and raw["a"][b"shape"] == [2, 3]
    assert raw["a"][b"data"] == arr.tobytes()
    assert raw["s"] == {b"__npgeneric__": True, b"data": 7, b"dtype": "<i8"}
    back = unpackb(packb({"a": arr, "s": np.int64(7), "n": [np.float64(1.5), "x"]}))
    np.testing.assert_array_equal(back["a"], arr)
    assert back["a"].dtype == np.float32 and back["s"] == 7 and back["s"].dtype == np.int64
    assert back["n"] == [1.5, "x"]


@pytest.mark.parametrize("bad", [np.array([1 + 2j]), np.array([object()], dtype=object),
                                 np.zeros(2, dtype=[("a", "f4")])])
def test_refuses_to_send_object_complex_and_structured_arrays(bad):
    with pytest.raises(ValueError, match="cannot send"):
        packb({"x": bad})


def _array_map(data: bytes, dtype: str, shape):
    return msgpack.packb({"x": {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}}, use_bin_type=True)


@pytest.mark.parametrize("dtype", ["|O", "<c8", "|V8", "<M8[s]", "(2,)<f4"])
def test_refuses_to_decode_exotic_dtypes(dtype):
    with pytest.raises(ProtocolError, match=r"^x: .*dtype"):
        unpackb(_array_map(b"\0" * 8, dtype, [1]))


def test_a_forged_shape_or_a_short_buffer_is_refused_without_allocating():
    with pytest.raises(ProtocolError, match=r"^x: .*needs 4000000000000 bytes, the frame holds 8"):
        unpackb(_array_map(b"\0" * 8, "<f4", [10**12]))
    with pytest.raises(ProtocolError, match=r"^x: .*needs 16 bytes, the frame holds 12"):
        unpackb(_array_map(b"\0" * 12, "<f4", [4]))
    with pytest.raises(ProtocolError, match=r"^x: array shape"):
        unpackb(_array_map(b"\0" * 4, "<f4", [-1]))


def test_a_truncated_or_non_msgpack_frame_names_the_frame():
    good = frame()
    with pytest.raises(ProtocolError, match=r"^frame: not a valid msgpack"):
        unpackb(good[: len(good) // 2])
    with pytest.raises(ProtocolError, match=r"^frame: expected a binary"):
        unpackb("text")
    with pytest.raises(ProtocolError, match=r"^frame: a request must be a map"):
        parse_request(packb([1, 2]), SERVED)


def test_without_rtc_keys_the_request_is_naive():
    req = parse_request(frame(), SERVED)
    assert req.method == "naive" and req.inference_delay == 0 and req.execute_horizon == H and req.seed is None
    np.testing.assert_array_equal(req.observation, np.arange(OBS, dtype=np.float32))
    assert req.prev_chunk.shape == (H, ACT) and not req.prev_chunk.any()


def test_an_rtc_request_is_padded_and_defaults_to_the_servers_method():
    left = np.full((5, ACT), 3.0, np.float32)
    req = parse_request(frame(rtc__prev_chunk_leftover=left, rtc__inference_delay=2, rtc__seed=9), SERVED)
    assert (req.method, req.inference_delay, req.execute_horizon, req.seed) == ("rtc", 2, 3, 9)
    np.testing.assert_array_equal(req.prev_chunk[:5], left)
    assert not req.prev_chunk[5:].any()
    # A longer leftover than the guided part: entries at and beyond H - s are zeroed, NaN there is fine.
    left = np.full((H, ACT), np.nan, np.float32)
    left[:4] = 1.0
    req = parse_request(frame(rtc__prev_chunk_leftover=left, rtc__execute_horizon=4, rtc__method="naive"), SERVED)
    assert req.method == "naive" and np.isfinite(req.prev_chunk).all() and not req.prev_chunk[4:].any()


def test_float64_inputs_are_accepted_as_float32():
    req = parse_request(packb({protocol.OBSERVATION_KEY: np.ones(OBS)}), SERVED)
    assert req.observation.dtype == np.float32


LEFT = np.zeros((5, ACT), np.float32)


@pytest.mark.parametrize("keys, key, message", [
    ({}, "observation/state", "missing"),
    ({"observation__state": np.ones(OBS + 1, np.float32)}, "observation/state", r"shape \[4\]"),
    ({"observation__state": np.ones(OBS, np.int32)}, "observation/state", "floating-point"),
    ({"observation__state": "abc"}, "observation/state", "numpy array"),
    ({"observation__state": np.array([1, np.nan, 0, 0], np.float32)}, "observation/state", "NaN"),
    ({"rtc__prev_chunk_leftover": np.zeros((5, ACT + 1), np.float32)}, "rtc/prev_chunk_leftover", "shape"),
    ({"rtc__prev_chunk_leftover": np.zeros((H + 1, ACT), np.float32)}, "rtc/prev_chunk_leftover", "shape"),
    ({"rtc__prev_chunk_leftover": np.zeros((2, ACT), np.float32), "rtc__execute_horizon": 3},
     "rtc/prev_chunk_leftover", "holds 2 actions"),
    ({"rtc__prev_chunk_leftover": np.full((5, ACT), np.nan, np.float32)}, "rtc/prev_chunk_leftover", "NaN"),
    ({"rtc__prev_chunk_leftover": LEFT, "rtc__inference_delay": 6}, "rtc/inference_delay", r"\[0, 5\]"),
    ({"rtc__prev_chunk_leftover": LEFT, "rtc__inference_delay": -1}, "rtc/inference_delay", r"\[0, 5\]"),
    ({"rtc__prev_chunk_leftover": LEFT, "rtc__inference_delay": 1.5}, "rtc/inference_delay", "integer"),
    ({"rtc__prev_chunk_leftover": LEFT, "rtc__inference_delay": True}, "rtc/inference_delay", "integer"),
    ({"rtc__prev_chunk_leftover": LEFT, "rtc__inference_delay": 3, "rtc__method": "trained_prefix"},
     "rtc/inference_delay", "trained with delays up to 2"),
    ({"rtc__prev_chunk_leftover": LEFT, "rtc__execute_horizon": 0}, "rtc/execute_horizon", r"\[1, 8\]"),
    ({"rtc__prev_chunk_leftover": np.zeros((H, ACT), np.float32)}, "rtc/execute_horizon", "required"),
    ({"rtc__prev_chunk_leftover": LEFT, "rtc__method": "rtx"}, "rtc/method", "did you mean 'rtc'"),
    ({"rtc__prev_chunk_leftover": LEFT, "rtc__method": "bid"}, "rtc/method", "unknown"),
    ({"rtc__inference_delay": 9}, "rtc/inference_delay", r"\[0, 8\]"),
    ({"rtc__seed": -1}, "rtc/seed", "in"),
    ({"rtc__delay": 1}, "rtc/delay", "unknown RTC key"),
])
def test_each_bad_input_names_its_key(keys, key, message):
    req = {protocol.OBSERVATION_KEY: np.arange(OBS, dtype=np.float32)} if "observation__state" not in keys else {}
    req.update({k.replace("__", "/"): v for k, v in keys.items()})
    if not keys:
        req = {"other": 1}
    with pytest.raises(ProtocolError, match=rf"^{key}: .*{message}") as info:
        parse_request(packb(req), SERVED)
    assert info.value.key == key and "\n" not in str(info.value)


def test_metadata_describes_the_policy():
    meta = unpackb(packb(protocol.metadata(SERVED)))
    assert meta["horizon"] == H and meta["action_dim"] == ACT
    assert meta["observation"] == {"observation/state": {"shape": [OBS], "dtype": "float32"}}
    assert meta["methods"] == ["naive", "rtc", "trained_prefix"] and meta["default_method"] == "rtc"
    assert meta["max_trained_delay"] == 2 and meta["server"] == "rtchunk" and isinstance(meta["version"], str)
