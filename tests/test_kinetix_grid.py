"""Delay profiles from their command-line specs, and the (profile, d, s) grid of a sweep."""

import pytest

from rtchunk import delays
from rtchunk.kinetix import grid

H = 8


def test_profile_specs():
    assert grid.parse_profile("fixed:3") == delays.FixedDelay(3)
    assert grid.parse_profile("mixture:1=0.5,2=0.5,spike=6@0.05,cap=4") == delays.MixtureDelay(
        (1, 2), (0.5, 0.5), spike_delay=6, spike_prob=0.05, tail_cap=4)
    assert grid.parse_profile("empirical:0.03,0.05,period=0.02") == delays.EmpiricalDelay((0.03, 0.05), 0.02)
    for bad in ("gauss:1", "mixture:1=0.5", "mixture:1=0.5,2=0.5,spike=6", "fixed:"):
        with pytest.raises(ValueError, match="bad delay profile"):
            grid.parse_profile(bad)
    points = grid.grid(H, ("fixed",), (0, 4))
    assert [(p.d, p.s) for p in points] == [(0, s) for s in range(1, 9)] + [(4, 4)]


def test_stochastic_profiles_take_the_horizons_around_their_median():
    points = grid.grid(H, ("mixture:1=0.3,3=0.7",), ())
    assert [(p.profile_name, p.d, p.s) for p in points] == [("mixture:1=0.3,3=0.7", None, s) for s in range(3, 6)]
    assert [p.s for p in grid.grid(H, ("fixed", "fixed:2"), (1,), execute_horizons=(2, 5))] == [2, 5, 2, 5]


def test_execute_horizons_and_delays_must_fit_the_chunk():
    with pytest.raises(ValueError, match=r"execute_horizons must be in \[1, H=8\]"):
        grid.grid(H, ("fixed",), (1,), execute_horizons=(9,))
    with pytest.raises(ValueError, match="delays must be >= 0"):
        grid.grid(H, ("fixed",), (-1,))
    with pytest.raises(ValueError, match="exceeds H=8"):
        grid.grid(H, ("fixed",), (9,), shortest_horizon_only=True)
