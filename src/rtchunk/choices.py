"""Picking one of a fixed set of names (methods, presets, levels, ...) with a "did you mean" for typos."""

from __future__ import annotations

import difflib
from typing import Iterable


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or "" when none is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_choice(parameter: str, value: str, choices: Iterable[str]) -> ValueError:
    """The one-line error for a name that is not among ``choices``: the closest match first, then all."""
    choices = list(choices)
    hint = did_you_mean(value, choices)
    return ValueError(f"{parameter}: unknown {value!r}{hint}; choose from {', '.join(choices)}")


def check_choice(parameter: str, value: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise unknown_choice(parameter, value, choices)
    return value
