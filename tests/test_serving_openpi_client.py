"""The stock openpi-client (0.1.2, in its own virtual environment with numpy < 2) against `rtchunk serve`
over a real socket: naive and RTC requests, the API key header, and the in-process sampler's chunks.

The environment is created once in the test cache (``tests/cache_dirs.py``: ~/.cache/rtchunk/tests/venvs) and
reused, also by later clones.
Creating it needs PyPI; where that fails the test fails under CI and is skipped elsewhere.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cache_dirs import openpi_client_venv
from serving_helpers import ACT, H, OBS, subprocess_env, write_checkpoints

VENV = openpi_client_venv()
REQUIREMENTS = ["openpi-client==0.1.2", "numpy<2", "typing_extensions"]
SEED, DELAY, EXECUTE = 42, 3, 3
API_KEY = "test-key"


def _venv_python() -> Path:
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import openpi_client.websocket_client_policy, numpy; assert numpy.__version__ < '2'"]
    if python.exists() and subprocess.run(probe, capture_output=True, timeout=120).returncode == 0:
        return python
    try:
        base = next(p for p in ("python3.11", "python3.12", "python3.10", sys.executable)
                    if subprocess.run([p, "--version"], capture_output=True).returncode == 0)
        subprocess.run([base, "-m", "venv", "--clear", str(VENV)], check=True, capture_output=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True, capture_output=True,
                       timeout=600)
        subprocess.run(probe, check=True, capture_output=True, timeout=120)
    except (StopIteration, subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        detail = getattr(e, "stderr", b"") or b""
        message = f"could not create the openpi-client environment at {VENV}: {e!r} {detail[-1000:]!r}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


CLIENT = textwrap.dedent("""
    import sys
    import numpy as np
    from openpi_client import websocket_client_policy as wcp

    port, out, seed, delay, execute, key = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    try:
        wcp.WebsocketClientPolicy(host="127.0.0.1", port=int(port))
        refused = "no"
    except Exception as e:  # the stock client raises on the 401 handshake
        refused = type(e).__name__
    client = wcp.WebsocketClientPolicy(host="127.0.0.1", port=int(port), api_key=key)
    meta = client.get_server_metadata()
    obs = np.linspace(-1, 1, meta["observation"]["observation/state"]["shape"][0]).astype(np.float32)
    naive = client.infer({"observation/state": obs, "prompt": "ignored by this policy", "rtc/seed": seed})
    leftover = np.linspace(-2, 2, (meta["horizon"] - execute) * meta["action_dim"]).reshape(-1, meta["action_dim"]).astype(np.float32)
    rtc = client.infer({"observation/state": obs, "rtc/prev_chunk_leftover": leftover, "rtc/inference_delay": np.int64(delay),
                        "rtc/execute_horizon": execute, "rtc/method": "rtc", "rtc/seed": seed})
    try:
        client.infer({"observation/state": obs, "rtc/prev_chunk_leftover": leftover, "rtc/inference_delay": 7})
        error = "none"
    except RuntimeError as e:
        error = str(e)
    np.savez(out, naive=naive["actions"], rtc=rtc["actions"], obs=obs, leftover=leftover,
             batch=np.int64(rtc["server_timing"]["batch_size"]), infer_ms=np.float64(rtc["server_timing"]["infer_ms"]),
             horizon=np.int64(meta["horizon"]), refused=np.str_(refused), error=np.str_(error),
             naive_type=np.str_(type(naive["actions"]).__name__ + str(naive["actions"].dtype)))
""")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`rtchunk serve` in a subprocess on a free port; yields (port, checkpoint paths)."""
    paths = write_checkpoints(tmp_path_factory.mktemp("openpi_ckpt"))
    env = subprocess_env()
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["RTCHUNK_JAX_CACHE"])  # set by conftest
    env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtchunk.cli", "serve", "--policy-dir", str(paths["run"]), "--port", "0",
         "--max-batch", "1", "--no-warmup", "--api-key", API_KEY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"on ws://127\.0\.0\.1:(\d+)", line)
        if not match:
            proc.kill()
            pytest.fail(f"rtchunk serve did not start: {line!r} {proc.stderr.read()[-3000:]}")
        yield int(match.group(1)), paths
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def test_the_stock_openpi_client_gets_naive_and_rtc_chunks_equal_to_the_in_process_sampler(served, tmp_path):
    python = _venv_python()
    port, paths = served
    out = tmp_path / "client.npz"
    run = subprocess.run([str(python), "-c", CLIENT, str(port), str(out), str(SEED), str(DELAY), str(EXECUTE), API_KEY],
                         capture_output=True, text=True, timeout=300, env={"PATH": os.environ.get("PATH", "")})
    assert run.returncode == 0, run.stderr[-3000:]
    got = np.load(out)
    assert str(got["refused"]) == "InvalidStatus"  # without the API key: refused at the handshake
    assert str(got["naive_type"]) == "ndarrayfloat32"  # arrays, not raw maps: the bytes keys are right
    assert got["naive"].shape == (H, ACT) and got["rtc"].shape == (H, ACT) and int(got["batch"]) == 1
    assert str(got["error"]).startswith("Error in inference server:\nrtc/inference_delay: must be in [0, 5]")

    from rtchunk.checkpoints import load_policy
    from rtchunk.methods import RTC, Naive
    from rtchunk.policy_adapter import FlowChunkPolicy

    policy, _ = load_policy(paths["last"])
    obs, leftover = got["obs"], got["leftover"]
    naive = FlowChunkPolicy(policy, Naive(), seed=SEED)(obs, None, 0, None)
    rtc = FlowChunkPolicy(policy, RTC(), seed=SEED)(obs, leftover, DELAY, EXECUTE)
    np.testing.assert_allclose(got["naive"], naive, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["rtc"], rtc, rtol=1e-5, atol=1e-5)
    # RTC keeps the frozen prefix near the leftover, as in process; the naive chunk does not.
    rtc_err = np.abs(got["rtc"][:DELAY] - leftover[:DELAY]).mean()
    naive_err = np.abs(got["naive"][:DELAY] - leftover[:DELAY]).mean()
    assert rtc_err < 0.5 * naive_err
