"""The papers' Kinetix claims, judged on an evaluation's solve rates (the claims table of ``rtchunk reproduce``).

Each claim is a list of comparisons between two (method, d, s) points, judged on their Wilson 95 % intervals:
``holds`` when the intervals are apart in the claimed direction, ``reversed`` when they are apart the other
way, ``overlap`` otherwise. A claim is *reproduced* only when every comparison holds, *not reproduced* when
any is reversed, and *inconclusive* otherwise: overlapping intervals never count as support, not even for a
claimed equality (which can only fail, or be consistent). Trend claims ("the gap widens with d") compare two
differences of solve rates; their interval is the normal approximation, the sum of the four variances.

The points use s = max(d, 1), except the claim about s, which compares the shortest and the longest s at
d = 1 (the papers' Figure 5, bottom left).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Mapping

from rtchunk.kinetix.report import Rate
from rtchunk.metrics import Z95

Point = tuple[str, int, int]  # (method, d, s)

NAMES = {"naive": "naive", "rtc": "RTC", "bid": "BID", "hard_mask": "hard masking",
         "temporal_ensembling": "temporal ensembling", "trained_prefix": "training-time RTC"}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """``a`` is above ``b`` (relation ">"), or equal to it ("=="); a trend compares a[0] - a[1] with
    b[0] - b[1] (relation ">")."""

    a: Point | tuple[Point, Point]
    b: Point | tuple[Point, Point]
    relation: Literal[">", "=="] = ">"
    label: str = ""


@dataclasses.dataclass(frozen=True)
class Claim:
    text: str
    comparisons: tuple[Comparison, ...]


@dataclasses.dataclass(frozen=True)
class Outcome:
    comparison: Comparison
    result: Literal["holds", "reversed", "overlap", "missing"]
    detail: str


def _s(d: int) -> int:
    return max(d, 1)


def paper_claims(methods: set[str], delays: list[int], horizon_s: list[int]) -> list[Claim]:
    """The papers' claims that an evaluation of ``methods`` at ``delays`` (s = max(d, 1)) and, at d = 1, at the
    execute horizons ``horizon_s`` can judge."""
    positive = [d for d in delays if d >= 1]
    claims = []

    def above(a: str, b: str, ds) -> tuple[Comparison, ...]:
        return tuple(Comparison((a, d, _s(d)), (b, d, _s(d)), label=f"d = {d}") for d in ds)

    def trend(a: str, b: str, d_big: int, d_small: int, label: str) -> Comparison:
        # (a - b) at d_big minus (a - b) at d_small > 0: the gap is larger at d_big
        return Comparison(((a, d_big, _s(d_big)), (b, d_big, _s(d_big))),
                          ((a, d_small, _s(d_small)), (b, d_small, _s(d_small))), label=label)

    def with_trend(a: str, b: str, text: str, trend_text: str, later_larger: bool) -> None:
        # "a > b at every d >= 1", then how the gap moves between the smallest and the largest d: trend_text
        # names the d where it should be larger first.
        claims.append(Claim(text, above(a, b, positive)))
        if len(positive) > 1:
            first, second = (positive[-1], positive[0]) if later_larger else (positive[0], positive[-1])
            claims.append(Claim(trend_text.format(first, second),
                                (trend(a, b, first, second, f"gap at d = {first} - gap at d = {second}"),)))

    if {"rtc", "naive"} <= methods and positive:
        with_trend("rtc", "naive", "RTC > naive at every d >= 1",
                   "the RTC - naive gap widens with d (d = {} against d = {})", later_larger=True)
    if {"bid", "naive"} <= methods and positive:
        claims.append(Claim("BID > naive at every d >= 1", above("bid", "naive", positive)))
    if {"rtc", "bid"} <= methods and positive:
        claims.append(Claim("RTC >= BID at every d >= 1", above("rtc", "bid", positive)))
    if "temporal_ensembling" in methods and len(methods) > 1:
        others = sorted(methods - {"temporal_ensembling"})
        claims.append(Claim("temporal ensembling is the worst method at every d, even d = 0", tuple(
            Comparison((m, d, _s(d)), ("temporal_ensembling", d, _s(d)), label=f"{NAMES.get(m, m)}, d = {d}")
            for d in delays for m in others)))
    if {"rtc", "hard_mask"} <= methods and positive:
        with_trend("rtc", "hard_mask", "soft masking (RTC) >= hard masking at every d >= 1",
                   "soft masking's advantage is largest at small d (d = {} against d = {})", later_larger=False)
    if "rtc" in methods and len(horizon_s) > 1:
        lo, hi = min(horizon_s), max(horizon_s)
        claims.append(Claim(f"at d = 1, RTC improves as s shrinks (s = {lo} against s = {hi})",
                            (Comparison(("rtc", 1, lo), ("rtc", 1, hi), label=f"s = {lo} vs s = {hi}"),)))
    if {"trained_prefix", "rtc"} <= methods:
        big = [d for d in delays if d >= 2]
        small = [d for d in delays if d <= 1]
        if big:
            claims.append(Claim("training-time RTC > inference-time RTC at d >= 2", above("trained_prefix", "rtc", big)))
        if small:
            claims.append(Claim("training-time RTC ~ inference-time RTC at d <= 1", tuple(
                Comparison(("trained_prefix", d, _s(d)), ("rtc", d, _s(d)), "==", f"d = {d}") for d in small)))
    return claims


def _rate(rates: Mapping, panel: str, point: Point) -> Rate | None:
    method, d, s = point
    return rates.get((panel, method, d, s))


def judge(comparison: Comparison, rates: Mapping, panel: str) -> Outcome:
    """One comparison on ``rates`` ({(panel, method, d, s): Rate}, ``report.fixed_rates``)."""
    c = comparison
    if isinstance(c.a[0], tuple):  # a trend: (a0 - a1) - (b0 - b1)
        got = [_rate(rates, panel, p) for p in (*c.a, *c.b)]
        if any(r is None for r in got):
            return Outcome(c, "missing", "not evaluated")
        p = [r.rate for r in got]
        diff = (p[0] - p[1]) - (p[2] - p[3])
        half = Z95 * math.sqrt(sum(r.rate * (1 - r.rate) / r.trials for r in got))
        result = "holds" if diff - half > 0 else "reversed" if diff + half < 0 else "overlap"
        return Outcome(c, result, f"{p[0] - p[1]:+.3f} vs {p[2] - p[3]:+.3f}: {diff:+.3f} [{diff - half:+.3f}, "
                                  f"{diff + half:+.3f}]")
    a, b = _rate(rates, panel, c.a), _rate(rates, panel, c.b)
    if a is None or b is None:
        return Outcome(c, "missing", "not evaluated")
    (a_lo, a_hi), (b_lo, b_hi) = a.interval, b.interval
    apart = a_lo > b_hi or b_lo > a_hi
    if c.relation == "==":
        result = "reversed" if apart else "overlap"
    else:
        result = "holds" if a_lo > b_hi else "reversed" if b_lo > a_hi else "overlap"
    return Outcome(c, result, f"{a} vs {b}")


def verdict(outcomes: list[Outcome]) -> str:
    judged = [o for o in outcomes if o.result != "missing"]
    if not judged:
        return "not evaluated"
    if any(o.result == "reversed" for o in judged):
        return "not reproduced"
    if all(o.result == "holds" for o in judged):
        return "reproduced"
    return "inconclusive"


def claims_table(rates: Mapping, panel: str, claims: list[Claim], levels: list[str] = ()) -> str:
    """A markdown table: one row per claim with its verdict on ``panel`` and every comparison's numbers; with
    ``levels``, also on how many of them the claim is reproduced / not reproduced."""
    header = ["claim (the papers)", "verdict", "numbers (a vs b, Wilson 95 %)"]
    if levels:
        header.insert(2, "per level: reproduced / not / inconclusive")
    rows = []
    for claim in claims:
        outcomes = [judge(c, rates, panel) for c in claim.comparisons]
        numbers = "; ".join(f"{o.comparison.label}: {o.detail} ({o.result})" for o in outcomes)
        row = [claim.text, f"**{verdict(outcomes)}**", numbers]
        if levels:
            per = [verdict([judge(c, rates, lv) for c in claim.comparisons]) for lv in levels]
            row.insert(2, f"{per.count('reproduced')} / {per.count('not reproduced')} / {per.count('inconclusive')}")
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
