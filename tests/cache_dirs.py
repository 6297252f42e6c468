"""Where the test suite keeps what it builds once and reuses: the JAX compilation cache and the openpi-client
environment. Both live in the user's cache directory, not the checkout, so a fresh clone (CI) reuses what an
earlier run on the same machine built; $RTCHUNK_TEST_CACHE moves them (an empty directory: a cold run)."""

import os
from pathlib import Path


def root() -> Path:
    if os.environ.get("RTCHUNK_TEST_CACHE"):
        return Path(os.environ["RTCHUNK_TEST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rtchunk" / "tests"


def jax_cache() -> Path:
    """$RTCHUNK_JAX_CACHE, else <root>/jax."""
    return Path(os.environ.get("RTCHUNK_JAX_CACHE") or root() / "jax")


def openpi_client_venv() -> Path:
    return root() / "venvs" / "openpi-client"
