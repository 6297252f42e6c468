"""``rtchunk reproduce`` at toy size on a real level: every stage leaves its output, an interrupted run
resumes without redoing finished stages, a finished run only prints its report, and a level whose seeds
do not reach the threshold is excluded loudly, never silently; the rounds of extra seeds before that run
against a stand-in for PPO.

The runs are in-process (sharing compiled programs); the last one goes through the console script. Most of
the time on a cold cache is compiling the physics into each stage.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rtchunk.commands.reproduce import PRESETS
from rtchunk.kinetix import reproduce, results

from reproduce_run import LEVEL, snapshot as _snapshot

REPO = Path(__file__).resolve().parents[1]
SMOKE = dataclasses.replace(PRESETS["smoke"], progress=False)


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def smoke_run(reproduce_smoke_run):
    return reproduce_smoke_run


def test_an_interrupted_run_resumes_without_redoing_finished_stages(smoke_run):
    out, summary, finished, before, after, first_log, second_log = smoke_run
    assert finished == {"experts", "data"}
    assert before and before == after  # experts and data untouched by the resumed run
    text = "\n".join(second_log)
    assert "PPO experts" not in text and "expert data" not in text  # those stages were not entered again
    assert "flow policy (BC)" in text and "simulated-delay evaluation" in text
    assert all(reproduce.stage_record(out, LEVEL, s) for s in reproduce.STAGES)
    assert summary == out / "report" / "summary.md" and summary.is_file()


def test_every_stage_leaves_its_output(smoke_run):
    out, summary, *_ = smoke_run
    dirs = reproduce.level_dirs(out, LEVEL)
    experts = _rows(dirs.experts_csv)
    # Threshold 0 at toy size: both seeds of round 0 solve, so no extra round is trained.
    assert [(r["round"], r["seed"], r["reached_threshold"]) for r in experts] == [("0", "0", "True"), ("0", "1", "True")]
    assert not dirs.experts(1).exists()
    from rtchunk import checkpoints

    data = checkpoints.load_meta(dirs.data / LEVEL)
    assert len(data["experts"]) == 2  # the mixture holds both solving seeds
    # The smoke experts observe the compacted level; the data holds the full-layout frame the flow policy sees.
    from rtchunk.kinetix import dataset

    expert_run = json.loads((dirs.experts(0) / "run.json").read_text())
    assert expert_run["env"]["compact_obs"] and not data["env"]["compact_obs"]
    assert dataset.load(dirs.data / LEVEL)[0].obs.shape[-1] == 679 > (expert_run["obs_dim"] - 6) // 4
    _, meta = checkpoints.load_policy(dirs.policy_rtc / LEVEL / "epoch_000")
    assert meta["training_delays"]["max_delay"] == 2 and "policy" in meta["bc_config"]["init_from"]

    rows = _rows(dirs.eval / "results.csv")
    points = {(0, 1), (2, 2)} | {(1, s) for s in (1, 2, 3)}  # s = max(d, 1) for d = 0, 2; every s at d = 1 (H = 4)
    assert {(r["method"], int(r["d"]), int(r["s"])) for r in rows} == {
        (m, d, s) for m in reproduce.PAPER_METHODS for d, s in points}
    assert len(rows) == len(points) * len(reproduce.PAPER_METHODS)  # the shared point (1, 1) ran once
    bid = [r for r in rows if r["method"] == "bid"]
    assert all(r["num_envs"] == "8" for r in rows) and bid
    assert {r["policy"] for r in rows if r["method"] == "trained_prefix"} == {str(dirs.policy_rtc / LEVEL / "epoch_000")}
    # Only the rows asked for get a video (naive at d = 2), from the evaluation's own rollout.
    videos = sorted((dirs.eval / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == [f"{LEVEL}__naive__2__2__fixed.mp4"] and videos[0].stat().st_size > 0

    diag = _rows(dirs.diagnostics)
    spreads = {r["policy"]: float(r["mean"]) for r in diag if r["metric"] == "chunk_spread"}
    assert set(spreads) == {"bc", "weak", "finetuned_rtc"} and all(v > 0 for v in spreads.values())
    changes = {(r["policy"], r["method"], int(r["d"]), int(r["s"])) for r in diag if r["metric"] == "guidance_change"}
    assert changes == {(p, "rtc", d, max(d, 1)) for p in spreads for d in (0, 2)} | {
        ("finetuned_rtc", "trained_prefix", d, max(d, 1)) for d in (0, 2)}
    assert {r["checkpoint"] for r in diag if r["policy"] == "weak"} == {str(dirs.policy / LEVEL / "epoch_000")}

    report = out / "report"
    for name in ("report.md", "results.csv", "experts.csv", "diagnostics.csv", "solve_rate_vs_delay.png",
                 "solve_rate_vs_horizon.png"):
        assert (report / name).is_file(), name
    assert len(_rows(report / "results.csv")) == len(rows)
    text = summary.read_text()
    for part in ("rtchunk reproduce --preset smoke", "seed: 0", "## Solve rate, s = max(d, 1)",
                 "## Solve rate at d = 1, every s", "## The papers' claims", "RTC > naive at every d >= 1",
                 "## Mean seam jump / max ||Δ²a||", "## Multimodality and guidance",
                 "## Experts (how far each seed got)", "temporal_ensembling", "trained_prefix"):
        assert part in text, part


def test_without_trained_prefix_or_bid_the_fine_tune_and_their_diagnostics_are_skipped(smoke_run, tmp_path):
    out, *_ = smoke_run
    source = reproduce.level_dirs(out, LEVEL)
    dirs = reproduce.level_dirs(tmp_path, LEVEL)
    for part in ("data", "policy"):
        shutil.copytree(source.root / part, dirs.root / part)
    config = dataclasses.replace(SMOKE, out_dir=tmp_path, eval=dataclasses.replace(SMOKE.eval, methods=("naive", "rtc")))
    assert not config.fine_tunes and SMOKE.fine_tunes
    log: list[str] = []
    record = reproduce.run_finetune(config, Path("unused.json"), dirs, log.append)
    assert record == {"skipped": "trained_prefix is not evaluated"} and not dirs.policy_rtc.exists()
    assert "no training-time-RTC fine-tune" in log[0]
    reproduce.run_diagnostics(config, Path("unused.json"), dirs, log.append)
    assert {r["policy"] for r in _rows(dirs.diagnostics)} == {"bc"}


def test_a_finished_run_only_prints_its_report(smoke_run):
    out, summary, *_ = smoke_run
    before = _snapshot(out)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "rtchunk.cli", "reproduce", "--preset", "smoke", "--no-progress",
                           "--out-dir", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary.read_text() in proc.stdout and "===" not in proc.stderr
    assert _snapshot(out) == before  # nothing run, nothing written


def test_too_few_solving_experts_exclude_the_level_loudly(smoke_run, tmp_path):
    out, *_ = smoke_run
    # The smoke run's finished experts, judged against threshold 1.0: read back, not trained again.
    shutil.copytree(reproduce.level_dirs(out, LEVEL).experts(0), reproduce.level_dirs(tmp_path, LEVEL).experts(0))
    config = dataclasses.replace(SMOKE, out_dir=tmp_path, threshold=1.0, extra_seed_rounds=0)
    log: list[str] = []
    summary = reproduce.run(config, log=log.append)
    experts = _rows(reproduce.level_dirs(tmp_path, LEVEL).experts_csv)
    solving = sum(r["reached_threshold"] == "True" for r in experts)
    assert len(experts) == 2 and solving < config.min_experts
    message = f"level {LEVEL}: only {solving} of 2 seeds reached 1.00: excluded"
    assert any(message in line and "EXCLUDED" in line for line in log)
    text = summary.read_text()
    assert message in text and "No level has evaluation results." in text
    assert not reproduce.level_dirs(tmp_path, LEVEL).data.exists()  # no later stage ran for it
    assert reproduce.stage_record(tmp_path, LEVEL, "data") is None


def _fake_trainer(rates_by_round: dict[int, list[list[float]]], trained: list[int], stops: list | None = None):
    """Stands in for PPO: writes the run file and stats.csv an expert run of these solve rates would (per
    seed, one rate per checkpoint), for the round whose seed offset it is given; ``stops`` receives each
    round's ``stop_at_solved_seeds``."""

    def train(level_list, env_config, settings, out_dir):
        round_index = settings.seed // 1000
        trained.append(round_index)
        if stops is not None:
            stops.append(settings.stop_at_solved_seeds)
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "run.json").write_text("{}")
        rows = [{"update": u + 1, "env_steps": 100 * (u + 1), "level": LEVEL, "seed": seed, "solve_rate": rate}
                for seed, rates in enumerate(rates_by_round[round_index]) for u, rate in enumerate(rates)]
        results.append_rows(Path(out_dir) / "stats.csv", rows)

    return train


@pytest.mark.parametrize("min_experts, extra_rounds, rounds_trained, solving, excluded", [
    (1, 1, [0], 1, False),  # round 0 has enough
    (2, 1, [0, 1], 2, False),  # short after round 0: new seeds, then enough
    (3, 1, [0, 1], 2, True),  # still short after the extra round
    (2, 0, [0], 1, True),  # no extra round allowed
])
def test_extra_seed_rounds_then_exclusion(monkeypatch, tmp_path, min_experts, extra_rounds, rounds_trained, solving,
                                          excluded):
    from rtchunk.kinetix import expert, levels

    trained: list[int] = []
    rates = {0: [[0.7, 0.9], [0.1, 0.2]], 1: [[0.5, 0.7], [0.6, 0.5]]}
    monkeypatch.setattr(expert, "train_on_levels", _fake_trainer(rates, trained))
    monkeypatch.setattr(levels, "load_level", lambda path: None)
    config = dataclasses.replace(SMOKE, out_dir=tmp_path, threshold=0.65, min_experts=min_experts,
                                 extra_seed_rounds=extra_rounds)
    log: list[str] = []
    dirs = reproduce.level_dirs(tmp_path, LEVEL)
    record = reproduce.run_experts(config, Path("unused.json"), dirs, log.append)
    assert trained == rounds_trained
    assert record["solving"] == solving and record["excluded"] == excluded
    rows = _rows(dirs.experts_csv)
    assert [(r["round"], r["seed"]) for r in rows] == [(str(r), str(s)) for r in rounds_trained for s in (0, 1)]
    first = rows[0]  # round 0, seed 0: 0.7 at step 100, its best 0.9 at step 200
    assert (first["best_solve_rate"], first["best_env_steps"], first["first_env_steps_at_threshold"],
            first["final_solve_rate"], first["reached_threshold"]) == ("0.9", "200", "100", "0.9", "True")
    assert rows[1]["first_env_steps_at_threshold"] == "" and rows[1]["reached_threshold"] == "False"
    if excluded:
        seeds = 2 * len(rounds_trained)
        assert record["message"].startswith(f"level {LEVEL}: only {solving} of {seeds} seeds reached 0.65: excluded")
        assert any("EXCLUDED: " + record["message"] in line for line in log)
    else:
        assert "message" not in record


def test_with_a_stop_rate_each_round_stops_at_the_experts_its_level_still_needs(monkeypatch, tmp_path):
    from rtchunk.kinetix import expert, levels

    trained, stops = [], []
    rates = {0: [[0.7, 0.9], [0.1, 0.2]], 1: [[0.5, 0.7], [0.6, 0.5]]}  # round 0: one solves; round 1: one
    monkeypatch.setattr(expert, "train_on_levels", _fake_trainer(rates, trained, stops))
    monkeypatch.setattr(levels, "load_level", lambda path: None)
    experts = dataclasses.replace(SMOKE.experts, stop_at_solve_rate=0.65)
    config = dataclasses.replace(SMOKE, out_dir=tmp_path, threshold=0.65, min_experts=2, experts=experts)
    record = reproduce.run_experts(config, Path("unused.json"), reproduce.level_dirs(tmp_path, LEVEL), lambda m: None)
    assert trained == [0, 1] and stops == [2, 1] and record["solving"] == 2
    without = tmp_path / "without"
    stops.clear()
    reproduce.run_experts(dataclasses.replace(config, out_dir=without, experts=SMOKE.experts), Path("unused.json"),
                          reproduce.level_dirs(without, LEVEL), lambda m: None)
    assert stops == [None, None]  # no stop rate: every round trains its whole budget


def test_a_changed_setting_is_refused_for_an_existing_run(smoke_run):
    out, *_ = smoke_run
    with pytest.raises(ValueError, match="different settings"):
        reproduce.plan(dataclasses.replace(SMOKE, out_dir=out, seed=1))


@pytest.mark.parametrize("change, message", [
    ({"min_experts": 5}, "--min-experts must be in [1, 4]"),
    ({"weak_epoch": 2}, "--weak-epoch must be in [0, --bc.num-epochs - 1 = 1]"),
    ({"horizon_sweep_delay": 4}, "--horizon-sweep-delay must be in [0, H - 1 = 3]"),
    ({"bc": dataclasses.replace(SMOKE.bc, out_dir=Path("x"))}, "--bc.out-dir is set by rtchunk reproduce"),
    ({"finetune": dataclasses.replace(SMOKE.finetune, simulated_delay=2)}, "--finetune.simulated-delay must be > 2"),
    ({"finetune": dataclasses.replace(SMOKE.finetune, init_epoch=2)}, "--finetune.init-epoch must be in [0, "),
    ({"eval": dataclasses.replace(SMOKE.eval, delays=(3,))}, "--eval.delays must be <= H/2 = 2"),
    ({"eval": dataclasses.replace(SMOKE.eval, policy_dir=Path("p"))}, "--eval.policy-dir is set by rtchunk reproduce"),
    ({"experts": dataclasses.replace(SMOKE.experts, seed=3)}, "--experts.seed is set from --seed"),
    ({"experts": dataclasses.replace(SMOKE.experts, stop_at_solved_seeds=1)},
     "--experts.stop-at-solved-seeds is set by rtchunk reproduce"),
    ({"shrink": False}, "--experts.compact-obs observes the shrunk level: it needs --shrink"),
])
def test_bad_settings_are_refused_naming_the_flag(change, message):
    with pytest.raises(ValueError) as info:
        dataclasses.replace(SMOKE, **change)
    assert str(info.value).startswith(message), str(info.value)


def test_the_fine_tunes_start_and_the_weak_epoch_are_checked_only_where_they_are_used():
    unused = dataclasses.replace(SMOKE, weak_epoch=5, finetune=dataclasses.replace(SMOKE.finetune, init_epoch=5),
                                 eval=dataclasses.replace(SMOKE.eval, methods=("naive", "rtc")))
    assert not unused.fine_tunes
    with pytest.raises(ValueError, match="--weak-epoch must be in"):
        dataclasses.replace(unused, eval=dataclasses.replace(SMOKE.eval, methods=("naive", "bid")))
    with pytest.raises(ValueError, match="--finetune.init-epoch must be in"):
        dataclasses.replace(unused, weak_epoch=0, eval=dataclasses.replace(SMOKE.eval, methods=("trained_prefix",)))


def test_experts_of_every_level_run_first_then_one_level_at_a_time(tmp_path):
    from rtchunk.files import write_json

    config = dataclasses.replace(SMOKE, out_dir=tmp_path, levels=("h17_unicycle", "l/grasp_easy"))
    checked = reproduce.plan(config)
    a, b = checked.names
    assert checked.todo() == [("experts", a), ("experts", b)] + [(s, a) for s in reproduce.LEVEL_STAGES] + [
        (s, b) for s in reproduce.LEVEL_STAGES]
    for stage in ("experts", "data", "policy"):  # finished stages drop out; the order stays
        write_json(reproduce.level_dirs(tmp_path, a).done(stage), {"summary": {}})
    write_json(reproduce.level_dirs(tmp_path, b).done("experts"), {"summary": {}})
    assert checked.todo() == [(s, a) for s in reproduce.LEVEL_STAGES[2:]] + [(s, b) for s in reproduce.LEVEL_STAGES]


def test_diagnostic_observations_have_their_earlier_observation_in_the_same_episode():
    import numpy as np

    from rtchunk.kinetix.reproduce.diagnose import observation_pairs

    done = np.zeros((3, 10), bool)
    done[0, 4] = True  # env 0: episodes 0..4 and 5..9
    done[1, [1, 3, 5, 7, 9]] = True  # env 1: no episode longer than 2 steps
    env, t = observation_pairs(done, 200, 3, np.random.default_rng(0))
    assert set(env) == {0, 2} and t.min() >= 3
    # env 0: step t and t - 3 in one episode: t in 3..4 (episode 0) or 8..9 (episode 1)
    assert set(t[env == 0]) == {3, 4, 8, 9} and set(t[env == 2]) == set(range(3, 10))
    with pytest.raises(ValueError, match="no episode longer than 3 steps"):
        observation_pairs(done[1:2], 5, 3, np.random.default_rng(0))


def test_the_demo_command_prints_a_finished_runs_report_and_videos(smoke_run, tmp_path):
    out = tmp_path / "demo"
    shutil.copytree(smoke_run[0], out)
    before = _snapshot(out)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "rtchunk.cli", "demo", "--preset", "smoke", "--no-progress",
                           "--out-dir", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## Solve rate, s = max(d, 1)" in proc.stdout
    video = reproduce.level_dirs(out, LEVEL).eval / "videos" / f"{LEVEL}__naive__2__2__fixed.mp4"
    assert f"video: {video}" in proc.stdout
    assert _snapshot(out) == before  # finished: nothing run, nothing written
