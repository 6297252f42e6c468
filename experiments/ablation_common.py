"""What the ablation scripts share: running a project command, a policy's multimodality figures, and the
solve-rate table of their summaries."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path


def rtchunk(*args: str) -> None:
    cmd = [sys.executable, "-m", "rtchunk.cli", *args]
    print("+ rtchunk " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def diagnostics(policy_path: Path, data_dir: Path, level: str, n: int, seed: int, s: int, d: int) -> dict:
    """Mean chunk spread over ``n`` observations of the data, and RTC's mean guidance change at (d, s)
    (``rtchunk reproduce``'s diagnostics stage, ``kinetix.reproduce.diagnose``). ``policy_path``: a policy
    directory or one checkpoint."""
    import jax
    import numpy as np

    from rtchunk.kinetix import dataset, policy_store
    from rtchunk.kinetix.reproduce.diagnose import measure_policy, observation_pairs
    from rtchunk.methods import RTC

    policy, _ = policy_store.load_policy(policy_store.find_checkpoint(policy_path, level))
    data, _ = dataset.load(data_dir / level)
    env, t = observation_pairs(data.done, n, s, np.random.default_rng(seed))
    figures = {(metric, dd): np.asarray(values).mean() for metric, _, dd, _, values in measure_policy(
        policy, data.obs, env, t, [(d, s)], [("rtc", RTC())], jax.random.key(seed), num_samples=8, num_steps=5)}
    return {"chunk_spread": float(figures[("chunk_spread", "")]),
            "rtc_guidance_change": float(figures[("guidance_change", d)]), "observations": n}


def eval_delays(level_args: list[str], out: Path, methods: list[str], num_envs: int, policy: Path, seed: int) -> None:
    """``rtchunk eval`` of one policy at d = 0..4 with s = max(d, 1) on the shrunk level (it resumes)."""
    rtchunk("eval", *level_args, "--out", str(out), "--methods", *methods, "--delays", "0", "1", "2", "3", "4",
            "--shortest-horizon-only", "--num-envs", str(num_envs), "--policy-dir", str(policy), "--shrink",
            "--seed", str(seed))


def finish(out: Path, rows: list[dict], label: str, runs: list[tuple[str, Path]], methods: list[str]) -> None:
    """Write ``diagnostics.csv`` and ``summary.md`` (the solve-rate table) under ``out`` and print the table."""
    write_csv(out / "diagnostics.csv", rows)
    lines = solve_table(label, runs, methods)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def solve_table(label: str, runs: list[tuple[str, Path]], methods: list[str], delays=range(5)) -> list[str]:
    """Markdown rows: one per (run, method), solve rate [Wilson 95 %] at each d (s = max(d, 1)), read from
    each run's ``results.csv``."""
    lines = [f"| {label} | method | " + " | ".join(f"d = {d}" for d in delays) + " |",
             "|---|---|" + "---|" * len(delays)]
    for name, results in runs:
        with open(results) as f:
            res = list(csv.DictReader(f))
        for m in methods:
            cells = []
            for d in delays:
                r = next((r for r in res if r["method"] == m and int(r["d"]) == d), None)
                cells.append("-" if r is None else f"{float(r['solve_rate']):.3f} [{float(r['solve_rate_low']):.3f}, "
                                                   f"{float(r['solve_rate_high']):.3f}]")
            lines.append(f"| {name} | {m} | " + " | ".join(cells) + " |")
    return lines
