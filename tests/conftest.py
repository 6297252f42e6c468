"""Test-wide setup: both CPU cores as JAX devices, and a persistent compilation cache."""

import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Loading cached CPU executables logs a harmless C++ warning per entry about tuning flags
# (+prefer-no-scatter); level 3 keeps the output readable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import pytest  # noqa: E402

from cache_dirs import jax_cache  # noqa: E402

# Subprocesses started by tests (the policy server) read the same cache through the environment.
os.environ["RTCHUNK_JAX_CACHE"] = str(jax_cache())
jax.config.update("jax_compilation_cache_dir", os.environ["RTCHUNK_JAX_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# The slowest modules run first: with `-n 2 --dist loadfile` the other worker takes the rest meanwhile, instead
# of the whole suite waiting at the end for the one worker that drew a long module late (longest first).
SLOWEST_FIRST = ("test_kinetix_reproduce.py", "test_cli.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_sessionfinish(session, exitstatus):
    # "No tests collected" (exit code 5) is not a failure for this project's CI.
    if exitstatus == 5:
        session.exitstatus = 0


@pytest.fixture(scope="session")
def reproduce_smoke_run(tmp_path_factory):
    """`rtchunk reproduce --preset smoke`, interrupted after its data stage and resumed (tests/reproduce_run.py);
    tests/test_kinetix_reproduce.py checks it."""
    from reproduce_run import interrupted_then_resumed

    return interrupted_then_resumed(tmp_path_factory.mktemp("reproduce"))

