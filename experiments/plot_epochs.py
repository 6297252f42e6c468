"""Plot the epochs ablation: solve rate against epochs trained, one panel per run (e.g. the last weights and
their running average), a line per method and delay, Wilson 95 % intervals as error bars.

    python experiments/plot_epochs.py --runs "last weights=runs/epochs" "EMA 0.999=runs/epochs_ema" --out epochs.png
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

STYLE = {"naive": ("tab:gray", "o", "-"), "rtc": ("tab:blue", "s", "--")}
DELAYS = (0, 2, 4)
SHADE = {0: 1.0, 2: 0.7, 4: 0.4}


def read(run: Path) -> dict[tuple[int, str, int], dict]:
    points = {}
    for path in sorted(run.glob("epoch_*/results.csv")):
        epochs = int(path.parent.name.split("_")[1]) + 1
        with open(path) as f:
            for r in csv.DictReader(f):
                points[(epochs, r["method"], int(r["d"]))] = r
    return points


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, help="LABEL=DIR: an epochs_ablation.py --out directory")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    runs = []
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep or not Path(path).is_dir():
            p.error(f"--runs: expected LABEL=DIR with an existing DIR, got {spec!r}")
        runs.append((label, read(Path(path))))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4.2), sharey=True, squeeze=False)
    for ax, (label, points) in zip(axes[0], runs):
        for method, (color, marker, dash) in STYLE.items():
            for d in DELAYS:
                keys = sorted(k for k in points if k[1] == method and k[2] == d)
                if not keys:
                    continue
                x = [k[0] for k in keys]
                y = [float(points[k]["solve_rate"]) for k in keys]
                low = [y_ - float(points[k]["solve_rate_low"]) for y_, k in zip(y, keys)]
                high = [float(points[k]["solve_rate_high"]) - y_ for y_, k in zip(y, keys)]
                ax.errorbar([v + (0.06 if method == "rtc" else -0.06) for v in x], y, yerr=[low, high], color=color,
                            marker=marker, linestyle=dash, alpha=SHADE[d], capsize=2, label=f"{method}, d = {d}")
        ax.set_title(label)
        ax.set_xlabel("epochs of behaviour cloning")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("solve rate (Wilson 95 %)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
