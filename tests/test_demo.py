"""The whole pipeline end to end on a real Kinetix level, at toy size: `rtchunk demo --preset smoke`.

It runs the real commands (train-expert, generate-data, train-policy twice, eval, report, video) in a
subprocess, then checks what every stage left behind and that a second run resumes instead of redoing
the work. (Most of its three minutes on a cold cache is compiling the physics into each stage.)
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtchunk import checkpoints


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_COMPILATION_CACHE_DIR": os.environ.get("RTCHUNK_JAX_CACHE", str(repo / ".jax_cache"))}
    cmd = [sys.executable, "-m", "rtchunk.cli", "demo", "--preset", "smoke", "--out-dir", str(out)]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    return out, first.stdout + first.stderr, second.stdout + second.stderr


def test_every_stage_leaves_its_output(demo_run):
    out, stdout, _ = demo_run
    stats = (out / "experts" / "stats.csv").read_text().splitlines()
    assert stats[0].startswith("update,env_steps,level,seed,solve_rate") and len(stats) > 1
    data_meta = checkpoints.load_meta(out / "data" / "h17_unicycle")
    assert data_meta["summary"]["transitions"] == 16 * 48 and data_meta["experts"]
    _, meta = checkpoints.load_policy(out / "policy" / "h17_unicycle" / "epoch_000")
    assert meta["training_delays"] is None
    _, meta = checkpoints.load_policy(out / "policy_rtc" / "h17_unicycle" / "epoch_000")
    assert meta["training_delays"]["max_delay"] == 4
    with open(out / "eval" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["method"], r["d"], r["s"]) for r in rows} == {
        (m, d, s) for m in ("naive", "trained_prefix") for d, s in (("0", "1"), ("2", "2"))}
    prefix_rows = [r for r in rows if r["method"] == "trained_prefix"]
    assert all("policy_rtc" in r["policy"] for r in prefix_rows)
    assert all("policy_rtc" not in r["policy"] for r in rows if r["method"] != "trained_prefix")
    assert (out / "eval" / "report.md").is_file() and list((out / "eval").glob("*.png"))
    # Only the rows asked for get a video (naive at the largest delay), from the evaluation's own rollout.
    videos = list((out / "eval" / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["h17_unicycle__naive__2__2__fixed.mp4"] and videos[0].stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["timings_s"]) >= {"experts", "data", "policy", "policy_rtc", "eval", "report", "total"}
    assert "results CSV:" in stdout and "Solve rate" in stdout
    # Both methods share one rollout program (a switch picks the method): the physics compiles once.
    assert "2 method(s) in 1 rollout program(s)" in stdout


def test_a_second_run_resumes_everything(demo_run):
    out, _, second = demo_run
    assert "already in" in second  # the sweep found every row done
    assert "dataset exists" in second
    with open(out / "eval" / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 4  # nothing evaluated twice
    assert len((out / "experts" / "stats.csv").read_text().splitlines()) == 1 + 2  # 2 checkpoints x 1 seed
