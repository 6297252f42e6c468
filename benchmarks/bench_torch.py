"""Per-chunk wall time of every PyTorch sampling method relative to Naive, on the CPU, side by side.

    python benchmarks/bench_torch.py                 # batch 1 and 64, default model (the papers' Kinetix policy)
    python benchmarks/bench_torch.py --batches 1 --repeats 50 --threads 1

The methods are timed in interleaved rounds (one call of each per round, in a new random order each
round) and each is summarised by its median, so a slow phase of a shared machine hits them all alike; ratios are what to compare across
machines. BID (N candidates) is timed in the first ``bid_repeats`` rounds only. Targets (issue 2, the same as for the JAX core): RTC <= 2.5x, TrainedPrefix <= 1.1x,
JacobianFree <= 1.2x Naive.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from typing import Literal

import torch
import tyro
from tqdm import tqdm

from rtchunk.model import ModelConfig
from rtchunk.torch import BID, RTC, FlowPolicy, HardMask, JacobianFree, Naive, TrainedPrefix, sample_chunk

TARGETS = {"rtc": 2.5, "trained prefix": 1.1, "jacobian-free": 1.2}


@dataclasses.dataclass(frozen=True)
class BenchTorchConfig:
    batches: tuple[int, ...] = (1, 64)
    obs_dim: int = 16
    action_dim: int = 4
    inference_delay: int = 2
    execute_horizon: int = 3
    num_steps: int = 5
    bid_samples: int = 32
    """N of BID; the weak-policy variant uses top_k = 3 (the RTC paper's setting)."""
    repeats: int = 20
    """Timed rounds per batch size (after one warm-up round)."""
    bid_repeats: int = 3
    """BID (tens of Naive's time) is timed in the first rounds only, to keep the run short."""
    threads: int = 0
    """torch.set_num_threads; 0 keeps PyTorch's default."""
    clock: Literal["wall", "cpu"] = "wall"
    """``cpu`` (process CPU time) is steadier on a machine shared with other jobs; use it with threads=1."""
    seed: int = 0


def _methods(config: BenchTorchConfig, weak_velocity_fn, batch: int):
    generator = torch.Generator().manual_seed(config.seed)
    # Candidates vmapped together up to ~64 rows: all at once at batch 1, one at a time at batch 64
    # (faster on a CPU: larger vmapped activations outgrow the caches).
    bid = dict(generator=generator, num_samples=config.bid_samples, candidates_per_call=max(1, 64 // batch))
    return {
        "naive": Naive(),
        "rtc": RTC(),
        "rtc (inference_mode)": RTC(),
        "hard mask": HardMask(),
        "jacobian-free": JacobianFree(),
        "trained prefix": TrainedPrefix(),
        f"bid N={config.bid_samples}": BID(**bid),
        f"bid N={config.bid_samples} + weak": BID(**bid, weak_velocity_fn=weak_velocity_fn, top_k=3),
    }


def bench_batch(config: BenchTorchConfig, strong: FlowPolicy, weak: FlowPolicy, batch: int) -> dict[str, float]:
    """Median milliseconds per chunk of each method at one batch size."""
    g = torch.Generator().manual_seed(config.seed + batch)
    horizon = strong.config.horizon
    obs = torch.randn(batch, config.obs_dim, generator=g)
    noise = torch.randn(batch, horizon, config.action_dim, generator=g)
    prev = torch.randn(batch, horizon, config.action_dim, generator=g)
    with torch.no_grad():
        weak_fn = weak.velocity_fn(obs)
    methods = _methods(config, weak_fn, batch)

    def one_chunk(name, method):
        # The observation is encoded inside, as a policy would per chunk. Under inference_mode the VJP of
        # the guided methods is torch.func.vjp instead of plain autograd.
        with torch.inference_mode() if "inference_mode" in name else torch.no_grad():
            velocity_fn = strong.velocity_fn(obs)
            return sample_chunk(velocity_fn, noise, method, prev_chunk=prev, inference_delay=config.inference_delay,
                                execute_horizon=config.execute_horizon, num_steps=config.num_steps)

    for name, method in methods.items():  # warm-up: allocator, lazy init, vmap plumbing
        one_chunk(name, method)
    clock = time.perf_counter if config.clock == "wall" else time.process_time
    times: dict[str, list[float]] = {name: [] for name in methods}
    order = random.Random(config.seed + batch)
    for round_ in tqdm(range(config.repeats), desc=f"batch {batch}", leave=False):
        # A new order every round: whatever runs first or after BID's large allocations is not always the same method.
        for name, method in order.sample(list(methods.items()), len(methods)):
            if isinstance(method, BID) and round_ >= config.bid_repeats:
                continue
            start = clock()
            one_chunk(name, method)
            times[name].append(clock() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main(config: BenchTorchConfig = BenchTorchConfig()) -> int:
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = ModelConfig()
    strong = FlowPolicy(config.obs_dim, config.action_dim, model).eval()
    weak = FlowPolicy(config.obs_dim, config.action_dim, model).eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; default model (H={model.horizon}, "
          f"C={model.channel_dim}, {model.num_layers} layers), d={config.inference_delay}, s={config.execute_horizon}, "
          f"{config.num_steps} flow steps, median of {config.repeats} interleaved rounds, {config.clock} clock")
    results = {batch: bench_batch(config, strong, weak, batch) for batch in config.batches}
    header = f"{'method':<22}" + "".join(f"{f'B={b} ms':>12}{'x naive':>9}" for b in config.batches) + "  target"
    print(header)
    print("-" * len(header))
    for name in results[config.batches[0]]:
        row = f"{name:<22}"
        for batch in config.batches:
            ms = results[batch][name]
            row += f"{ms:>12.2f}{ms / results[batch]['naive']:>8.2f}x"
        if name in TARGETS:
            met = all(results[b][name] / results[b]["naive"] <= TARGETS[name] for b in config.batches)
            row += f"  <= {TARGETS[name]}x {'met' if met else 'NOT met'}"
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(tyro.cli(BenchTorchConfig)))
