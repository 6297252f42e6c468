"""The ``rtchunk`` commands, one module per command (``rtchunk train-policy`` is ``train_policy.py``).

Each module is thin: its ``main`` takes one frozen config (parsed by tyro in ``rtchunk.cli``), calls the
library and says where the results went; ``PRESETS`` (where there are any) maps preset names to configs.
Progress goes to stderr through ``log``; a rejected input is a ``ValueError`` that ``rtchunk.cli`` turns
into one line on stderr.
"""

from __future__ import annotations

import sys


def log(message: str) -> None:
    """What a command has to say while it works (stderr, so that stdout holds only its results)."""
    print(message, file=sys.stderr, flush=True)
