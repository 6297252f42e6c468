"""The multi-host path, on one machine: two processes on loopback share the levels of one training run."""

import os
import socket
import subprocess
import sys

from test_bc import _synthetic

from rtchunk import checkpoints
from rtchunk.kinetix import dataset as dataset_lib


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_the_levels(tmp_path):
    data = tmp_path / "data"
    for i, name in enumerate(["lvl_a", "lvl_b", "lvl_c"]):
        dataset_lib.save(data / name, _synthetic(i), {"level": name})
    out = tmp_path / "bc"
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    common = [sys.executable, "-m", "rtchunk.cli", "train-policy", "--data-dir", str(data), "--out-dir", str(out),
              "--model.channel-dim", "16", "--model.channel-hidden-dim", "16", "--model.token-hidden-dim", "8",
              "--model.num-layers", "1", "--model.horizon", "4", "--batch-size", "16", "--num-epochs", "1",
              "--max-steps-per-epoch", "3", "--warmup-steps", "1", "--no-progress", "--quick-eval-envs", "0",
              "--distributed.coordinator", f"127.0.0.1:{port}", "--distributed.num-processes", "2"]
    procs = [subprocess.Popen(common + ["--distributed.process-id", str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text
    # Process 0 takes levels a and c, process 1 takes b; each writes its own state and stats.
    for name in ("lvl_a", "lvl_b", "lvl_c"):
        policy, meta = checkpoints.load_policy(out / name / "epoch_000")
        assert meta["level"] == name
    stats0 = (out / "stats_process_0_of_2.csv").read_text()
    stats1 = (out / "stats_process_1_of_2.csv").read_text()
    assert "lvl_a" in stats0 and "lvl_c" in stats0 and "lvl_b" not in stats0
    assert "lvl_b" in stats1 and "lvl_a" not in stats1
    assert (out / "train_state_process_0_of_2").is_dir() and (out / "train_state_process_1_of_2").is_dir()
