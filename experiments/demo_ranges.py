"""The README's demo table: one run's solve rates (Wilson 95 %) and seam jumps, with the range of each number
over several runs of `rtchunk demo` (different --seed).

    python experiments/demo_ranges.py runs/demo-seed0 runs/demo-seed1 runs/demo-seed2 --plot demo_seeds.png

The first run is the one shown; ``--plot`` also draws every run's solve rate (Wilson 95 % error bars) and
mean seam jump against d.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

NAMES = {"naive": "naive", "rtc": "RTC", "hard_mask": "hard masking", "trained_prefix": "training-time RTC",
         "bid": "BID", "temporal_ensembling": "temporal ensembling"}


def rows(run: Path) -> dict[tuple[str, int], dict]:
    with open(run / "report" / "results.csv") as f:
        return {(r["method"], int(r["d"])): r for r in csv.DictReader(f) if int(r["s"]) == max(int(r["d"]), 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+", help="demo output directories (--out-dir); the first is shown")
    p.add_argument("--plot", type=Path, default=None, help="also write this PNG")
    p.add_argument("--labels", nargs="+", default=None, help="one label per run (default: the directory names)")
    args = p.parse_args()
    if args.labels is not None and len(args.labels) != len(args.runs):
        p.error(f"--labels: {len(args.labels)} labels for {len(args.runs)} runs")
    runs = [rows(r) for r in args.runs]
    shown = runs[0]
    methods = list(dict.fromkeys(m for m, _ in shown))
    delays = sorted({d for _, d in shown})
    n = len(runs)
    print(f"| method | " + " | ".join(f"d = {d}" for d in delays) + " | seam jump d = 0 / 4 |")
    print("|---|" + "---|" * (len(delays) + 1))
    for m in methods:
        cells = []
        for d in delays:
            r = shown[(m, d)]
            values = [float(run[(m, d)]["solve_rate"]) for run in runs if (m, d) in run]
            span = f" ({min(values):.2f}–{max(values):.2f})" if n > 1 else ""
            cells.append(f"{float(r['solve_rate']):.2f} [{float(r['solve_rate_low']):.2f}, "
                         f"{float(r['solve_rate_high']):.2f}]{span}")
        seams = []
        for d in (delays[0], delays[-1]):
            values = [float(run[(m, d)]["seam_jump_mean"]) for run in runs if (m, d) in run]
            seams.append(f"{float(shown[(m, d)]['seam_jump_mean']):.2f}"
                         + (f" ({min(values):.2f}–{max(values):.2f})" if n > 1 else ""))
        print(f"| {NAMES.get(m, m)} | " + " | ".join(cells) + " | " + " / ".join(seams) + " |")
    if args.plot is not None:
        plot(runs, args.labels or [r.name for r in args.runs], methods, delays, args.plot)
        print(f"plot: {args.plot}")
    return 0


def plot(runs: list[dict], labels: list[str], methods: list[str], delays: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"naive": "tab:gray", "rtc": "tab:blue", "trained_prefix": "tab:green", "hard_mask": "tab:orange"}
    markers = "osD^v"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.5 / max(len(runs) * len(methods), 1)  # side by side within each d, so no point hides another
    for j, m in enumerate(methods):
        for i, (run, label) in enumerate(zip(runs, labels)):
            x = [d + (j * len(runs) + i - (len(runs) * len(methods) - 1) / 2) * width for d in delays]
            r = [run[(m, d)] for d in delays]
            y = [float(v["solve_rate"]) for v in r]
            err = [[a - float(v["solve_rate_low"]) for a, v in zip(y, r)],
                   [float(v["solve_rate_high"]) - a for a, v in zip(y, r)]]
            style = dict(color=colors.get(m, None), marker=markers[i % len(markers)], markersize=5, linewidth=1)
            left.errorbar(x, y, yerr=err, capsize=2, label=f"{NAMES.get(m, m)}, {label}", **style)
            right.plot(x, [float(v["seam_jump_mean"]) for v in r], **style)
    lowest = min(float(run[(m, d)]["solve_rate_low"]) for run in runs for m in methods for d in delays)
    left.set(xlabel="inference delay d (s = max(d, 1))", ylabel="solve rate (Wilson 95 %)",
             ylim=(max(0.0, lowest - 0.05) - 0.02, 1.02), xticks=delays)
    right.set(xlabel="inference delay d (s = max(d, 1))", ylabel="mean seam jump of the executed action",
              xticks=delays, ylim=(0, None))
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.legend(*left.get_legend_handles_labels(), loc="lower center", ncol=len(methods) * len(runs) // 2 or 1,
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
