"""Where work runs: sharding a leading (levels or seeds x levels) axis over this process's devices, and
splitting levels between the processes of a multi-host run (``jax.distributed``).

Across hosts every process takes its own share of the levels and works on them alone (no collectives),
writing its levels' outputs; one process per host, started with the same command line plus
``--coordinator HOST:PORT --num-processes P --process-id I``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, TypeVar

import numpy as np

# JAX is imported by the functions, not here: a command's config (DistributedConfig) is parsed and checked
# before JAX starts.

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Multi-process settings; leave coordinator empty for a single process."""

    coordinator: str = ""
    """HOST:PORT of process 0, e.g. 10.0.0.1:8476 (or 127.0.0.1:8476 for processes on one machine)."""
    num_processes: int = 1
    process_id: int = 0

    def __post_init__(self):
        if self.num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {self.num_processes}")
        if not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"process_id must be in [0, {self.num_processes - 1}], got {self.process_id}")
        if self.num_processes > 1 and not self.coordinator:
            raise ValueError("num_processes > 1 needs coordinator HOST:PORT")


def initialize(config: DistributedConfig) -> None:
    """Join the multi-process runtime (a no-op for a single process)."""
    if config.num_processes > 1:
        import jax

        jax.distributed.initialize(config.coordinator, config.num_processes, config.process_id,
                                   local_device_ids=None)


def my_share(items: Sequence[T]) -> list[T]:
    """This process's items: every P-th one, starting at its index (all of them in a single process)."""
    import jax

    return list(items)[jax.process_index() :: jax.process_count()]


def level_sharding(n: int):
    """Shard a leading axis of size n over this process's devices when it divides evenly, else one device."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

    devices = jax.local_devices()
    if n % len(devices) == 0 and len(devices) > 1:
        return NamedSharding(Mesh(np.array(devices), ("levels",)), PartitionSpec("levels"))
    return SingleDeviceSharding(devices[0])


def batch_sharding(num_levels: int, batch_size: int):
    """For a stacked [levels, ...] training step whose level axis cannot be split evenly over this process's
    devices (one level on two devices): the sharding of one level's batch [B, ...] over all of them, so every
    device computes a share of the samples (XLA then sums the gradients across devices). None when the level
    axis shards (``level_sharding``), on one device, or when the batch does not divide evenly."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.local_devices()
    if len(devices) < 2 or num_levels % len(devices) == 0 or batch_size % len(devices):
        return None
    return NamedSharding(Mesh(np.array(devices), ("batch",)), PartitionSpec("batch"))


def process_subdir() -> str:
    """'' for a single process, else 'process_I_of_P': where one process of a multi-host run writes."""
    import jax

    if jax.process_count() == 1:
        return ""
    return f"process_{jax.process_index()}_of_{jax.process_count()}"


def precompile(calls: Sequence[tuple], workers: int = 2) -> int:
    """Compile several jitted calls ``(fn, args)`` side by side; returns how many were compiled.

    XLA compiles one program on one core, so the programs a stage needs one after another (a training
    step and its evaluation, one rollout per method) otherwise leave the other cores idle for the tens
    of seconds the physics takes to compile. The executables land in JAX's persistent compilation cache,
    from which the real calls load them; without that cache this would compile everything twice, so it
    then does nothing.
    """
    import jax

    if not jax.config.jax_compilation_cache_dir or len(calls) < 2:
        return 0
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda call: call[0].lower(*call[1]).compile(), calls))
    return len(calls)
