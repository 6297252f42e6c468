"""`rtchunk demo` is `rtchunk reproduce` on one level with its own presets: what the presets promise (a failing
PPO seed never leaves a mixture of one expert; d = 0..4), and the command end to end on the session's toy-size
reproduction run (tests/reproduce_run.py), which the demo's smoke preset shares."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from rtchunk.commands import demo, reproduce
from rtchunk.kinetix.reproduce import level_dirs

from reproduce_run import LEVEL, snapshot

REPO = Path(__file__).resolve().parents[1]


def test_the_cpu_preset_survives_a_failing_seed_and_sweeps_d_0_to_4():
    config = demo.PRESETS[demo.DEFAULT_PRESET]
    assert len(config.levels) == 1
    assert config.min_experts >= 2  # never a mixture of one expert
    assert config.extra_seed_rounds >= 1  # a failing seed: more seeds, before the level would be given up
    assert config.experts.num_seeds % 2 == 0  # the learners split over both CPU devices
    assert tuple(config.eval.delays) == (0, 1, 2, 3, 4) and config.eval.num_envs >= 256
    assert {"naive", "rtc"} <= set(config.eval.methods)
    assert demo.PRESETS["smoke"] == reproduce.PRESETS["smoke"]


def test_the_demo_command_prints_a_finished_runs_report_and_videos(reproduce_smoke_run, tmp_path):
    out = tmp_path / "demo"
    shutil.copytree(reproduce_smoke_run[0], out)
    before = snapshot(out)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "rtchunk.cli", "demo", "--preset", "smoke", "--no-progress",
                           "--out-dir", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## Solve rate, s = max(d, 1)" in proc.stdout
    video = level_dirs(out, LEVEL).eval / "videos" / f"{LEVEL}__naive__2__2__fixed.mp4"
    assert f"video: {video}" in proc.stdout
    assert snapshot(out) == before  # finished: nothing run, nothing written
