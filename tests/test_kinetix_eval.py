"""End to end on a real level: ``rtchunk eval`` (sweep, CSV, resume) and ``rtchunk report``, with a tiny random
policy on shrunk h17_unicycle in 32-step episodes. Every row shares one compiled rollout."""

import csv
import dataclasses

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kinetix_helpers import FAST, TINY_MODEL
from rtchunk import BID, RTC, FlowPolicy, Naive, TrainedPrefix, checkpoints, sample_chunk
from rtchunk.cli import main as cli_main
from rtchunk.kinetix import evaluate as ev
from rtchunk.kinetix import report, sweep

H = TINY_MODEL.horizon
MIXTURE = "mixture:1=0.5,3=0.5"
CONFIG = sweep.EvalConfig(
    levels=("l/h17_unicycle",), methods=("rtc",), delays=(1, 2), profiles=("fixed", MIXTURE), num_envs=4,
    max_timesteps=32, shrink=True, fast_compile=True, model=TINY_MODEL, progress=False,
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    sweep.run(dataclasses.replace(CONFIG, out=out))
    return out


def rows(out):
    with open(sweep.results_path(out)) as f:
        return list(csv.DictReader(f))


def test_sweep_writes_one_row_per_configuration(run_dir):
    got = rows(run_dir)
    expected = [("1", s) for s in range(1, H)] + [("2", s) for s in range(2, H - 1)] + [("", s) for s in range(1, H)]
    assert [(r["d"], int(r["s"])) for r in got] == expected
    assert {r["profile"] for r in got} == {"fixed", MIXTURE} and {r["policy"] for r in got} == {"random-init"}
    for r in got:
        assert 0 <= float(r["solve_rate_low"]) <= float(r["solve_rate"]) <= float(r["solve_rate_high"]) <= 1
        assert int(r["num_envs"]) == 4 and 1 <= float(r["length_mean"]) <= 32
        assert float(r["max_delta_action"]) > 0 and np.isfinite(float(r["seam_jump_mean"]))
        s = int(r["s"])
        if r["profile"] == "fixed":
            assert float(r["d_p50"]) == float(r["d_p99"]) == int(r["d"]) and float(r["p_violate"]) == 0
            assert float(r["told_d_mean"]) == int(r["d"])
        else:
            assert float(r["told_d_mean"]) <= H - s  # RTC is told at most H - s
            assert (float(r["p_violate"]) > 0) == (3 > H - s)
            if s + 3 <= H:  # a chunk can only run out when delay 3 follows a cycle of s steps with 3 + s > H
                assert float(r["starvation_steps"]) == 0


def test_resume_skips_finished_rows_and_drops_a_cut_line(run_dir):
    path = sweep.results_path(run_dir)
    before = path.read_text()
    sweep.run(dataclasses.replace(CONFIG, out=run_dir))
    assert path.read_text() == before
    lines = before.splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:10])  # a crash in the middle of the last row
    sweep.run(dataclasses.replace(CONFIG, out=run_dir))
    after = rows(run_dir)
    assert len(after) == len(lines) - 1 and len({tuple(r[c] for c in sweep.KEY_COLUMNS) for r in after}) == len(after)
    with pytest.raises(ValueError, match="num_envs"):
        sweep.run(dataclasses.replace(CONFIG, out=run_dir, num_envs=8))


def test_report_from_the_run(run_dir):
    assert cli_main(["report", "--run", str(run_dir)]) == 0
    text = (run_dir / "report.md").read_text()
    assert "randomly initialised" in text and "## h17_unicycle" in text and MIXTURE in text
    assert "## Average" not in text  # one level: nothing to average
    assert (run_dir / "solve_rate_vs_delay.png").stat().st_size > 0
    assert (run_dir / "solve_rate_vs_horizon.png").stat().st_size > 0
    r = next(r for r in rows(run_dir) if r["d"] == "1" and r["s"] == "1")
    cell = str(report.Rate(int(r["solved"]), int(r["num_envs"])))
    assert f"| rtc | {cell} |" in text


def test_policy_chunk_fn_is_sample_chunk_with_the_policy(tmp_path):
    policy = FlowPolicy(5, 3, TINY_MODEL, rngs=nnx.Rngs(0))
    weak = FlowPolicy(5, 3, TINY_MODEL, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(policy)
    obs = jax.random.normal(jax.random.key(0), (2, 5))
    noise, prev = jax.random.normal(jax.random.key(1), (2, 2, H, 3))
    d = jnp.array([1, 2], jnp.int32)
    rng = jax.random.key(3)
    fn = ev.policy_chunk_fn(graphdef, RTC(), 3)
    assert fn is ev.policy_chunk_fn(graphdef, RTC(), 3)  # one object, one compile
    bid = ev.policy_chunk_fn(graphdef, BID(rng=jax.random.key(9), num_samples=4, top_k=2), 3, weak_policy=True)
    weak_params = nnx.split(weak)[1]

    @jax.jit(compiler_options=FAST)
    def both(params, weak_params):
        pol, wk = nnx.merge(graphdef, params), nnx.merge(graphdef, weak_params)
        v = pol.velocity_fn(obs)
        bid_method = BID(rng=rng, num_samples=4, top_k=2, weak_velocity_fn=wk.velocity_fn(obs))
        kw = dict(prev_chunk=prev, inference_delay=d, execute_horizon=3, num_steps=3)
        return (
            (fn(params, obs, noise, prev, d, 3, rng), sample_chunk(v, noise, RTC(), **kw)),
            # The first chunk of an episode has no previous chunk: every method samples it naively.
            (fn(params, obs, noise, None, d, 3, rng), sample_chunk(v, noise, Naive(), num_steps=3)),
            (bid((params, weak_params), obs, noise, prev, d, 3, rng), sample_chunk(v, noise, bid_method, **kw)),
        )

    for got, expected in both(params, weak_params):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert ev.delay_contract(RTC()) == ev.delay_contract(TrainedPrefix()) == "overlap"
    assert ev.delay_contract(Naive()) == ev.delay_contract(BID(rng=rng)) == "horizon"


def test_checkpoints_and_trained_prefix_limits(tmp_path):
    policy = FlowPolicy(679, 6, TINY_MODEL, rngs=nnx.Rngs(0))
    checkpoints.save_policy(tmp_path / "ckpt", policy, {"training_delays": {"min_delay": 0, "max_delay": 2}})
    policies = sweep.load_policies(dataclasses.replace(CONFIG, policy_dir=tmp_path / "ckpt"), ["h17_unicycle"], 679, 6)
    assert policies[0].source == str(tmp_path / "ckpt")
    points = sweep.grid(dataclasses.replace(CONFIG, delays=(2,), profiles=("fixed",)), H)
    sweep.check_trained_prefix(policies[0], "h17_unicycle", points, H, None)
    with pytest.raises(ValueError, match="max_delay=2"):
        sweep.check_trained_prefix(policies[0], "h17_unicycle", sweep.grid(
            dataclasses.replace(CONFIG, delays=(3,), profiles=("fixed",)), H), H, None)
    checkpoints.save_policy(tmp_path / "plain", policy)
    plain = sweep.load_policies(dataclasses.replace(CONFIG, policy_dir=tmp_path / "plain"), ["h17_unicycle"], 679, 6)
    with pytest.raises(ValueError, match="training_delays"):
        sweep.check_trained_prefix(plain[0], "h17_unicycle", points, H, None)
    with pytest.raises(ValueError, match="obs_dim"):
        sweep.load_policies(dataclasses.replace(CONFIG, policy_dir=tmp_path / "plain"), ["h17_unicycle"], 100, 6)
    with pytest.raises(ValueError, match="no policy checkpoint"):
        sweep.load_policies(dataclasses.replace(CONFIG, policy_dir=tmp_path), ["h17_unicycle"], 679, 6)


def test_train_policy_runs_and_shortest_horizon_grid(tmp_path):
    """A `train-policy` output (<dir>/<level>/epoch_XXX) is read at its last epoch; the headline grid has
    s = max(d, 1) only."""
    policy = FlowPolicy(679, 6, TINY_MODEL, rngs=nnx.Rngs(0))
    for epoch in (0, 3, 12):
        checkpoints.save_policy(tmp_path / "bc" / "h17_unicycle" / f"epoch_{epoch:03d}", policy, {"epoch": epoch})
    (loaded,) = sweep.load_policies(dataclasses.replace(CONFIG, policy_dir=tmp_path / "bc"), ["h17_unicycle"], 679, 6)
    assert loaded.source.endswith("epoch_012") and loaded.meta["epoch"] == 12
    points = sweep.grid(dataclasses.replace(CONFIG, delays=(0, 1, 2, 3), profiles=("fixed",),
                                            shortest_horizon_only=True), H)
    assert [(p.d, p.s) for p in points] == [(0, 1), (1, 1), (2, 2), (3, 3)]


def test_profile_specs():
    from rtchunk import delays

    assert sweep.parse_profile("fixed:3") == delays.FixedDelay(3)
    assert sweep.parse_profile("mixture:1=0.5,2=0.5,spike=6@0.05,cap=4") == delays.MixtureDelay(
        (1, 2), (0.5, 0.5), spike_delay=6, spike_prob=0.05, tail_cap=4)
    assert sweep.parse_profile("empirical:0.03,0.05,period=0.02") == delays.EmpiricalDelay((0.03, 0.05), 0.02)
    for bad in ("gauss:1", "mixture:1=0.5", "mixture:1=0.5,2=0.5,spike=6", "fixed:"):
        with pytest.raises(ValueError, match="bad delay profile"):
            sweep.parse_profile(bad)
    points = sweep.grid(dataclasses.replace(CONFIG, delays=(0, 4), profiles=("fixed",)), H)
    assert [(p.d, p.s) for p in points] == [(0, s) for s in range(1, 9)] + [(4, 4)]


def test_report_pools_levels_and_averages_only_shared_configurations(tmp_path):
    def row(level, method, d, s, solved, n=100, profile="fixed"):
        r = {c: "" for c in sweep.COLUMNS}
        r.update(level=level, method=method, d=d, s=s, profile=profile, num_envs=n, solved=solved, policy="ckpt")
        return r

    rows = [row("a", "rtc", 1, 1, 90), row("b", "rtc", 1, 1, 50, n=50), row("a", "rtc", 2, 2, 80),
            row("a", "naive", 1, 1, 40), row("b", "naive", 1, 1, 30, n=50)]
    writer = sweep.ResultsWriter(tmp_path / "results.csv")
    for r in rows:
        writer.write(r)
    writer.close()
    rates = report.fixed_rates(sweep.read_rows(tmp_path / "results.csv"))
    assert rates[(report.AVERAGE, "rtc", 1, 1)] == report.Rate(140, 150)
    assert rates[(report.AVERAGE, "naive", 1, 1)] == report.Rate(70, 150)
    assert (report.AVERAGE, "rtc", 2, 2) not in rates  # level b lacks it
    path = report.write_report(report.ReportConfig(run=tmp_path))
    text = path.read_text()
    assert "randomly initialised" not in text
    average = text.split("## Average over levels")[1].split("##")[0]
    assert f"| naive | {report.Rate(70, 150)} |" in average and f"| rtc | {report.Rate(140, 150)} |" in average


def test_video_rows_select_by_method_and_delay():
    assert sweep.wants_video((), "rtc", "2")
    assert sweep.wants_video(("rtc",), "rtc", "")
    assert sweep.wants_video(("naive:3", "rtc:3"), "rtc", "3")
    assert not sweep.wants_video(("naive:3", "rtc:3"), "rtc", "2")
    assert not sweep.wants_video(("naive:3",), "bid", "3")
