"""Telemetry of a known virtual-time run: summary values, CSV / JSON / PNG export."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from runtime_fakes import InpaintingFake, Remote, Scripted

from rtchunk.checkpoints import atomic_write_bytes
from rtchunk.runtime import Paper, Runtime, RuntimeConfig, SimulatedClock, SinceSwap, WithExtraLatency


@pytest.fixture(scope="module")
def telemetry():
    """The worked example with a failure and a late chunk: H = 10, s_min = 4, latencies 3, 3, 9."""
    latencies = [3, 3, 9, 3]
    rt = Runtime(Scripted(["ok", "raise", "ok", "ok"]),
                 RuntimeConfig(replan=SinceSwap(s_min=4), initial_delay=3, control_period_s=0.5, retry_backoff_s=1.0),
                 clock=SimulatedClock(lambda k: latencies[min(k, 3)]))
    rt.start(np.zeros(2, np.float32))
    for t in range(1, 31):
        rt.get_action(np.array([t, 0.0], np.float32))
    rt.stop()
    return rt.telemetry()


def test_summary_of_a_known_run(telemetry):
    s = telemetry.summary()
    events = [(e.status, e.start_tick, e.end_tick, e.actual_delay) for e in telemetry.inferences]
    # ok at 4->7; error 11->14 (retry after 1 s = 2 ticks); ok 16->25 (9 ticks: late); ok 29->...
    assert events == [("ok", 4, 7, 3), ("error", 11, 14, None), ("ok", 16, 25, 9)]
    assert (s["ticks"], s["swaps"], s["inference_errors"], s["late_chunks"]) == (30, 2, 1, 1)
    assert s["missed_ticks"] == 0 and s["jitter_ms_max"] == 0.0  # virtual time is never late
    assert s["starvation_ticks"] == int(telemetry.starved.sum()) > 0
    assert s["delay_ticks_p50"] == 6.0 and s["delay_ticks_p99"] == pytest.approx(8.94)
    assert s["latency_ms_p50"] == pytest.approx(3000.0)  # (3 + 9) / 2 ticks of 0.5 s
    assert s["delay_underestimated"] == 0.5  # the 9-tick inference was told 3
    # Seams: a6 -> a7' (+1.5) at T=8; the held 109 -> the late chunk's index 9 at T=26.
    jumps = telemetry.seam_jumps()
    assert jumps[0] == pytest.approx(1.5) and s["seam_jump_mean"] == pytest.approx(jumps.mean())
    d1 = np.abs(np.diff(telemetry.actions[:, 0]))
    assert s["max_delta_action"] == pytest.approx(d1.max())


def test_csv_json_and_plot_are_written(telemetry, tmp_path):
    paths = telemetry.save(tmp_path / "run")
    rows = list(csv.DictReader(io.StringIO(paths["ticks_csv"].read_text())))
    assert len(rows) == 30 and rows[7]["tick"] == "8" and rows[7]["chunk_index"] == "3" and rows[7]["action_0"] == "7.5"
    assert rows[0]["jitter_ms"] == "0.0" and {r["starved"] for r in rows} == {"0", "1"}
    inf = list(csv.DictReader(io.StringIO(paths["inferences_csv"].read_text())))
    assert [r["status"] for r in inf] == ["ok", "error", "ok"] and inf[1]["actual_delay"] == ""
    body = json.loads(paths["json"].read_text())  # strict JSON: NaN is written as null
    assert body["summary"]["swaps"] == 2 and len(body["ticks"]["actions"]) == 30
    assert body["inferences"][1]["error"].startswith("RuntimeError")
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "run").glob(".*"))  # no temporary files left behind


def test_empty_telemetry_summarises():
    rt = Runtime(InpaintingFake(), RuntimeConfig(replan=SinceSwap(s_min=4)), clock=SimulatedClock(1))
    rt.start(np.zeros(2, np.float32))
    rt.stop()
    s = rt.telemetry().summary()
    assert s["ticks"] == 0 and s["swaps"] == 0 and np.isnan(s["jitter_ms_p50"])
    assert json.loads(rt.telemetry().to_json())["summary"]["jitter_ms_p50"] is None


def test_atomic_write_bytes(tmp_path):
    path = tmp_path / "sub" / "blob.bin"
    atomic_write_bytes(path, b"\x00\x01")
    atomic_write_bytes(path, b"\x02")
    assert path.read_bytes() == b"\x02" and [p.name for p in path.parent.iterdir()] == ["blob.bin"]


# -- policies that run elsewhere: last_call_timing -----------------------------------------------------


TIMINGS = [
    {"server_compute_s": 0.010, "server_queue_s": 0.001, "transport_s": 0.004},
    {"server_compute_s": 0.030, "transport_s": 0.002},  # no queue time reported
    None,  # nothing reported for this call
    {"server_compute_s": 0.020, "server_queue_s": "soon", "transport_s": 0.006},  # a malformed value
]


def run_remote(policy, ticks=24):
    rt = Runtime(policy, RuntimeConfig(replan=Paper(s_min=4), initial_delay=2), clock=SimulatedClock(2))
    rt.start(np.zeros(2, np.float32))
    for t in range(1, ticks + 1):
        rt.get_action(np.array([t, 0.0], np.float32))
    rt.stop()
    return rt.telemetry()


@pytest.mark.parametrize("wrap", [False, True])
def test_remote_timing_is_recorded_per_inference_and_summarised(wrap, tmp_path):
    inner = Remote(TIMINGS)
    policy = WithExtraLatency(inner, 0.0) if wrap else inner  # the wrapper passes the inner timing through
    tel = run_remote(policy)
    events = tel.inferences[:5]
    assert len(events) == 5
    nan = float("nan")
    want = [(0.010, 0.001, 0.004), (0.030, nan, 0.002), (nan, nan, nan), (0.020, nan, 0.006), (nan, nan, nan)]
    got = [(e.server_compute_s, e.server_queue_s, e.transport_s) for e in events]
    np.testing.assert_array_equal(np.array(got), np.array(want))
    s = tel.summary()
    assert s["server_compute_ms_p50"] == pytest.approx(20.0) and s["server_compute_ms_p99"] == pytest.approx(29.8)
    assert s["server_queue_ms_p50"] == pytest.approx(1.0) and s["server_queue_ms_p99"] == pytest.approx(1.0)
    assert s["transport_ms_p50"] == pytest.approx(4.0) and s["transport_ms_p99"] == pytest.approx(5.96)
    assert "server_compute_ms_p95" not in s

    paths = tel.save(tmp_path / "run", plot=False)
    rows = list(csv.DictReader(io.StringIO(paths["inferences_csv"].read_text())))
    assert [r["server_compute_s"] for r in rows[:3]] == ["0.01", "0.03", ""]
    assert [r["server_queue_s"] for r in rows[:2]] == ["0.001", ""] and rows[1]["transport_s"] == "0.002"
    body = json.loads(paths["json"].read_text())
    assert body["inferences"][0]["transport_s"] == 0.004 and body["inferences"][2]["transport_s"] is None
    assert body["summary"]["transport_ms_p50"] == pytest.approx(4.0)


def test_without_remote_timing_the_fields_are_nan_and_the_summary_has_no_percentiles(telemetry):
    assert all(math.isnan(e.server_compute_s) and math.isnan(e.server_queue_s) and math.isnan(e.transport_s)
               for e in telemetry.inferences)
    s = telemetry.summary()
    assert not [k for k in s if k.startswith(("server_", "transport_"))]
    rows = list(csv.DictReader(io.StringIO(telemetry.inferences_csv())))
    assert {r["transport_s"] for r in rows} == {""}
