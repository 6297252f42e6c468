"""rtchunk.torch.sampling: same definitions as the JAX core, both time conventions, the true VJP."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402

from rtchunk import sampling as js  # noqa: E402
from rtchunk.torch import sampling as ts  # noqa: E402

B, H, A = 3, 8, 2


def _mlp_velocity(seed=0, width=32):
    """A nonlinear, time-dependent velocity function (noise_at_0) whose Jacobian is far from the identity."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(A + 1, width, generator=g)
    w2 = torch.randn(width, A, generator=g) / math.sqrt(width)
    mix = torch.randn(H, H, generator=g) / math.sqrt(H)  # mixes tokens within a sample, never across samples

    def velocity_fn(x, tau):
        h = torch.cat([torch.einsum("ij,bja->bia", mix, x), tau[..., None].expand(*x.shape[:2], 1)], -1)
        return torch.tanh(h @ w1) @ w2 * 2.0

    return velocity_fn


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, A, generator=g), torch.randn(B, H, A, generator=g)


def _noise_at_1(velocity_fn):
    """The same flow written in LeRobot's convention: t = 1 - tau, velocity = noise - action."""
    return lambda x, t: -velocity_fn(x, 1 - t)


# -- weights -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", js.SCHEDULES)
def test_prefix_weights_match_jax(schedule):
    delay, end = np.array([0, 2, 5, 8, 3]), np.array([5, 5, 5, 8, 2])
    got = ts.prefix_weights(torch.tensor(delay), torch.tensor(end), H, schedule)
    want = np.asarray(js.prefix_weights(delay, end, H, schedule))
    assert got.dtype == torch.float32 and got.shape == (5, H)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-7)


def test_prefix_weights_paper_eq5():
    # H=10, d=3, s=4: 1 below d, c (e^c - 1)/(e - 1) with c = (6 - i)/4 up to H - s, then 0.
    w = ts.prefix_weights(3, 6, 10, "exp").numpy()
    c = (6 - np.arange(3, 6)) / 4
    np.testing.assert_allclose(w, [1, 1, 1, *(c * np.expm1(c) / (math.e - 1)), 0, 0, 0, 0], atol=1e-7)
    # The values the JAX core's issue gives for H=8, d=1, end=7.
    np.testing.assert_allclose(ts.prefix_weights(1, 7, 8).numpy(), [1, 0.677, 0.433, 0.256, 0.133, 0.055, 0.013, 0], atol=6e-4)


def test_guidance_weight_matches_jax_and_is_symmetric():
    tau = np.linspace(0, 1, 11, dtype=np.float32)
    got = ts.guidance_weight(torch.from_numpy(tau), 5.0).numpy()
    np.testing.assert_allclose(got, np.asarray(js.guidance_weight(tau, 5.0)), atol=1e-6)
    np.testing.assert_allclose(got, got[::-1], atol=1e-5)  # why tau vs t cannot be told apart by the weight
    assert got[0] == got[-1] == 5.0


# -- validation: the same errors as JAX --------------------------------------------------------------

_BAD = {
    "noise rank": dict(noise=(B, H), method="naive"),
    "num_steps": dict(num_steps=0),
    "prev shape": dict(prev=(B, H, A + 1), method="rtc", execute_horizon=3),
    "delay shape": dict(inference_delay=np.array([1, 1]), method="naive"),
    "delay range": dict(inference_delay=np.array([0, 9, 1]), method="naive"),
    "execute range": dict(execute_horizon=0, method="rtc"),
    "delay vs execute": dict(inference_delay=6, execute_horizon=3, method="rtc"),
    "trained prefix delay": dict(inference_delay=np.array([0, 6, 1]), execute_horizon=3, method="prefix"),
    "rtc without prev": dict(prev=None, method="rtc", execute_horizon=3),
    "prefix without prev": dict(prev=None, method="prefix", inference_delay=1),
    "rtc without execute": dict(method="jf"),
}


@pytest.mark.parametrize("case", list(_BAD))
def test_validation_errors_are_the_jax_errors(case):
    spec = {"noise": (B, H, A), "prev": (B, H, A), "method": "rtc", "inference_delay": 1, "execute_horizon": None,
            "num_steps": 2, **_BAD[case]}
    methods = {"naive": (js.Naive(), ts.Naive()), "rtc": (js.RTC(), ts.RTC()), "jf": (js.JacobianFree(), ts.JacobianFree()),
               "prefix": (js.TrainedPrefix(), ts.TrainedPrefix())}
    messages = []
    for lib, method, arr in ((js, methods[spec["method"]][0], jnp.zeros), (ts, methods[spec["method"]][1], torch.zeros)):
        with pytest.raises(ValueError) as info:
            lib.sample_chunk(
                lambda x, t: x, arr(spec["noise"]), method,
                prev_chunk=None if spec["prev"] is None else arr(spec["prev"]),
                inference_delay=spec["inference_delay"], execute_horizon=spec["execute_horizon"], num_steps=spec["num_steps"],
            )
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_torch_specific_validation():
    noise, prev = _inputs()
    with pytest.raises(ValueError, match="time_convention must be one of"):
        ts.sample_chunk(lambda x, t: x, noise, ts.Naive(), time_convention="noise_at_2")
    with pytest.raises(ValueError, match="use rtchunk.torch.BID"):
        ts.sample_chunk(lambda x, t: x, noise, js.BID(num_samples=1))
    with pytest.raises(ValueError, match="needs generator"):
        ts.BID(num_samples=4)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        ts.BID(num_samples=0)
    with pytest.raises(ValueError, match=r"top_k must be in \[1, num_samples=4\]"):
        ts.BID(num_samples=4, generator=torch.Generator(), weak_velocity_fn=lambda x, t: x, top_k=5)
    with pytest.raises(ValueError, match="candidates_per_call must be None or an integer >= 1"):
        ts.BID(num_samples=1, candidates_per_call=0)
    with pytest.raises(ValueError, match="candidate_noise must have shape"):
        ts.sample_chunk(lambda x, t: x, noise, ts.BID(num_samples=3, candidate_noise=torch.zeros(3, B, H, A)),
                        prev_chunk=prev, execute_horizon=3)


# -- the true VJP ------------------------------------------------------------------------------------


def test_rtc_correction_is_the_true_vjp_not_the_weighted_error():
    """One step of a linear velocity v = x M has J^T e = e + (1 - tau) e M^T in closed form.

    An implementation that evaluates the velocity before x_t requires grad differentiates only the
    ``x +`` term of the denoiser, so its "VJP" is the weighted error e itself: it would return the
    JacobianFree chunk here and fail the first assertion.
    """
    g = torch.Generator().manual_seed(3)
    m = torch.randn(A, A, generator=g) * 2
    noise, prev = _inputs(1)
    velocity_fn = lambda x, tau: x @ m  # noqa: E731
    d, s, beta = 2, 3, 5.0
    w = ts.prefix_weights(d, H - s, H, "exp")[None, :, None]
    x1_hat = noise + noise @ m  # tau = 0 on the single step
    e = w * (prev - x1_hat)
    true = noise + noise @ m + beta * (e + e @ m.T)
    identity = noise + noise @ m + beta * e
    kwargs = dict(prev_chunk=prev, inference_delay=d, execute_horizon=s, num_steps=1)
    rtc = ts.sample_chunk(velocity_fn, noise, ts.RTC(), **kwargs)
    torch.testing.assert_close(rtc, true, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ts.sample_chunk(velocity_fn, noise, ts.JacobianFree(), **kwargs), identity, atol=1e-5, rtol=1e-5)
    assert (rtc - identity).abs().max() > 0.5


def _reference_rtc(velocity_fn, noise, prev, d, s, num_steps, beta=5.0, time_convention="noise_at_0"):
    """RTC written out independently, per sample, with torch.autograd.functional.vjp (a second implementation).

    In noise_at_1 it follows LeRobot's formulas: t from 1 to 0, x0_hat = x - t v, v_guided = v - w J^T e.
    """
    w = ts.prefix_weights(d, H - s, H, "exp")[:, None]
    out = []
    for b in range(noise.shape[0]):
        x = noise[b : b + 1]
        for i in range(num_steps):
            tau = torch.tensor(i / num_steps)
            t = tau if time_convention == "noise_at_0" else 1 - tau
            sign = 1.0 if time_convention == "noise_at_0" else -1.0
            rest = (1 - t) if time_convention == "noise_at_0" else t

            def denoise(x, t=t):
                return x + sign * rest * velocity_fn(x, t.expand(1, H))

            v = velocity_fn(x, t.expand(1, H))
            x_hat = denoise(x)
            e = w * (prev[b : b + 1] - x_hat)
            e[:, H - s :] = 0
            _, correction = torch.autograd.functional.vjp(denoise, x, e)
            guided = v + sign * ts.guidance_weight(tau, beta) * correction
            x = x + sign * guided / num_steps
        out.append(x)
    return torch.cat(out)


@pytest.mark.parametrize("time_convention", ["noise_at_0", "noise_at_1"])
def test_rtc_matches_an_independent_per_sample_vjp(time_convention):
    velocity_fn = _mlp_velocity()
    fn = velocity_fn if time_convention == "noise_at_0" else _noise_at_1(velocity_fn)
    noise, prev = _inputs(2)
    got = ts.sample_chunk(fn, noise, ts.RTC(), prev_chunk=prev, inference_delay=2, execute_horizon=3, num_steps=4,
                          time_convention=time_convention)
    want = _reference_rtc(fn, noise, prev, 2, 3, 4, time_convention=time_convention)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    jf = ts.sample_chunk(fn, noise, ts.JacobianFree(), prev_chunk=prev, inference_delay=2, execute_horizon=3, num_steps=4,
                         time_convention=time_convention)
    assert (got - jf).abs().max() > 1e-2


def test_guided_sampling_under_no_grad_inference_mode_and_grad_mode():
    """Same chunk in every grad mode; no graph through parameters, no gradients written to them."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(4, 16)
    module = torch.nn.Sequential(torch.nn.Linear(A, 16), torch.nn.Tanh(), torch.nn.Linear(16, A))
    obs = torch.randn(B, 4)

    def make_velocity_fn():
        # As a policy does: features computed once per chunk in the caller's mode (inference tensors
        # under inference_mode), then read by every flow step.
        features = encoder(obs)[:, None, :]
        return lambda x, tau: module[2](module[1](module[0](x) + features)) * (1 + tau[..., None])

    noise, prev = _inputs(4)
    kwargs = dict(prev_chunk=prev, inference_delay=1, execute_horizon=3, num_steps=3)
    plain = ts.sample_chunk(make_velocity_fn(), noise, ts.RTC(), **kwargs)
    with torch.no_grad():
        no_grad = ts.sample_chunk(make_velocity_fn(), noise, ts.RTC(), **kwargs)
    with torch.inference_mode():
        inference = ts.sample_chunk(make_velocity_fn(), noise.clone(), ts.RTC(), prev_chunk=prev.clone(),
                                    inference_delay=1, execute_horizon=3, num_steps=3)
    assert plain.grad_fn is None and not plain.requires_grad
    assert all(p.grad is None for p in [*module.parameters(), *encoder.parameters()])
    torch.testing.assert_close(no_grad, plain, rtol=0, atol=0)
    torch.testing.assert_close(inference, plain, rtol=0, atol=0)
    jf = ts.sample_chunk(make_velocity_fn(), noise, ts.JacobianFree(), **kwargs)
    assert (plain - jf).abs().max() > 1e-3


def test_guided_sampling_accepts_inference_tensors_outside_inference_mode():
    """Noise and prev_chunk made under inference_mode, sampled outside it (plain autograd path)."""
    velocity_fn = _mlp_velocity()
    noise, prev = _inputs(2)
    kwargs = dict(inference_delay=2, execute_horizon=3, num_steps=3)
    want = ts.sample_chunk(velocity_fn, noise, ts.RTC(), prev_chunk=prev, **kwargs)
    with torch.inference_mode():
        noise_i, prev_i = noise.clone(), prev.clone()
    assert noise_i.is_inference()
    got = ts.sample_chunk(velocity_fn, noise_i, ts.RTC(), prev_chunk=prev_i, **kwargs)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["plain", "inference_mode"])
def test_velocity_cut_off_from_x_is_an_error_not_a_silent_jacobian_free(mode):
    """A velocity_fn that runs under no_grad inside would make the VJP the weighted error itself."""
    velocity_fn = _mlp_velocity()

    def detached(x, tau):
        with torch.no_grad():
            return velocity_fn(x, tau)

    noise, prev = _inputs(2)
    kwargs = dict(prev_chunk=prev, inference_delay=2, execute_horizon=3, num_steps=2)
    with torch.inference_mode(mode == "inference_mode"):
        for method in (ts.RTC(), ts.HardMask()):
            with pytest.raises(ValueError, match="does not depend differentiably on x_t"):
                ts.sample_chunk(detached, noise, method, **kwargs)
        ts.sample_chunk(detached, noise, ts.JacobianFree(), **kwargs)  # needs no VJP


# -- time conventions --------------------------------------------------------------------------------


def test_both_conventions_integrate_a_point_mass_to_the_data():
    """Data = one chunk a*: the exact velocity is a straight line, so Euler lands on a* from any noise."""
    target, _ = _inputs(5)
    noise, _ = _inputs(6)
    at_0 = lambda x, tau: (target - x) / (1 - tau[..., None])  # noqa: E731  action - noise
    at_1 = lambda x, t: (x - target) / t[..., None]  # noqa: E731  noise - action, x_t = t noise + (1 - t) a
    for fn, convention in ((at_0, "noise_at_0"), (at_1, "noise_at_1")):
        got = ts.sample_chunk(fn, noise, ts.Naive(), num_steps=4, time_convention=convention)
        torch.testing.assert_close(got, target, atol=1e-5, rtol=1e-5)


def _every_method(seed=7):
    g = torch.Generator().manual_seed(seed)
    extra = torch.randn(3, B, H, A, generator=g)
    return {
        "naive": ts.Naive(), "rtc": ts.RTC(), "rtc linear": ts.RTC(schedule="linear"), "hard": ts.HardMask(),
        "jf": ts.JacobianFree(), "prefix": ts.TrainedPrefix(), "bid": ts.BID(num_samples=4, candidate_noise=extra),
        "bid weak": ts.BID(num_samples=4, candidate_noise=extra, top_k=2, weak_velocity_fn=None),
    }


@pytest.mark.parametrize("name", list(_every_method()))
def test_noise_at_1_is_the_same_process_as_noise_at_0(name):
    method = _every_method()[name]
    velocity_fn = _mlp_velocity()
    if name == "bid weak":
        weak = _mlp_velocity(seed=1)
        method = ts.BID(num_samples=4, candidate_noise=method.candidate_noise, top_k=2, weak_velocity_fn=weak)
        method_1 = ts.BID(num_samples=4, candidate_noise=method.candidate_noise, top_k=2, weak_velocity_fn=_noise_at_1(weak))
    else:
        method_1 = method
    noise, prev = _inputs(8)
    kwargs = dict(prev_chunk=prev, inference_delay=torch.tensor([0, 2, 4]), execute_horizon=3, num_steps=4)
    at_0 = ts.sample_chunk(velocity_fn, noise, method, **kwargs)
    at_1 = ts.sample_chunk(_noise_at_1(velocity_fn), noise, method_1, time_convention="noise_at_1", **kwargs)
    torch.testing.assert_close(at_1, at_0, atol=1e-5, rtol=1e-5)


def test_trained_prefix_time_per_convention():
    """The clean prefix carries the data time: 1 in noise_at_0, 0 in noise_at_1 (LeRobot's training-time RTC)."""
    noise, prev = _inputs(9)
    seen = {}

    def recorder(convention):
        def fn(x, t):
            seen.setdefault(convention, []).append(t.clone())
            return torch.zeros_like(x)

        return fn

    delay = torch.tensor([0, 2, 3])
    for convention in ts.TIME_CONVENTIONS:
        chunk = ts.sample_chunk(recorder(convention), noise, ts.TrainedPrefix(), prev_chunk=prev, inference_delay=delay,
                                execute_horizon=3, num_steps=2, time_convention=convention)
        torch.testing.assert_close(chunk[1, :2], prev[1, :2], rtol=0, atol=0)
        torch.testing.assert_close(chunk[2, 3:], noise[2, 3:], rtol=0, atol=0)
    prefix = torch.arange(H)[None] < delay[:, None]
    for step, tau in enumerate([0.0, 0.5]):
        torch.testing.assert_close(seen["noise_at_0"][step], torch.where(prefix, 1.0, tau))
        torch.testing.assert_close(seen["noise_at_1"][step], torch.where(prefix, 0.0, 1 - tau))


# -- properties --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rtc", "hard", "jf", "prefix", "bid"])
def test_per_sample_delays_equal_one_sample_at_a_time(name):
    method = _every_method()[name]
    velocity_fn = _mlp_velocity()
    noise, prev = _inputs(10)
    delays = [0, 2, 5]
    batched = ts.sample_chunk(velocity_fn, noise, method, prev_chunk=prev, inference_delay=np.array(delays),
                              execute_horizon=3, num_steps=3)
    for b, d in enumerate(delays):
        single_method = method
        if isinstance(method, ts.BID):
            single_method = ts.BID(num_samples=4, candidate_noise=method.candidate_noise[:, b : b + 1])
        alone = ts.sample_chunk(velocity_fn, noise[b : b + 1], single_method, prev_chunk=prev[b : b + 1],
                                inference_delay=d, execute_horizon=3, num_steps=3)
        torch.testing.assert_close(batched[b : b + 1], alone, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["rtc", "hard", "jf", "prefix", "bid"])
def test_ignored_prev_entries_may_be_nan(name):
    method = _every_method()[name]
    velocity_fn = _mlp_velocity()
    noise, prev = _inputs(11)
    s = 3
    poisoned = prev.clone()
    poisoned[:, H - s :] = float("nan")
    zeroed = prev.clone()
    zeroed[:, H - s :] = 0
    kwargs = dict(inference_delay=2, execute_horizon=s, num_steps=3)
    got = ts.sample_chunk(velocity_fn, noise, method, prev_chunk=poisoned, **kwargs)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, ts.sample_chunk(velocity_fn, noise, method, prev_chunk=zeroed, **kwargs), rtol=0, atol=0)


def test_hard_mask_is_the_zeros_schedule_and_prefix_is_exact():
    velocity_fn = _mlp_velocity()
    noise, prev = _inputs(12)
    kwargs = dict(prev_chunk=prev, inference_delay=3, execute_horizon=3, num_steps=3)
    torch.testing.assert_close(ts.sample_chunk(velocity_fn, noise, ts.HardMask(), **kwargs),
                               ts.sample_chunk(velocity_fn, noise, ts.RTC(schedule="zeros"), **kwargs), rtol=0, atol=0)
    prefix = ts.sample_chunk(velocity_fn, noise, ts.TrainedPrefix(), **kwargs)
    assert torch.equal(prefix[:, :3], prev[:, :3])


def test_bid_picks_the_most_coherent_candidate():
    velocity_fn = _mlp_velocity()
    noise, prev = _inputs(13)
    gen = torch.Generator().manual_seed(0)
    extra = torch.randn(5, B, H, A, generator=torch.Generator().manual_seed(0))
    kwargs = dict(prev_chunk=prev, inference_delay=2, execute_horizon=3, num_steps=3)
    # num_samples=1 is Naive; a generator draws the same noise as passing it explicitly; vmap = loop.
    torch.testing.assert_close(ts.sample_chunk(velocity_fn, noise, ts.BID(num_samples=1), **kwargs),
                               ts.sample_chunk(velocity_fn, noise, ts.Naive(), **kwargs), rtol=0, atol=0)
    by_generator = ts.sample_chunk(velocity_fn, noise, ts.BID(num_samples=6, generator=gen), **kwargs)
    by_noise = ts.sample_chunk(velocity_fn, noise, ts.BID(num_samples=6, candidate_noise=extra), **kwargs)
    torch.testing.assert_close(by_generator, by_noise, rtol=0, atol=0)
    for group in (1, 4):  # one at a time (no vmap), and groups with a remainder
        method = ts.BID(num_samples=6, candidate_noise=extra, candidates_per_call=group)
        torch.testing.assert_close(ts.sample_chunk(velocity_fn, noise, method, **kwargs), by_noise, atol=1e-6, rtol=1e-6)
    candidates = torch.stack([ts.sample_chunk(velocity_fn, z, ts.Naive(), num_steps=3) for z in torch.cat([noise[None], extra])])
    w = ts.prefix_weights(2, H - 3, H)
    loss = (w * torch.linalg.vector_norm(candidates - prev, dim=-1)).sum(-1)  # [N, B]
    torch.testing.assert_close(by_noise, candidates[loss.argmin(0), torch.arange(B)], atol=1e-6, rtol=1e-6)


def test_the_torch_backend_loads_no_jax():
    import subprocess
    import sys

    code = "import sys, rtchunk.torch; print([m for m in ('jax', 'flax', 'optax') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
