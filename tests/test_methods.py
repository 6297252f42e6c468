"""The backend-free method rules: prefix freezing, the told-delay bound, the shared argument check, the registry."""

import subprocess
import sys

import numpy as np
import pytest

from rtchunk import methods
from rtchunk.methods import (
    BID,
    METHOD_NAMES,
    RTC,
    HardMask,
    JacobianFree,
    MethodSettings,
    Naive,
    TrainedPrefix,
    check_method_names,
    check_sample_arguments,
    execution,
    freezes_prefix,
    make_method,
    told_delay_bound,
)

H = 8


def test_methods_that_freeze_a_prefix_may_be_told_at_most_h_minus_s():
    for method in (RTC(), RTC("linear"), HardMask(), JacobianFree(), TrainedPrefix()):
        assert freezes_prefix(method)
        assert [told_delay_bound(method, H, s) for s in (1, 3, 8)] == [7, 5, 0]
    for method in (Naive(), BID(num_samples=1)):
        assert not freezes_prefix(method)
        assert told_delay_bound(method, H, 3) == H
    assert told_delay_bound(None, H, 3) == 5  # unknown method: only what the previous chunk covers
    # By registered name (a remote policy knows only the name it asks the server for).
    assert {n: told_delay_bound(n, H, 3) for n in METHOD_NAMES} == {
        "naive": 8, "rtc": 5, "rtc_linear": 5, "hard_mask": 5, "jacobian_free": 5, "bid": 8,
        "temporal_ensembling": 8, "trained_prefix": 5}


def test_registry_builds_every_named_method_with_the_papers_defaults():
    assert set(METHOD_NAMES) == {"naive", "rtc", "rtc_linear", "hard_mask", "jacobian_free", "bid",
                                 "temporal_ensembling", "trained_prefix"}
    built = {name: make_method(name, rng=object()) for name in METHOD_NAMES}
    assert built["rtc"] == RTC(schedule="exp", max_guidance_weight=5.0)
    assert built["rtc_linear"] == RTC(schedule="linear", max_guidance_weight=5.0)
    assert built["hard_mask"] == HardMask(5.0)
    assert built["jacobian_free"] == JacobianFree("exp", 5.0)
    assert (built["bid"].num_samples, built["bid"].top_k) == (32, 3)
    assert built["temporal_ensembling"] == Naive() and execution("temporal_ensembling") == "ensemble"
    assert all(execution(n) == "latest" for n in METHOD_NAMES if n != "temporal_ensembling")
    settings = MethodSettings(max_guidance_weight=1.0, bid_samples=4, bid_top_k=2)
    assert make_method("rtc", settings).max_guidance_weight == 1.0
    assert make_method("bid", settings, rng=object()).num_samples == 4
    assert make_method("bid", MethodSettings(bid_samples=1)).rng is None  # N = 1 is Naive and needs no key


def test_unknown_names_suggest_the_closest():
    with pytest.raises(ValueError, match=r"unknown 'rtcc' \(did you mean 'rtc'\?\); choose from naive, rtc"):
        make_method("rtcc")
    with pytest.raises(ValueError, match=r"^--methods: unknown 'hardmask' \(did you mean 'hard_mask'\?\)"):
        check_method_names(["naive", "hardmask"])
    with pytest.raises(ValueError, match="each method at most once"):
        check_method_names(["rtc", "rtc"])
    with pytest.raises(ValueError, match="unknown 'bid'"):
        check_method_names(["bid"], "--methods", allowed=("naive", "rtc"))
    assert check_method_names("rtc") == ("rtc",)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_guidance_weight=0.0), "max_guidance_weight must be a finite number > 0"),
    (dict(max_guidance_weight=float("inf")), "max_guidance_weight"),
    (dict(bid_samples=0), "bid_samples must be an integer >= 1"),
    (dict(bid_samples=2, bid_top_k=3), r"bid_top_k must be in \[1, bid_samples=2\]"),
    (dict(ensemble_decay=-1.0), "ensemble_decay"),
])
def test_method_settings_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MethodSettings(**kwargs)


def _check(method, delay=2, s=3, prev=True, has_s=True, **over):
    args = dict(noise_shape=(2, H, 3), prev_shape=(2, H, 3) if prev else None, delay_shape=np.shape(delay),
                delay=None if delay is None else np.asarray(delay), has_execute_horizon=has_s,
                execute_horizon=None if s is None else np.asarray(s), num_steps=5)
    args.update(over)
    check_sample_arguments(method, **args)


def test_argument_check_accepts_the_contract():
    _check(RTC())
    _check(RTC(), delay=[1, 5], s=3)  # per-sample delays
    _check(RTC(), delay=None, s=None)  # traced inside jit: nothing concrete to check
    _check(Naive(), delay=8, s=1, prev=False)  # naive may be told up to H
    _check(TrainedPrefix(), delay=0, prev=False)  # no prefix to freeze: no previous chunk needed


@pytest.mark.parametrize("method, kwargs, match", [
    ("x", {}, "method must be Naive"),
    (RTC(), dict(delay=6, s=3), r"inference_delay must be <= horizon - execute_horizon = 5 for RTC"),
    (Naive(), dict(delay=9), r"inference_delay must be in \[0, horizon=8\]"),
    (Naive(), dict(delay=-1), "inference_delay must be in"),
    (RTC(), dict(s=0), r"execute_horizon must be an integer in \[1, horizon=8\]"),
    (RTC(), dict(s=9), "execute_horizon must be an integer in"),
    (RTC(), dict(prev=False), "RTC needs prev_chunk"),
    (RTC(), dict(s=None, has_s=False), "needs execute_horizon"),
    (Naive(), dict(delay_shape=(3,), delay=np.zeros(3, int)), r"shape \[batch=2\]"),
    (Naive(), dict(num_steps=0), "num_steps must be an integer >= 1"),
    (Naive(), dict(prev_shape=(2, 7, 3)), "prev_chunk must have the shape of noise"),
    (Naive(), dict(noise_shape=(2, 8)), r"noise must have shape \[batch, horizon, action_dim\]"),
])
def test_argument_check_names_the_parameter(method, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _check(method, **kwargs)


def test_methods_import_no_backend():
    code = ("import sys, rtchunk.methods, rtchunk.choices, rtchunk.files, rtchunk.delays, rtchunk.execution, "
            "rtchunk.metrics, rtchunk.model_config; "
            "print([m for m in ('jax', 'flax', 'optax', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert methods.DEFAULT_NUM_STEPS == 5 and methods.DEFAULT_GUIDANCE_WEIGHT == 5.0  # the papers'
