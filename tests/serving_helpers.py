"""Shared by the tests of rtchunk.serving: servers on loopback (in a thread or a subprocess), raw clients."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from rtchunk.serving import protocol
from rtchunk.serving.backends import ToyBackend
from rtchunk.serving.server import PolicyServer, ServerConfig

SRC = Path(__file__).resolve().parents[1] / "src"
OBS, H, ACT = 4, 8, 2


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def toy_server(backend: ToyBackend | None = None, **config):
    config.setdefault("port", 0)
    server = PolicyServer(backend or ToyBackend(OBS, H, ACT), ServerConfig(**config)).start()
    try:
        yield server
    finally:
        server.stop()


def raw_connect(url: str, headers=None):
    """A plain websocket connection; returns (connection, metadata)."""
    from websockets.sync.client import connect

    ws = connect(url, compression=None, max_size=None, additional_headers=headers, open_timeout=10, proxy=None).__enter__()
    return ws, protocol.unpackb(ws.recv(timeout=10))


def request(obs=None, **rtc) -> dict:
    req = {protocol.OBSERVATION_KEY: np.ones(OBS, np.float32) if obs is None else obs}
    req.update({f"rtc/{k}": v for k, v in rtc.items()})
    return req


TOY_SERVER_SCRIPT = """
import sys
from rtchunk.serving.backends import ToyBackend
from rtchunk.serving.server import PolicyServer, ServerConfig
port, compute_s = int(sys.argv[1]), float(sys.argv[2])
server = PolicyServer(ToyBackend({obs}, {h}, {act}, compute_s=compute_s), ServerConfig(port=port))
server.run(on_ready=lambda s: print("ready", s.port, flush=True))
""".format(obs=OBS, h=H, act=ACT)


def spawn_toy_server(port: int, compute_s: float = 0.0, timeout: float = 60.0) -> subprocess.Popen:
    """A toy server in its own process (to be killed), once it listens."""
    proc = subprocess.Popen([sys.executable, "-c", TOY_SERVER_SCRIPT, str(port), str(compute_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()
    if not line.startswith("ready") or time.monotonic() > deadline:
        proc.kill()
        raise RuntimeError(f"the toy server did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc


TINY = dict(channel_dim=32, channel_hidden_dim=64, token_hidden_dim=16, num_layers=1, horizon=H)
LEVEL = "toy_level"
TRAINED_MAX_DELAY = 2


def write_checkpoints(root: Path) -> dict[str, Path]:
    """Tiny flow policies laid out as `rtchunk train-policy` writes them: a plain run with two epochs
    (the last one is served) and a prefix-trained run (``training_delays`` in its meta)."""
    import flax.nnx as nnx

    from rtchunk.checkpoints import save_policy
    from rtchunk.model import FlowPolicy
    from rtchunk.model_config import ModelConfig

    config = ModelConfig(**TINY)
    paths = {"run": root / "policy", "prefix_run": root / "policy_rtc"}
    for epoch in (0, 1):
        save_policy(paths["run"] / LEVEL / f"epoch_{epoch:03d}", FlowPolicy(OBS, ACT, config, rngs=nnx.Rngs(epoch)),
                    {"level": LEVEL})
    delays = {"min_delay": 0, "max_delay": TRAINED_MAX_DELAY, "distribution": "exp", "decay": 1.0}
    save_policy(paths["prefix_run"] / LEVEL / "epoch_000", FlowPolicy(OBS, ACT, config, rngs=nnx.Rngs(7)),
                {"level": LEVEL, "training_delays": delays})
    paths["last"] = paths["run"] / LEVEL / "epoch_001"
    return paths
