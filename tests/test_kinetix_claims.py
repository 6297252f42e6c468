"""The claims table: a claim is reproduced only when every comparison's Wilson intervals are apart in the
claimed direction, not reproduced when any are apart the other way, and never supported by overlap."""

import pytest

from rtchunk.kinetix import claims
from rtchunk.kinetix.report import Rate

N = 1000


def _rates(table: dict) -> dict:
    """{(method, d, s): solved of N} -> the {(panel, method, d, s): Rate} that report.fixed_rates returns."""
    return {("lvl", m, d, s): Rate(solved, N) for (m, d, s), solved in table.items()}


def test_a_comparison_needs_intervals_apart():
    # 0.60 vs 0.50 at n = 1000: Wilson intervals [0.569, 0.630] and [0.469, 0.531], apart.
    rates = _rates({("rtc", 1, 1): 600, ("naive", 1, 1): 500, ("bid", 1, 1): 520})
    judge = lambda a, b, rel=">": claims.judge(claims.Comparison((a, 1, 1), (b, 1, 1), rel), rates, "lvl").result
    assert judge("rtc", "naive") == "holds"
    assert judge("naive", "rtc") == "reversed"
    assert judge("bid", "naive") == "overlap"  # 0.52 vs 0.50: intervals overlap
    assert judge("bid", "naive", "==") == "overlap" and judge("rtc", "naive", "==") == "reversed"
    assert claims.judge(claims.Comparison(("rtc", 2, 2), ("naive", 2, 2)), rates, "lvl").result == "missing"


def test_verdicts_never_count_overlap_as_support():
    o = lambda r: claims.Outcome(claims.Comparison(("a", 0, 1), ("b", 0, 1)), r, "")
    assert claims.verdict([o("holds"), o("holds")]) == "reproduced"
    assert claims.verdict([o("holds"), o("overlap")]) == "inconclusive"
    assert claims.verdict([o("holds"), o("reversed"), o("overlap")]) == "not reproduced"
    assert claims.verdict([o("overlap"), o("missing")]) == "inconclusive"
    assert claims.verdict([o("missing")]) == "not evaluated"


def test_a_trend_is_a_difference_of_differences_with_its_normal_interval():
    # gap at d = 4: 0.30 - 0.10 = 0.20; at d = 1: 0.90 - 0.88 = 0.02; difference 0.18.
    rates = _rates({("rtc", 4, 4): 300, ("naive", 4, 4): 100, ("rtc", 1, 1): 900, ("naive", 1, 1): 880})
    [claim] = [c for c in claims.paper_claims({"rtc", "naive"}, [1, 4], []) if "widens" in c.text]
    [outcome] = [claims.judge(c, rates, "lvl") for c in claim.comparisons]
    half = 1.959963984540054 * sum(p * (1 - p) / N for p in (0.3, 0.1, 0.9, 0.88)) ** 0.5
    assert outcome.result == "holds"
    assert f"+0.180 [{0.18 - half:+.3f}, {0.18 + half:+.3f}]" in outcome.detail


def test_only_the_claims_an_evaluation_can_judge_are_listed():
    texts = lambda *a: [c.text for c in claims.paper_claims(*a)]
    assert texts({"naive"}, [0, 1, 2], []) == []
    assert texts({"naive", "rtc"}, [0], []) == []  # no d >= 1
    both = texts({"naive", "rtc"}, [0, 1, 4], [1, 2, 7])
    assert any("RTC > naive" in t for t in both) and any("widens" in t for t in both)
    assert any("s shrinks (s = 1 against s = 7)" in t for t in both)
    full = claims.paper_claims(set(claims.NAMES), [0, 1, 2, 3, 4], [1, 2, 3])
    te = next(c for c in full if "temporal ensembling" in c.text)
    assert len(te.comparisons) == 5 * 5  # every other method, every d including 0
    tp = [c for c in full if "training-time" in c.text]
    assert [len(c.comparisons) for c in tp] == [3, 2] and tp[1].comparisons[0].relation == "=="


@pytest.mark.parametrize("rtc, verdict", [(700, "reproduced"), (520, "inconclusive"), (300, "not reproduced")])
def test_the_table_gives_the_verdict_and_the_numbers(rtc, verdict):
    rates = _rates({("rtc", 1, 1): rtc, ("naive", 1, 1): 500, ("rtc", 2, 2): 700, ("naive", 2, 2): 500})
    rates.update({("other", m, d, s): r for (_, m, d, s), r in rates.items()})
    [claim] = [c for c in claims.paper_claims({"rtc", "naive"}, [1, 2], []) if "RTC > naive" in c.text]
    table = claims.claims_table(rates, "lvl", [claim], levels=["lvl", "other"])
    row = table.splitlines()[2]
    assert f"**{verdict}**" in row
    per_level = {"reproduced": "2 / 0 / 0", "inconclusive": "0 / 0 / 2", "not reproduced": "0 / 2 / 0"}[verdict]
    assert f"| {per_level} |" in row
    assert f"d = 1: {rtc / N:.3f} [" in row and "vs 0.500 [" in row
