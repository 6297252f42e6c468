"""What the runtime records, its summary, and export as CSV, JSON and a plot.

The controller appends one tuple per tick to a bounded deque (the cheapest record Python offers: no
copies, the action is a read-only row of its chunk); everything else is computed from a snapshot, off
the controller thread. Metrics come from ``rtchunk.metrics`` so the runtime and the benchmark harness
report the same quantities.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from rtchunk import metrics
from rtchunk.files import atomic_write_bytes, atomic_write_text, to_jsonable
from rtchunk.runtime.policies import TIMING_KEYS

STATUSES = ("ok", "error", "invalid_output")


@dataclasses.dataclass(frozen=True)
class InferenceEvent:
    """One call of the policy by the inference loop (the initial chunk is not one)."""

    id: int
    status: str
    """``ok`` (swapped in), ``error`` (the policy raised) or ``invalid_output`` (wrong shape, NaN, ...)."""
    start_tick: int
    """Ticks executed when the inference started; it was handed the observation of that tick."""
    end_tick: int
    start_index: int
    execute_horizon: int
    leftover_len: int
    estimate: int
    """What the delay estimator said, before the bound."""
    told_delay: int
    """The delay the policy was told: the estimate bounded to [0, ``rtchunk.methods.told_delay_bound``]
    (leftover_len unless the policy's method freezes no prefix)."""
    actual_delay: int | None
    """Ticks from start to swap (the position the new chunk was entered at); None unless ok."""
    start_s: float
    end_s: float
    compute_s: float
    """Wall time inside the policy call (also under the simulated clock)."""
    server_compute_s: float = math.nan
    """From the policy's ``last_call_timing`` (a policy that runs elsewhere); NaN when it gave none."""
    server_queue_s: float = math.nan
    transport_s: float = math.nan
    error: str | None = None


class TelemetryRecorder:
    """Append-only logs owned by the runtime; every method is called with the runtime's lock held."""

    def __init__(self, control_period_s: float, capacity: int):
        self.control_period_s = control_period_s
        self.ticks: deque[tuple] = deque(maxlen=capacity)
        self.inferences: deque[InferenceEvent] = deque(maxlen=capacity)
        self.rejected_observations: deque[tuple[int, str]] = deque(maxlen=capacity)
        self.missed_ticks: deque[tuple[int, int]] = deque(maxlen=capacity)  # (tick, slots skipped)
        self.total_ticks = 0
        self.start_s = math.nan

    def copy(self) -> tuple:
        """The logs as plain lists (cheap; taken under the runtime's lock)."""
        return (list(self.ticks), list(self.inferences), list(self.rejected_observations), list(self.missed_ticks),
                self.total_ticks)

    def build(self, raw: tuple, action_dim: int) -> "Telemetry":
        """Arrays from a ``copy()`` (the expensive part, done outside the lock)."""
        rows, inferences, rejected, missed, total = raw
        if rows:
            tick, scheduled, woke, chunk_id, index, actions = zip(*rows)
            action_arr = np.stack(actions).astype(np.float64)
        else:
            tick = scheduled = woke = chunk_id = index = ()
            action_arr = np.zeros((0, action_dim))
        return Telemetry(
            control_period_s=self.control_period_s,
            start_s=self.start_s,
            total_ticks=total,
            tick=np.asarray(tick, np.int64),
            scheduled_s=np.asarray(scheduled, np.float64),
            time_s=np.asarray(woke, np.float64),
            chunk_id=np.asarray(chunk_id, np.int64),
            chunk_index=np.asarray(index, np.int64),
            actions=action_arr,
            inferences=tuple(inferences),
            rejected_observations=tuple(rejected),
            missed=tuple(missed),
        )


@dataclasses.dataclass(frozen=True, eq=False)
class Telemetry:
    """A snapshot of a run. Per tick: ``tick``, ``scheduled_s`` (NaN when the caller drives the ticks),
    ``time_s`` (when the tick started), ``chunk_id`` (-1 when the controller starved and held / fell
    back), ``chunk_index`` and ``actions`` [T, A]. Times are the clock's (monotonic or virtual)."""

    control_period_s: float
    start_s: float
    total_ticks: int
    tick: np.ndarray
    scheduled_s: np.ndarray
    time_s: np.ndarray
    chunk_id: np.ndarray
    chunk_index: np.ndarray
    actions: np.ndarray
    inferences: tuple[InferenceEvent, ...]
    rejected_observations: tuple[tuple[int, str], ...]
    missed: tuple[tuple[int, int], ...]

    # -- derived per-tick series -----------------------------------------------------------------------
    @property
    def jitter_s(self) -> np.ndarray:
        """How late each tick started: against its deadline, or (caller-driven ticks) against previous + period."""
        if self.scheduled_s.size and np.all(np.isfinite(self.scheduled_s)):
            return self.time_s - self.scheduled_s
        late = np.diff(self.time_s, prepend=np.nan) - self.control_period_s
        return late

    @property
    def starved(self) -> np.ndarray:
        return self.chunk_id < 0

    @property
    def switched(self) -> np.ndarray:
        """True at ticks whose action is the first taken from a newly swapped-in chunk."""
        prev = np.concatenate([[self.chunk_id[0] if self.chunk_id.size else 0], self.chunk_id[:-1]])
        return (self.chunk_id >= 0) & (self.chunk_id != prev)

    @property
    def missed_ticks(self) -> int:
        return int(sum(n for _, n in self.missed))

    def seam_jumps(self) -> np.ndarray:
        """||a_t - a_(t-1)|| at every swap."""
        return metrics.seam_jumps(self.actions, self.switched)

    # -- summary ---------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        ok = [e for e in self.inferences if e.status == "ok"]
        counts = {status: sum(e.status == status for e in self.inferences) for status in STATUSES}
        jitter_ms = self.jitter_s * 1e3
        jitter_ms = jitter_ms[np.isfinite(jitter_ms)]
        actual = np.array([e.actual_delay for e in ok], np.int64)
        told = np.array([e.told_delay for e in ok], np.int64)
        latency_ms = np.array([(e.end_s - e.start_s) * 1e3 for e in ok])
        compute_ms = np.array([e.compute_s * 1e3 for e in self.inferences])
        out: dict[str, Any] = {
            "ticks": int(self.total_ticks),
            "ticks_recorded": int(self.tick.size),
            "control_period_s": self.control_period_s,
            "missed_ticks": self.missed_ticks,
            "starvation_ticks": int(self.starved.sum()),
            "inferences": len(self.inferences),
            "swaps": counts["ok"],
            "inference_errors": counts["error"],
            "invalid_outputs": counts["invalid_output"],
            "rejected_observations": len(self.rejected_observations),
            # Chunks that arrived after the previous one had run out (the controller starved meanwhile).
            "late_chunks": int(sum(e.actual_delay > e.leftover_len for e in ok)),
        }
        out |= {f"jitter_ms_{k}": v for k, v in metrics.percentiles(jitter_ms).items()}
        out["jitter_ms_max"] = float(jitter_ms.max()) if jitter_ms.size else math.nan
        out |= {f"delay_ticks_{k}": v for k, v in metrics.percentiles(actual).items()}
        out |= {f"latency_ms_{k}": v for k, v in metrics.percentiles(latency_ms).items()}
        out |= {f"compute_ms_{k}": v for k, v in metrics.percentiles(compute_ms).items()}
        out["told_delay_mean"] = float(told.mean()) if told.size else math.nan
        # How often the delay was underestimated: the frozen prefix was too short for what really executed.
        out["delay_underestimated"] = float((actual > told).mean()) if actual.size else math.nan
        # Where a remote policy's time went, only when the policy reports it.
        for key in TIMING_KEYS:
            ms = np.array([getattr(e, key) * 1e3 for e in self.inferences])
            ms = ms[np.isfinite(ms)]
            if ms.size:
                out |= {f"{key[:-2]}_ms_{k}": v for k, v in metrics.percentiles(ms, (50, 99)).items()}
        out |= metrics.seam_summary(self.seam_jumps())
        out |= metrics.smoothness(self.actions) if self.actions.shape[0] else {"max_delta_action": 0.0, "max_ddelta_action": 0.0}
        return out

    # -- export ----------------------------------------------------------------------------------------
    def ticks_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        a = self.actions.shape[1]
        writer.writerow(["tick", "scheduled_s", "time_s", "jitter_ms", "chunk_id", "chunk_index", "starved",
                         *[f"action_{i}" for i in range(a)]])
        jitter_ms = self.jitter_s * 1e3
        t0 = self.start_s
        for i in range(self.tick.size):
            writer.writerow([int(self.tick[i]), _num(self.scheduled_s[i] - t0), _num(self.time_s[i] - t0),
                             _num(jitter_ms[i]), int(self.chunk_id[i]), int(self.chunk_index[i]),
                             int(self.chunk_id[i] < 0), *[repr(float(x)) for x in self.actions[i]]])
        return buf.getvalue()

    def inferences_csv(self) -> str:
        buf = io.StringIO()
        fields = [f.name for f in dataclasses.fields(InferenceEvent)]
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        for event in self.inferences:
            row = dataclasses.asdict(event)
            row["start_s"] -= self.start_s
            row["end_s"] -= self.start_s
            writer.writerow({k: ("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
                             for k, v in row.items()})
        return buf.getvalue()

    def to_dict(self) -> dict[str, Any]:
        t0 = self.start_s
        events = []
        for event in self.inferences:
            row = dataclasses.asdict(event)
            row["start_s"] -= t0
            row["end_s"] -= t0
            events.append(row)
        return {
            "summary": self.summary(),
            "inferences": events,
            "rejected_observations": [{"tick": t, "reason": r} for t, r in self.rejected_observations],
            "missed": [{"tick": t, "skipped": n} for t, n in self.missed],
            "ticks": {
                "tick": self.tick.tolist(),
                "scheduled_s": (self.scheduled_s - t0).tolist(),
                "time_s": (self.time_s - t0).tolist(),
                "chunk_id": self.chunk_id.tolist(),
                "chunk_index": self.chunk_index.tolist(),
                "actions": self.actions.tolist(),
            },
        }

    def to_json(self) -> str:
        return json.dumps(_json_safe(to_jsonable(self.to_dict())), indent=1, allow_nan=False)

    def save(self, directory: Path, *, plot: bool = True) -> dict[str, Path]:
        """ticks.csv, inferences.csv, telemetry.json (and telemetry.png), each written atomically."""
        directory = Path(directory)
        paths = {
            "ticks_csv": directory / "ticks.csv",
            "inferences_csv": directory / "inferences.csv",
            "json": directory / "telemetry.json",
        }
        atomic_write_text(paths["ticks_csv"], self.ticks_csv())
        atomic_write_text(paths["inferences_csv"], self.inferences_csv())
        atomic_write_text(paths["json"], self.to_json())
        if plot:
            paths["plot"] = self.plot(directory / "telemetry.png")
        return paths

    def plot(self, path: Path) -> Path:
        """Actions with swaps and starvation, tick jitter, and told vs actual delay, as one PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(3, 1, figsize=(10, 8), constrained_layout=True)
        ax = axes[0]
        ax.plot(self.tick, self.actions, lw=1)
        for t in self.tick[self.switched]:
            ax.axvline(t, color="0.7", lw=0.6, zorder=0)
        if self.starved.any():
            ax.plot(self.tick[self.starved], np.full(self.starved.sum(), np.nanmin(self.actions)), "r|", ms=8,
                    label="starved (hold / fallback)")
            ax.legend(loc="upper right", fontsize=8)
        ax.set(xlabel="tick", ylabel="action", title="executed actions (grey lines: chunk swaps)")

        ax = axes[1]
        ax.plot(self.tick, self.jitter_s * 1e3, ".", ms=2)
        ax.set(xlabel="tick", ylabel="ms", title="tick lateness (jitter)")

        ax = axes[2]
        ok = [e for e in self.inferences if e.status == "ok"]
        if ok:
            ax.step([e.end_tick for e in ok], [e.told_delay for e in ok], where="post", label="told delay")
            ax.plot([e.end_tick for e in ok], [e.actual_delay for e in ok], "o", ms=3, label="actual delay")
        bad = [e for e in self.inferences if e.status != "ok"]
        if bad:
            ax.plot([e.end_tick for e in bad], [0] * len(bad), "rx", label="failed / rejected")
        ax.set(xlabel="tick", ylabel="ticks", title="inference delay")
        ax.legend(loc="upper right", fontsize=8)

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        atomic_write_bytes(Path(path), buf.getvalue())
        return Path(path)


def _num(x: float) -> str:
    return "" if not math.isfinite(x) else repr(float(x))


def _json_safe(obj):
    """NaN/inf become null so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
