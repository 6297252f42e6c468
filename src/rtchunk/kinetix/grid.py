"""The grid an eval sweep runs: delay profiles from the command line, and every (profile, d, s) in order.

The default grid is the papers': fixed delays d = 0..4 and, for each, execute horizons
s = max(d, 1) .. H - d. A stochastic delay profile adds the execute horizons around its median delay.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

from rtchunk import delays as delays_lib


def parse_profile(spec: str) -> delays_lib.DelayProfile:
    """A delay profile from a compact spec.

    * ``fixed:D``: always D steps (``fixed`` alone means the --delays grid).
    * ``mixture:D=P,D=P,...[,spike=D@P][,cap=C]``: base delays with probabilities (summing to 1),
      plus a spike delay drawn with probability P, optionally capped at C. E.g.
      ``mixture:1=0.5,2=0.5,spike=6@0.05,cap=4``.
    * ``empirical:L,L,...[,period=S][,cap=C]``: measured latencies in seconds (or one file holding them,
      whitespace/comma separated or a JSON list) and the control period in seconds (default 0.02).
    """
    kind, _, body = spec.partition(":")
    items = [x.strip() for x in body.split(",") if x.strip()]
    options = {}
    rest = []
    for item in items:
        key, eq, value = item.partition("=")
        if eq and key in ("spike", "cap", "period"):
            options[key] = value
        else:
            rest.append(item)
    try:
        cap = int(options["cap"]) if "cap" in options else None
        if kind == "fixed":
            if len(rest) != 1 or options.keys() - {"cap"}:
                raise ValueError("expected fixed:D")
            return delays_lib.FixedDelay(int(rest[0]), tail_cap=cap)
        if kind == "mixture":
            pairs = [item.split("=") for item in rest]
            if not pairs or any(len(p) != 2 for p in pairs):
                raise ValueError("expected mixture:D=P,D=P,...")
            spike_delay, spike_prob = 0, 0.0
            if "spike" in options:
                d, at, p = options["spike"].partition("@")
                if not at:
                    raise ValueError("expected spike=D@P")
                spike_delay, spike_prob = int(d), float(p)
            return delays_lib.MixtureDelay(
                delays=tuple(int(d) for d, _ in pairs), probs=tuple(float(p) for _, p in pairs),
                spike_delay=spike_delay, spike_prob=spike_prob, tail_cap=cap,
            )
        if kind == "empirical":
            if len(rest) == 1 and Path(rest[0]).is_file():
                text = Path(rest[0]).read_text()
                values = json.loads(text) if text.lstrip().startswith("[") else text.replace(",", " ").split()
            else:
                values = rest
            return delays_lib.EmpiricalDelay(
                latencies_s=tuple(float(v) for v in values),
                control_period_s=float(options.get("period", 0.02)), tail_cap=cap,
            )
    except (ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"bad delay profile {spec!r}: {e}") from None
    raise ValueError(f"bad delay profile {spec!r}: kind must be fixed, mixture or empirical")


@dataclasses.dataclass(frozen=True)
class GridPoint:
    profile_name: str
    d: int | None  # fixed delay, None for stochastic profiles
    s: int
    profile: delays_lib.DelayProfile


def grid(horizon: int, profiles: Sequence[str] = ("fixed",), delays: Sequence[int] = (0, 1, 2, 3, 4),
         execute_horizons: Sequence[int] = (), shortest_horizon_only: bool = False) -> list[GridPoint]:
    """Every (profile, d, s) a sweep evaluates, in order. ``execute_horizons`` empty: the papers' s =
    max(d, 1) .. H - d for each d (only s = max(d, 1) with ``shortest_horizon_only``)."""
    for s in execute_horizons:
        if not 1 <= s <= horizon:
            raise ValueError(f"execute_horizons must be in [1, H={horizon}] (the policy's chunk horizon), got {s}")
    points = []

    def horizons_for(d: int):
        if execute_horizons:
            return list(execute_horizons)
        return [max(d, 1)] if shortest_horizon_only else list(range(max(d, 1), horizon - d + 1))

    for name in profiles:
        if name == "fixed":
            for d in delays:
                if d < 0:
                    raise ValueError(f"delays must be >= 0, got {d}")
                points += [GridPoint("fixed", d, s, delays_lib.FixedDelay(d)) for s in horizons_for(d)]
        else:
            profile = parse_profile(name)
            points += [GridPoint(name, None, s, profile) for s in horizons_for(delays_lib.quantile(profile, 0.5))]
    for p in points:
        if p.s > horizon:
            raise ValueError(f"{p.profile_name} d={p.d}: the execute horizon s = max(d, 1) = {p.s} exceeds H={horizon} "
                             f"(the policy's chunk horizon); use smaller --delays")
    return points
