"""The `rtchunk` entry point: command dispatch, presets, the persistent compilation cache it turns on, and
what a rejected input looks like: one line on stderr, exit code 2, no traceback, nothing written.

The table of bad inputs runs the real console script (``python -m rtchunk.cli``), one process per case,
three at a time; every case is rejected before any compile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from rtchunk import cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_cache_dir():
    before = jax.config.jax_compilation_cache_dir
    yield
    jax.config.update("jax_compilation_cache_dir", before)


def test_commands_turn_on_a_persistent_compilation_cache(monkeypatch, tmp_path, restore_cache_dir, capsys):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("RTCHUNK_CACHE_DIR", str(tmp_path / "cache"))
    assert cli.main(["levels", "list"]) == 0
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
    assert "h17_unicycle" in capsys.readouterr().out  # `rtchunk levels list`, as documented


def test_an_explicit_jax_setting_wins(monkeypatch, tmp_path, restore_cache_dir):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("RTCHUNK_CACHE_DIR", str(tmp_path / "other"))
    cli.main(["levels", "list"])
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("RTCHUNK_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cli.default_cache_dir() == tmp_path / "rtchunk" / "jax"


def test_unknown_command_and_preset(capsys):
    assert cli.main(["evl"]) == 2
    assert capsys.readouterr().err.startswith(
        "rtchunk: error: command: unknown 'evl' (did you mean 'eval'?); choose from demo, sample-demo, levels, eval")
    assert cli.main(["eval", "--preset", "smok"]) == 2
    assert capsys.readouterr().err == ("rtchunk eval: error: --preset: unknown 'smok' (did you mean 'smoke'?); "
                                       "choose from paper, cpu, smoke\n")
    assert cli.main(["report", "--preset", "paper", "--run", "x"]) == 2
    assert capsys.readouterr().err == "rtchunk report: error: --preset: rtchunk report has no presets\n"


def test_levels_subcommands_have_their_documented_names(capsys):
    assert cli.main(["levels", "show", "--levels", "l/h17_unicycle"]) == 0
    assert "h17_unicycle" in capsys.readouterr().out


def test_every_command_is_a_module_named_after_it():
    for name in cli.COMMANDS:
        module = cli.command_module(name)
        assert module.__name__ == f"rtchunk.commands.{name.replace('-', '_')}" and callable(module.main)


# -- bad inputs, through the console script ------------------------------------------------------------


def _files(root: Path) -> dict:
    """Every file below ``root`` with its content (what a rejected command must leave as it was)."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Broken inputs of every kind a user can hand a command, written with numpy and JSON only."""
    root = tmp_path_factory.mktemp("inputs")
    model = {"channel_dim": 8, "channel_hidden_dim": 8, "token_hidden_dim": 8, "num_layers": 1, "horizon": 8}
    meta = {"format_version": 1, "kind": "flow_policy", "obs_dim": 679, "action_dim": 6, "model": model}

    def checkpoint(path: Path, meta: dict, arrays: bytes | None = None):
        path.mkdir(parents=True)
        (path / "meta.json").write_text(json.dumps(meta))
        if arrays is None:
            save_file({"w": np.zeros(2, np.float32)}, str(path / "arrays.safetensors"))
        else:
            (path / "arrays.safetensors").write_bytes(arrays)

    checkpoint(root / "truncated", meta, arrays=b"\x10\x00\x00\x00\x00\x00\x00\x00{\"w\":")
    checkpoint(root / "corrupt_meta", meta)
    (root / "corrupt_meta" / "meta.json").write_text('{"format_version": 1, "kind": ')
    checkpoint(root / "plain_policy", meta)  # no training_delays: not a training-time-RTC model
    checkpoint(root / "data_bad" / "lvl", {"format_version": 1, "kind": "expert_data"}, arrays=b"junk")
    (root / "not_data" / "notes").mkdir(parents=True)
    checkpoint(root / "one_dataset", {"format_version": 1, "kind": "expert_data"})
    (root / "bad_level.json").write_text(json.dumps({"env_state": {"polygon": []}}))
    (root / "old_run").mkdir()
    (root / "old_run" / "run.json").write_text(json.dumps({"resume_key": {"num_envs": 4}}))
    return root


# (command line, a part of the one-line message); {in} is the inputs directory, {out} a fresh directory
# that must stay empty.
EVAL = ["eval", "--levels", "l/h17_unicycle", "--out", "{out}/run"]
CASES = [
    (EVAL + ["--num-envs", "0"], "--num-envs must be an integer >= 1, got 0"),
    (EVAL + ["--num-envs", "abc"], "--num-envs: invalid literal for int()"),
    (EVAL + ["--delays", "-1"], "--delays must be an integer >= 0, got -1"),
    (EVAL + ["--execute-horizons", "0"], "--execute-horizons must be an integer >= 1, got 0"),
    (EVAL + ["--execute-horizons", "9"], "--execute-horizons must be in [1, H=8]"),
    (EVAL + ["--methods", "rtcc"], "--methods: unknown 'rtcc' (did you mean 'rtc'?)"),
    (EVAL + ["--profiles", "mixture:1=0.5,2=0.4"], "bad delay profile 'mixture:1=0.5,2=0.4': probs must sum to 1"),
    (EVAL + ["--profiles", "gauss:1"], "--profiles: bad delay profile 'gauss:1'"),
    (EVAL + ["--num-flow-steps", "0"], "--num-flow-steps must be an integer >= 1"),
    (EVAL + ["--video-envs", "-1"], "--video-envs must be an integer >= 0"),
    (EVAL + ["--video-rows", "rct:2"], "--video-rows: unknown 'rct' (did you mean 'rtc'?)"),
    (EVAL + ["--shard", "3/2"], "--shard must be i/n with 0 <= i < n"),
    (EVAL + ["--method-settings.bid-samples", "0"], "--method-settings.bid-samples must be an integer >= 1"),
    (EVAL + ["estimator:max-estimator", "--estimator.window", "0"], "--estimator.window must be >= 1"),
    (EVAL + ["--model.horizon", "0"], "--model.horizon must be a positive integer"),
    (EVAL + ["--estimator.window", "3"], "unrecognized arguments: --estimator.window 3"),
    (["eval", "--levels", "no_such_level", "--out", "{out}/run"], "no level 'no_such_level'"),
    (["eval", "--levels", "h17_unicyle", "--out", "{out}/run"], "(did you mean 'h17_unicycle'?)"),
    (EVAL + ["--policy-dir", "{in}/missing"], "no trained policy at"),
    (EVAL + ["--policy-dir", "{in}/truncated"], "is corrupt or truncated"),
    (EVAL + ["--policy-dir", "{in}/corrupt_meta"], "is corrupt (not valid JSON"),
    (EVAL + ["--methods", "trained_prefix", "--policy-dir", "{in}/plain_policy"], "has no 'training_delays'"),
    (["eval", "--levels", "l/h17_unicycle", "--out", "{in}/old_run"], "holds a run with different settings"),
    (["eval", "--preset", "smok"], "--preset: unknown 'smok' (did you mean 'smoke'?)"),
    (["train-policy", "--out-dir", "{out}/bc", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["train-policy", "--out-dir", "{out}/bc", "--learning-rate", "0"], "--learning-rate must be > 0"),
    (["train-policy", "--out-dir", "{out}/bc", "--simulated-delay", "9"], "--simulated-delay must be in [1, horizon=8]"),
    (["train-policy", "--out-dir", "{out}/bc", "--simulated-delay", "3", "--delay-distribution", "normal"],
     "--delay-distribution: unknown 'normal'"),
    (["train-policy", "--out-dir", "{out}/bc", "--data-dir", "{in}/missing"], "does not exist"),
    (["train-policy", "--out-dir", "{out}/bc", "--data-dir", "{in}/not_data"], "holds no datasets"),
    (["train-policy", "--out-dir", "{out}/bc", "--data-dir", "{in}/one_dataset"], "it is one dataset itself"),
    (["train-policy", "--out-dir", "{out}/bc", "--data-dir", "{in}/data_bad"], "is corrupt or truncated"),
    (["train-policy", "--out-dir", "{out}/bc", "--quick-eval-envs", "-1"], "--quick-eval-envs must be >= 0"),
    (["train-policy", "--out-dir", "{out}/bc", "--ema-decay", "1.5"], "--ema-decay must be in (0, 1) or None"),
    (["levels", "shrink", "--episodes", "-1"], "--episodes must be an integer >= 0, got -1"),
    (["levels", "show", "--levels", "{in}/bad_level.json"], "is not a readable Kinetix level"),
    (["levels", "show", "--levels", "nope"], "no level 'nope'"),
    (["train-expert", "--out-dir", "{out}/experts", "--num-seeds", "0"], "--num-seeds must be >= 1"),
    (["train-expert", "--out-dir", "{out}/experts", "--levels", "nope"], "no level 'nope'"),
    (["train-expert", "--out-dir", "{out}/experts", "--no-shrink", "--compact-obs"],
     "--compact-obs observes the shrunk level: it needs --shrink"),
    (["reproduce", "--preset", "cpu", "--out-dir", "{out}/r", "--no-shrink"],
     "--experts.compact-obs observes the shrunk level: it needs --shrink"),
    (["generate-data", "--expert-dir", "{in}/missing", "--out-dir", "{out}/data"], "has no expert checkpoints"),
    (["generate-data", "--threshold", "1.5", "--out-dir", "{out}/data"], "--threshold must be in [0, 1]"),
    (["generate-data", "--max-experts", "0", "--out-dir", "{out}/data"], "--max-experts must be >= 1"),
    (["report", "--run", "{in}/missing"], "no results*.csv in"),
    (["report"], "missing required argument(s): --run"),
    (["live", "--out", "{out}/live", "--methods", "bid"], "--methods: unknown 'bid'"),
    (["live", "--out", "{out}/live", "--control-hz", "0"], "--control-hz must be in (0, 1000]"),
    (["live", "--out", "{out}/live", "--policy-dir", "{in}/missing"], "no trained policy at"),
    (["demo", "--out-dir", "{out}/demo", "--eval.methods", "rtcc"], "--eval.methods: unknown 'rtcc' (did you mean 'rtc'?)"),
    (["demo", "--out-dir", "{out}/demo", "--finetune.simulated-delay", "0"],
     "--finetune.simulated-delay must be in [1, horizon=8]"),
    (["demo", "--out-dir", "{out}/demo", "--min-experts", "17"], "--min-experts must be in [1, 16]"),
    (["demo", "--out-dir", "{out}/demo", "--experts.stop-at-solve-rate", "0.5"],
     "--experts.stop-at-solve-rate must be in [--threshold = 0.65, 1]"),
    (["sample-demo", "--inference-delay", "9"], "--inference-delay must be in [0, H - execute_horizon = 5]"),
    (["reproduce", "--out-dir", "{out}/r", "--min-experts", "99"], "--min-experts must be in [1, 16]"),
    (["reproduce", "--out-dir", "{out}/r", "--bc.out-dir", "x"], "--bc.out-dir is set by rtchunk reproduce"),
    (["reproduce", "--out-dir", "{out}/r", "--eval.delays", "5"], "--eval.delays must be <= H/2 = 4"),
    (["reproduce", "--out-dir", "{out}/r", "--eval.methods", "rtcc"], "--eval.methods: unknown 'rtcc'"),
    (["reproduce", "--out-dir", "{out}/r", "--experts.ppo.num-envs", "0"], "--experts.ppo.num-envs must be >= 1"),
    (["reproduce", "--out-dir", "{out}/r", "--finetune.init-epoch", "40"], "--finetune.init-epoch must be in [0, "),
    (["reproduce", "--out-dir", "{out}/r", "--levels", "nope"], "no level 'nope'"),
    (["reproduce", "--preset", "cpu", "--out-dir", "{out}/r", "--weak-epoch", "10"], "--weak-epoch must be in [0, "),
    (["reproduce", "--out-dir", "{out}/r", "--experts.stop-at-solved-seeds", "1"],
     "--experts.stop-at-solved-seeds is set by rtchunk reproduce"),
    (["train-expert", "--preset", "cpu", "--out-dir", "{out}/e", "--stop-at-solved-seeds", "3"],
     "--stop-at-solved-seeds must be in [1, num_seeds = 2]"),
]


def _run(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run([sys.executable, "-m", "rtchunk.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def outcomes(inputs, tmp_path_factory):
    """Every case run once, all in one process through the console script's entry point (tests/cli_driver.py,
    which captures file descriptors 1 and 2): {case index: (result, out dir)}. Two processes split the cases."""
    jobs = []
    for i, (args, _) in enumerate(CASES):
        out = tmp_path_factory.mktemp(f"case{i}")
        jobs.append(([a.format(**{"in": inputs, "out": out}) for a in args], out))
    before = _files(inputs)
    work = tmp_path_factory.mktemp("driver")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "JAX_PLATFORMS": "cpu"}
    halves = [list(range(len(jobs)))[k::2] for k in range(2)]
    procs = []
    for k, half in enumerate(halves):
        (work / f"cases{k}.json").write_text(json.dumps([jobs[i][0] for i in half]))
        procs.append(subprocess.Popen([sys.executable, str(REPO / "tests" / "cli_driver.py"), str(work / f"cases{k}.json"),
                                       str(work / f"results{k}.json")], env=env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    assert _files(inputs) == before, "a rejected command changed one of its inputs"
    done = {}
    for k, half in enumerate(halves):
        for i, result in zip(half, json.loads((work / f"results{k}.json").read_text())):
            done[i] = (result, jobs[i][1])
    return done


@pytest.mark.parametrize("case", range(len(CASES)), ids=[" ".join(a[:1] + a[5:] if a[0] == "eval" else a)[:60]
                                                         for a, _ in CASES])
def test_a_bad_input_is_one_line_on_stderr_and_writes_nothing(outcomes, case):
    result, out = outcomes[case]
    args, expected = CASES[case]
    command = args[0]
    assert result["returncode"] == 2, result["stderr"][-2000:]
    assert "Traceback" not in result["stderr"]
    lines = result["stderr"].splitlines()
    assert len(lines) == 1, result["stderr"][-2000:]
    assert lines[0].startswith(f"rtchunk {command}: error: ") and expected in lines[0], lines[0]
    assert list(out.iterdir()) == [], "a rejected command wrote something"


def test_debug_shows_the_traceback(inputs, tmp_path):
    args = ["eval", "--levels", "l/h17_unicycle", "--policy-dir", str(inputs / "missing"), "--out", str(tmp_path / "x")]
    for proc in (_run(args + ["--debug"]), _run(args, env={"RTCHUNK_DEBUG": "1"})):
        assert proc.returncode == 1 and "Traceback" in proc.stderr and "NoCheckpoint: no trained policy" in proc.stderr
