"""Telemetry of a known virtual-time run: summary values, CSV / JSON / PNG export."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from runtime_fakes import InpaintingFake, Scripted

from rtchunk.checkpoints import atomic_write_bytes
from rtchunk.runtime import Runtime, RuntimeConfig, SimulatedClock, SinceSwap


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
