"""End to end on a real level: the sweep behind ``rtchunk eval`` (CSV, resume, checks before writing) and
``rtchunk report`` on its output, with a tiny random policy on shrunk h17_unicycle in 32-step episodes.
Every row shares one compiled rollout."""

import csv
import dataclasses

import flax.nnx as nnx
import numpy as np
import pytest

from kinetix_helpers import TINY_MODEL
from rtchunk import FlowPolicy, checkpoints
from rtchunk.cli import main as cli_main
from rtchunk.kinetix import grid, report, results, sweep

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
    with open(results.results_path(out)) as f:
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
    path = results.results_path(run_dir)
    before = path.read_text()
    sweep.run(dataclasses.replace(CONFIG, out=run_dir))
    assert path.read_text() == before
    lines = before.splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:10])  # a crash in the middle of the last row
    sweep.run(dataclasses.replace(CONFIG, out=run_dir))
    after = rows(run_dir)
    assert len(after) == len(lines) - 1 and len({tuple(r[c] for c in results.KEY_COLUMNS) for r in after}) == len(after)
    before = {p: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="num_envs"):
        sweep.run(dataclasses.replace(CONFIG, out=run_dir, num_envs=8))
    assert {p: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # a rejected sweep writes nothing


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


def test_checkpoints_and_trained_prefix_limits(tmp_path):
    policy = FlowPolicy(679, 6, TINY_MODEL, rngs=nnx.Rngs(0))
    checkpoints.save_policy(tmp_path / "ckpt", policy, {"training_delays": {"min_delay": 0, "max_delay": 2}})
    plan = sweep.plan(dataclasses.replace(CONFIG, policy_dir=tmp_path / "ckpt", out=tmp_path / "out"))
    (info,) = plan.policies["policy"]
    assert info.path == tmp_path / "ckpt"
    points = grid.grid(H, ("fixed",), (2,))
    sweep.check_trained_prefix(info, "h17_unicycle", points, H, None)
    with pytest.raises(ValueError, match="max_delay=2"):
        sweep.check_trained_prefix(info, "h17_unicycle", grid.grid(H, ("fixed",), (3,)), H, None)
    checkpoints.save_policy(tmp_path / "plain", policy)
    (plain,) = sweep.plan(dataclasses.replace(CONFIG, policy_dir=tmp_path / "plain")).policies["policy"]
    with pytest.raises(ValueError, match="training_delays"):
        sweep.check_trained_prefix(plain, "h17_unicycle", points, H, None)
    checkpoints.save_policy(tmp_path / "other_dims", FlowPolicy(100, 6, TINY_MODEL, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="obs_dim"):
        sweep.run(dataclasses.replace(CONFIG, policy_dir=tmp_path / "other_dims", out=tmp_path / "out"))
    with pytest.raises(ValueError, match="no policy checkpoint"):
        sweep.plan(dataclasses.replace(CONFIG, policy_dir=tmp_path))
    assert not (tmp_path / "out").exists()  # rejected before anything was written


def test_train_policy_runs_and_shortest_horizon_grid(tmp_path):
    """A `train-policy` output (<dir>/<level>/epoch_XXX) is read at its last epoch; the headline grid has
    s = max(d, 1) only."""
    policy = FlowPolicy(679, 6, TINY_MODEL, rngs=nnx.Rngs(0))
    for epoch in (0, 3, 12):
        checkpoints.save_policy(tmp_path / "bc" / "h17_unicycle" / f"epoch_{epoch:03d}", policy, {"epoch": epoch})
    (loaded,) = sweep.plan(dataclasses.replace(CONFIG, policy_dir=tmp_path / "bc")).policies["policy"]
    assert loaded.path.name == "epoch_012" and loaded.meta["epoch"] == 12
    points = grid.grid(H, ("fixed",), (0, 1, 2, 3), shortest_horizon_only=True)
    assert [(p.d, p.s) for p in points] == [(0, 1), (1, 1), (2, 2), (3, 3)]


def test_video_rows_select_by_method_and_delay():
    assert sweep.wants_video((), "rtc", "2")
    assert sweep.wants_video(("rtc",), "rtc", "")
    assert sweep.wants_video(("naive:3", "rtc:3"), "rtc", "3")
    assert not sweep.wants_video(("naive:3", "rtc:3"), "rtc", "2")
    assert not sweep.wants_video(("naive:3",), "bid", "3")
