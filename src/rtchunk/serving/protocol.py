"""The wire protocol: openpi's websocket policy protocol, plus optional RTC keys. numpy and msgpack only.

Frames are binary msgpack. A numpy array travels as a map with *bytes* keys
``{b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": [...]}`` and a numpy scalar
as ``{b"__npgeneric__": True, b"data": value, b"dtype": dtype.str}``, exactly as ``openpi-client``'s
``msgpack_numpy`` writes and reads them (it recognises arrays by the bytes keys only). Nothing is ever
pickled; object, void (structured), complex, datetime and other exotic dtypes are refused both ways.

A request is one map, the observation dict. The policy reads ``observation/state`` (float [obs_dim])
and, when present, the ``rtc/*`` keys below; other keys (an openpi client's images or prompt) are
ignored, an unknown ``rtc/*`` key is an error (a misspelt key must not silently turn RTC off).

Decoding happens here rather than in a msgpack hook so that an error can name the key it is about:
every problem raises ``ProtocolError`` whose message starts with the offending key.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import msgpack
import numpy as np

from rtchunk.choices import unknown_choice
from rtchunk.methods import TrainedPrefix, told_delay_bound

PROTOCOL_VERSION = 1

OBSERVATION_KEY = "observation/state"
LEFTOVER_KEY = "rtc/prev_chunk_leftover"
DELAY_KEY = "rtc/inference_delay"
EXECUTE_HORIZON_KEY = "rtc/execute_horizon"
METHOD_KEY = "rtc/method"
SEED_KEY = "rtc/seed"
RTC_KEYS = (LEFTOVER_KEY, DELAY_KEY, EXECUTE_HORIZON_KEY, METHOD_KEY, SEED_KEY)

ACTIONS_KEY = "actions"
TIMING_KEY = "server_timing"

# Plain numbers, booleans and text: what a policy observation can hold without pickle.
_ALLOWED_KINDS = "biufUS"
MAX_SEED = 2**32 - 1


class ProtocolError(ValueError):
    """A frame that breaks the protocol; ``key`` names what is wrong (``frame`` for the frame itself)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


# -- encoding ----------------------------------------------------------------------------------------


def _encode_default(obj):
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in _ALLOWED_KINDS:
        raise ValueError(f"cannot send an array of dtype {obj.dtype} (allowed kinds: bool, int, float, str)")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__} (only numbers, strings, lists, maps and numpy arrays)")


def packb(obj: Any) -> bytes:
    """One frame: ``obj`` as msgpack with numpy arrays in openpi's layout."""
    return msgpack.packb(obj, default=_encode_default, use_bin_type=True)


# -- decoding ----------------------------------------------------------------------------------------


def _dtype(raw, key: str) -> np.dtype:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if not isinstance(raw, str) or len(raw) > 16:
        raise ProtocolError(key, f"array dtype must be a numpy dtype string such as '<f4', got {raw!r}")
    try:
        dtype = np.dtype(raw)
    except (TypeError, ValueError):
        raise ProtocolError(key, f"unknown array dtype {raw!r}") from None
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ProtocolError(key, f"array dtype {raw!r} is not allowed (only bool, int, float and str arrays)")
    return dtype


def _decode_array(obj: Mapping, key: str) -> np.ndarray:
    data, shape = obj.get(b"data"), obj.get(b"shape")
    dtype = _dtype(obj.get(b"dtype"), key)
    if not isinstance(data, bytes):
        raise ProtocolError(key, "array data must be raw bytes")
    if not isinstance(shape, (list, tuple)) or len(shape) > 32 or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise ProtocolError(key, f"array shape must be a list of non-negative integers, got {shape!r}")
    # Compare the claimed size with the bytes received before building anything: a forged shape must not
    # allocate, and a short buffer is a truncated array.
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(data):
        raise ProtocolError(key, f"array of shape {list(shape)} and dtype {dtype.str} needs {expected} bytes, "
                                 f"the frame holds {len(data)} (truncated or corrupt)")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _decode(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        if b"__ndarray__" in obj:
            return _decode_array(obj, key)
        if b"__npgeneric__" in obj:
            dtype = _dtype(obj.get(b"dtype"), key)
            try:
                return dtype.type(obj.get(b"data"))
            except (TypeError, ValueError, OverflowError):
                raise ProtocolError(key, f"numpy scalar of dtype {dtype.str} holds {obj.get(b'data')!r}") from None
        return {k: _decode(v, f"{key}/{k}" if key != "frame" else str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, f"{key}[{i}]") for i, v in enumerate(obj)]
    return obj


def unpackb(frame: bytes) -> Any:
    """A frame written by ``packb`` (or by openpi-client), with arrays rebuilt (read-only, zero-copy)."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise ProtocolError("frame", f"expected a binary msgpack frame, got a {type(frame).__name__} frame")
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as e:
        raise ProtocolError("frame", f"not a valid msgpack message (truncated or corrupt): {e}") from None
    return _decode(obj, "frame")


# -- requests ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServedPolicy:
    """What a server serves: the sizes, the methods by name and their delay rules."""

    obs_dim: int
    horizon: int
    action_dim: int
    methods: Mapping[str, Any]
    """Method name -> method object of ``rtchunk.methods`` (for ``told_delay_bound``)."""
    default_method: str
    """The method of a request that carries a leftover but no ``rtc/method``."""
    max_trained_delay: int | None = None
    """TrainedPrefix's largest trained delay (``TrainingDelays.max_delay``); larger told delays are refused."""

    def __post_init__(self):
        if self.default_method not in self.methods:
            raise ValueError(f"default_method must be one of the served methods {sorted(self.methods)}, "
                             f"got {self.default_method!r}")

    def delay_bound(self, method: str, execute_horizon: int) -> int:
        method_obj = self.methods[method]
        bound = told_delay_bound(method_obj, self.horizon, execute_horizon)
        if isinstance(method_obj, TrainedPrefix) and self.max_trained_delay is not None:
            bound = min(bound, self.max_trained_delay)
        return bound


@dataclasses.dataclass(frozen=True, eq=False)
class Request:
    """A validated request, ready for the sampler."""

    observation: np.ndarray
    """float32 [obs_dim]."""
    method: str
    """The method to sample with: ``naive`` whenever no leftover came."""
    prev_chunk: np.ndarray
    """float32 [H, A]: the leftover, zero-padded to H (the sampler ignores entries at and beyond H - s)."""
    inference_delay: int
    execute_horizon: int
    seed: int | None


def _float_array(value, key: str, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise ProtocolError(key, f"must be a numpy array ({what}), got a {type(value).__name__}")
    if value.dtype.kind != "f":
        raise ProtocolError(key, f"must be a floating-point array ({what}), got dtype {value.dtype}")
    return value.astype(np.float32, copy=False)


def _integer(value, key: str, low: int, high: int, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ProtocolError(key, f"must be an integer ({what}), got {value!r}")
    if not low <= int(value) <= high:
        raise ProtocolError(key, f"must be in [{low}, {high}] ({what}), got {int(value)}")
    return int(value)


def parse_request(frame, served: ServedPolicy) -> Request:
    """Decode and check one request frame; ``ProtocolError`` naming the key on any problem."""
    obj = unpackb(frame)
    if not isinstance(obj, dict):
        raise ProtocolError("frame", f"a request must be a map of observation keys, got a {type(obj).__name__}")
    for key in obj:
        if isinstance(key, str) and key.startswith("rtc/") and key not in RTC_KEYS:
            raise ProtocolError(key, f"unknown RTC key (known: {', '.join(RTC_KEYS)})")
    h, a, o = served.horizon, served.action_dim, served.obs_dim
    if OBSERVATION_KEY not in obj:
        raise ProtocolError(OBSERVATION_KEY, f"missing (the policy's observation, float32 [{o}])")
    obs = _float_array(obj[OBSERVATION_KEY], OBSERVATION_KEY, f"float32 [{o}]")
    if obs.shape != (o,):
        raise ProtocolError(OBSERVATION_KEY, f"must have shape [{o}], got {list(obs.shape)}")
    if not np.isfinite(obs).all():
        raise ProtocolError(OBSERVATION_KEY, "holds NaN or inf")

    method = obj.get(METHOD_KEY, served.default_method)
    if not isinstance(method, str):
        raise ProtocolError(METHOD_KEY, f"must be a method name, got {method!r}")
    if method not in served.methods:
        raise ProtocolError(METHOD_KEY, str(unknown_choice(METHOD_KEY, method, tuple(served.methods))).split(": ", 1)[1])
    seed = None
    if SEED_KEY in obj:
        seed = _integer(obj[SEED_KEY], SEED_KEY, 0, MAX_SEED, "the request's noise seed")

    prev = np.zeros((h, a), np.float32)
    if LEFTOVER_KEY not in obj:
        # No previous chunk: nothing to continue, so a naive chunk whatever else the request says.
        s = _integer(obj[EXECUTE_HORIZON_KEY], EXECUTE_HORIZON_KEY, 1, h, "actions executed") \
            if EXECUTE_HORIZON_KEY in obj else h
        if DELAY_KEY in obj:
            _integer(obj[DELAY_KEY], DELAY_KEY, 0, h, "ticks until the chunk is used")
        return Request(obs, "naive", prev, 0, s, seed)

    left = _float_array(obj[LEFTOVER_KEY], LEFTOVER_KEY, f"float32 [k <= {h}, {a}]")
    if left.ndim != 2 or left.shape[1] != a or left.shape[0] > h:
        raise ProtocolError(LEFTOVER_KEY, f"must have shape [k <= {h}, {a}], got {list(left.shape)}")
    k = left.shape[0]
    if EXECUTE_HORIZON_KEY in obj:
        s = _integer(obj[EXECUTE_HORIZON_KEY], EXECUTE_HORIZON_KEY, 1, h, "actions of the previous chunk executed")
    elif k < h:
        s = h - k  # the leftover is what was not executed
    else:
        raise ProtocolError(EXECUTE_HORIZON_KEY, f"required when the leftover holds all {h} actions")
    if k < h - s:
        raise ProtocolError(LEFTOVER_KEY, f"holds {k} actions but horizon - execute_horizon = {h - s} are guided")
    if not np.isfinite(left[: h - s]).all():
        raise ProtocolError(LEFTOVER_KEY, f"holds NaN or inf among its first {h - s} actions")
    bound = served.delay_bound(method, s)
    why = f"told delay for {method} with execute_horizon {s}"
    if method == "trained_prefix" and served.max_trained_delay is not None and bound == served.max_trained_delay:
        why = f"trained_prefix was trained with delays up to {served.max_trained_delay}"
    d = _integer(obj.get(DELAY_KEY, 0), DELAY_KEY, 0, bound, why)
    prev[: h - s] = left[: h - s]  # the rest is never read; zeros keep NaN out of every backend
    return Request(obs, method, prev, d, s, seed)


def reply(actions: np.ndarray, infer_ms: float, queue_ms: float, batch_size: int) -> bytes:
    return packb({ACTIONS_KEY: np.asarray(actions, np.float32),
                  TIMING_KEY: {"infer_ms": float(infer_ms), "queue_ms": float(queue_ms), "batch_size": int(batch_size)}})


def metadata(served: ServedPolicy, **extra) -> dict:
    """The frame a server sends on connect."""
    from rtchunk import __version__

    return {
        "server": "rtchunk",
        "version": __version__,
        "protocol_version": PROTOCOL_VERSION,
        "horizon": served.horizon,
        "action_dim": served.action_dim,
        "observation": {OBSERVATION_KEY: {"shape": [served.obs_dim], "dtype": "float32"}},
        "methods": list(served.methods),
        "default_method": served.default_method,
        "max_trained_delay": served.max_trained_delay,
        "rtc_keys": list(RTC_KEYS),
        **extra,
    }
