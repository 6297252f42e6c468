"""`rtchunk live`: tiny random policies drive shrunk h17_unicycle through the real runtime, in wall-clock
time at 100 Hz with 12-step episodes, with and without injected latency."""

from __future__ import annotations

import dataclasses
import json

import flax.nnx as nnx
import pytest

from rtchunk import checkpoints
from rtchunk.cli import main as cli_main
from rtchunk.kinetix import live
from rtchunk.model import FlowPolicy
from rtchunk.runtime import Paper

from kinetix_helpers import TINY_MODEL

OBS, ACT = 679, 6  # h17_unicycle


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A train-policy-like layout: <run>/<level>/epoch_000, with the data's meta.json the policy points at."""
    root = tmp_path_factory.mktemp("live")
    data = root / "data"
    (data / "h17_unicycle").mkdir(parents=True)
    (data / "h17_unicycle" / "meta.json").write_text(json.dumps({
        "level": "h17_unicycle", "level_source": "l/h17_unicycle",
        "env": {"shrink": True, "max_timesteps": 12, "action_noise_std": 0.1},
    }))
    common = {"data_dir": str(data)}
    checkpoints.save_policy(root / "policy" / "h17_unicycle" / "epoch_000",
                            FlowPolicy(OBS, ACT, TINY_MODEL, rngs=nnx.Rngs(0)), {**common, "training_delays": None})
    checkpoints.save_policy(root / "policy_rtc" / "h17_unicycle" / "epoch_000",
                            FlowPolicy(OBS, ACT, TINY_MODEL, rngs=nnx.Rngs(1)),
                            {**common, "training_delays": {"min_delay": 0, "max_delay": 2}})
    return root


def test_live_runs_every_method_with_injected_latency(trained, tmp_path):
    config = live.LiveConfig(policy_dir=trained / "policy", trained_prefix_policy_dir=trained / "policy_rtc",
                             methods=live.LIVE_METHODS, extra_latency_ms=(0.0, 45.0), control_hz=100.0,
                             replan=Paper(s_min=2), episodes=2, out=tmp_path / "out")
    rows = live.run(config)
    assert [(r["method"], r["extra_latency_ms"]) for r in rows] == [
        (m, ms) for m in ("naive", "rtc", "trained_prefix") for ms in (0.0, 45.0)]
    for r in rows:
        assert r["episodes"] == 2 and 0 <= r["solved"] <= 2
        assert 1 <= r["length_mean"] <= 12
        assert r["solve_rate_low"] <= r["solve_rate"] <= r["solve_rate_high"]
        assert r["swaps"] >= 1 and r["ticks"] >= r["length_mean"] * 2
        run_dir = tmp_path / "out" / f"{r['method']}_plus{r['extra_latency_ms']:g}ms"
        assert (run_dir / "telemetry.json").is_file() and (run_dir / "telemetry.png").is_file()
        assert r["video"] == str(run_dir / "episode.mp4") and (run_dir / "episode.mp4").stat().st_size > 1000
        if r["extra_latency_ms"] > 0:
            # 45 ms of sleep at a 10 ms period: at least 4 whole ticks pass before any chunk can return.
            assert r["delay_ticks_p50"] >= 4
    tp = [r for r in rows if r["method"] == "trained_prefix" and r["extra_latency_ms"] > 0][0]
    # Told the max of recent delays (>= 4) but trained only up to 2: clipped, and counted.
    assert tp["delay_clipped"] >= 1
    assert "| rtc | +45 ms |" in (tmp_path / "out" / "results.md").read_text()
    assert len((tmp_path / "out" / "results.csv").read_text().splitlines()) == 7


def test_live_says_how_to_get_a_policy(tmp_path, capsys):
    code = cli_main(["live", "--policy-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("rtchunk live: error: no trained policy at") and "rtchunk demo" in err
    assert not (tmp_path / "out").exists()


def test_live_refuses_an_untrained_prefix_model(trained, tmp_path):
    with pytest.raises(ValueError, match="simulated-delay"):
        live.load_live_policies(live.LiveConfig(policy_dir=trained / "policy", methods=live.LIVE_METHODS,
                                                trained_prefix_policy_dir=trained / "policy"))
    assert live.LiveConfig().methods == ("naive", "rtc")  # the demo's: it trains no training-time-RTC model


def test_live_config_errors_name_the_parameter():
    with pytest.raises(ValueError, match="methods"):
        live.LiveConfig(methods=("bid",))
    with pytest.raises(ValueError, match="extra_latency_ms"):
        live.LiveConfig(extra_latency_ms=(-1.0,))
    with pytest.raises(ValueError, match="control_hz"):
        live.LiveConfig(control_hz=0.0)
    with pytest.raises(ValueError, match="replan"):
        live.LiveConfig(replan="sometimes")


def test_clip_delay_counts():
    seen = []
    clip = live.ClipDelay(lambda o, p, d, s: seen.append(d), max_delay=2)
    clip(None, None, 5, 3)
    clip(None, None, 1, 3)
    assert seen == [2, 1] and clip.clipped == 1


def test_live_with_the_policy_on_a_server(trained, tmp_path):
    """`rtchunk live --remote`: the same run with the policy behind `rtchunk serve`'s server on loopback;
    the telemetry splits each round trip into server compute, batch queue and transport."""
    from rtchunk.serving.checkpoint import load_backend
    from rtchunk.serving.server import PolicyServer, ServerConfig

    backend, _ = load_backend(trained / "policy", max_batch=1)
    backend.warmup(("naive", "rtc"))  # as `rtchunk serve` does before it listens
    with PolicyServer(backend, ServerConfig(port=0, max_batch=1, api_key="k3y")).start() as server:
        config = live.LiveConfig(policy_dir=trained / "policy", remote=server.url, api_key="k3y",
                                 methods=("naive", "rtc"), extra_latency_ms=(0.0, 45.0), control_hz=100.0,
                                 replan=Paper(s_min=2), episodes=2, video=False, out=tmp_path / "out")
        rows = live.run(config)
        assert [(r["method"], r["extra_latency_ms"]) for r in rows] == [
            ("naive", 0.0), ("naive", 45.0), ("rtc", 0.0), ("rtc", 45.0)]
        for r in rows:
            assert r["episodes"] == 2 and r["swaps"] >= 1 and r["policy"].startswith(server.url)
            assert r["server_compute_ms_p50"] > 0 and r["transport_ms_p50"] >= 0
            if r["extra_latency_ms"] > 0:
                assert r["delay_ticks_p50"] >= 4  # the injected 45 ms, as in-process
        assert "k3y" not in (tmp_path / "out" / "run.json").read_text()
        with pytest.raises(ValueError, match="^--remote: .* does not serve trained_prefix"):
            live.run(dataclasses.replace(config, methods=("trained_prefix",), out=tmp_path / "out2"))
        assert not (tmp_path / "out2").exists()
    with pytest.raises(ValueError, match="^--remote: "):  # the server is gone
        live.run(dataclasses.replace(config, connect_timeout_s=0.2, out=tmp_path / "out3"))


def test_live_remote_flags_are_checked():
    with pytest.raises(ValueError, match="remote must be a ws:// or wss:// address"):
        live.LiveConfig(remote="localhost:8000")
    with pytest.raises(ValueError, match="trained_prefix_remote needs remote"):
        live.LiveConfig(trained_prefix_remote="ws://127.0.0.1:1")
