"""The report of an eval run (``rtchunk report``): the papers' plots and a markdown table from its CSV rows.

* ``solve_rate_vs_delay.png``: solve rate against the (fixed) delay d with s = max(d, 1), one panel per
  level plus their average; shaded bands are Wilson 95 % intervals.
* ``solve_rate_vs_horizon.png``: solve rate against the execute horizon s at d = 1.
* ``report.md``: the averaged table (method x d, s = max(d, 1)), one table per level, and a table of the
  stochastic-delay rows (solve rate, p_violate, starvation, seam jumps).

Averages pool the levels' episodes (solved / trials over all levels, then a Wilson interval) and only
use configurations that every level of the run has.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from rtchunk import metrics
from rtchunk.files import atomic_write_text
from rtchunk.kinetix import results

AVERAGE = "average"
METHOD_ORDER = ("naive", "bid", "temporal_ensembling", "hard_mask", "rtc_linear", "rtc", "jacobian_free",
                "trained_prefix")


@dataclasses.dataclass(frozen=True)
class Rate:
    solved: int
    trials: int

    @property
    def rate(self) -> float:
        return self.solved / self.trials if self.trials else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return metrics.wilson_interval(self.solved, self.trials)

    def __str__(self) -> str:
        lo, hi = self.interval
        return f"{self.rate:.3f} [{lo:.3f}, {hi:.3f}]"


def load_rows(run: Path) -> list[dict]:
    files = results.iter_result_files(run)
    if not files:
        raise ValueError(f"no results*.csv in {run}; run `rtchunk eval --out {run}` first")
    rows = [r for f in files for r in results.read_rows(f, results.COLUMNS)]
    if not rows:
        raise ValueError(f"the results in {run} hold no rows yet")
    return rows


def _method_order(methods) -> list[str]:
    known = [m for m in METHOD_ORDER if m in methods]
    return known + sorted(set(methods) - set(known))


def fixed_rates(rows: list[dict]) -> dict[tuple[str, str, int, int], Rate]:
    """{(level, method, d, s): Rate} for fixed-delay rows, plus level 'average' (with two or more levels)
    for configurations every level has."""
    rates: dict[tuple[str, str, int, int], Rate] = {}
    for r in rows:
        if r["profile"] != "fixed":
            continue
        rates[(r["level"], r["method"], int(r["d"]), int(r["s"]))] = Rate(int(r["solved"]), int(r["num_envs"]))
    levels = sorted({k[0] for k in rates})
    by_config = defaultdict(list)
    for (level, method, d, s), rate in rates.items():
        by_config[(method, d, s)].append(rate)
    for (method, d, s), rs in by_config.items():
        if len(levels) > 1 and len(rs) == len(levels):
            rates[(AVERAGE, method, d, s)] = Rate(sum(r.solved for r in rs), sum(r.trials for r in rs))
    return rates


def _panels(rates) -> list[str]:
    levels = sorted({k[0] for k in rates} - {AVERAGE})
    return levels + ([AVERAGE] if any(k[0] == AVERAGE for k in rates) else [])


def plot(rates, path: Path, x_of, select, xlabel: str, title: str) -> Path | None:
    """One panel per level (+ average): solve rate against x for every method, with interval bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in _panels(rates) if any(select(k) and k[0] == p for k in rates)]
    if not panels:
        return None
    methods = _method_order({k[1] for k in rates})
    cols = min(4, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    # The legend goes below the panels, as many entries a row as fit the figure's width (about 1.8 inches an
    # entry), with room made for its rows: a single panel of six methods must not clip it.
    per_row = max(1, min(len(methods), 8, int(3.6 * cols / 1.8)))
    legend_in = 0.3 * math.ceil(len(methods) / per_row) + 0.15
    height = 2.9 * rows_n + legend_in
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, height), squeeze=False, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # Methods often tie (hard masking and RTC at d = H - s): each gets its own marker and dash, and later
    # ones are drawn thinner on top, so a line under another still shows.
    markers, dashes = "osD^vP*X", ["-", "--", "-.", ":"]
    for ax, panel in zip(axes.flat, panels):
        for i, method in enumerate(methods):
            points = sorted((x_of(k), r) for k, r in rates.items() if k[0] == panel and k[1] == method and select(k))
            if not points:
                continue
            x = np.array([p[0] for p in points])
            y = np.array([p[1].rate for p in points])
            lo, hi = np.array([p[1].interval for p in points]).T
            color = colors[i % len(colors)]
            ax.plot(x, y, marker=markers[i % len(markers)], ms=6 - 3 * i / max(1, len(methods) - 1),
                    linestyle=dashes[i % len(dashes)], lw=2.4 - 1.2 * i / max(1, len(methods) - 1), color=color,
                    label=method, zorder=2 + i)
            ax.fill_between(x, lo, hi, color=color, alpha=0.15, linewidth=0)
        ax.set_title(panel, fontweight="bold" if panel == AVERAGE else None)
        ax.set_xlabel(xlabel)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("solve rate")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=per_row, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, legend_in / height, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def delay_table(rates, panel: str) -> str | None:
    """Rows: methods; columns: d with s = max(d, 1)."""
    keys = [k for k in rates if k[0] == panel and k[3] == max(k[2], 1)]
    if not keys:
        return None
    ds = sorted({k[2] for k in keys})
    body = []
    for method in _method_order({k[1] for k in keys}):
        body.append([method] + [str(rates[(panel, method, d, max(d, 1))]) if (panel, method, d, max(d, 1)) in rates
                                 else "" for d in ds])
    return _table(["method"] + [f"d={d}, s={max(d, 1)}" for d in ds], body)


def stochastic_table(rows: list[dict]) -> str | None:
    rows = [r for r in rows if r["profile"] != "fixed"]
    if not rows:
        return None
    groups = defaultdict(list)
    for r in rows:
        groups[(r["profile"], r["method"], int(r["s"]))].append(r)
    body = []
    for (profile, method, s), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        rate = Rate(sum(int(r["solved"]) for r in rs), sum(int(r["num_envs"]) for r in rs))
        mean = lambda c: np.nanmean([float(r[c]) if r[c] != "" else math.nan for r in rs])  # noqa: E731
        body.append([f"`{profile}`", method, str(s), str(len(rs)), str(rate), f"{mean('d_p99'):.1f}",
                     f"{mean('p_violate'):.3f}", f"{mean('starvation_rate'):.4f}", f"{mean('seam_jump_mean'):.3f}",
                     f"{mean('seam_jump_p99'):.3f}"])
    return _table(["profile", "method", "s", "levels", "solve rate [95% CI]", "d p99", "p_violate", "starvation",
                   "seam jump mean", "seam jump p99"], body)


def write_report(run: Path, out: Path | None = None, d_for_horizon_plot: int = 1) -> Path:
    """Plots and report.md for the eval run in ``run``, written to ``out`` (default: ``run``); returns report.md."""
    run = Path(run)
    out = Path(out or run)
    rows = load_rows(run)
    rates = fixed_rates(rows)
    made = []  # (alt text, path)
    p = plot(rates, out / "solve_rate_vs_delay.png", x_of=lambda k: k[2], select=lambda k: k[3] == max(k[2], 1),
             xlabel="inference delay d (s = max(d, 1))", title="Solve rate vs inference delay")
    made += [("solve rate vs delay", p)] if p else []
    d1 = d_for_horizon_plot
    p = plot(rates, out / "solve_rate_vs_horizon.png", x_of=lambda k: k[3], select=lambda k: k[2] == d1,
             xlabel=f"execute horizon s (d = {d1})", title=f"Solve rate vs execute horizon at d = {d1}")
    made += [("solve rate vs execute horizon", p)] if p else []

    policies = sorted({r["policy"] for r in rows})
    parts = [f"# Kinetix evaluation: {run}", ""]
    if "random-init" in policies:
        parts += ["**Warning: these rows come from a randomly initialised policy; they only show the pipeline runs.**", ""]
    envs = sorted({r["num_envs"] for r in rows})
    parts += [f"{len(rows)} configurations, {', '.join(envs)} environments each (first episode counted), "
              f"solve rates with Wilson 95 % intervals. Policies: {', '.join(policies)}.", ""]
    parts += [f"![{alt}]({path.relative_to(out) if path.is_relative_to(out) else path})" for alt, path in made] + [""]
    table = delay_table(rates, AVERAGE)
    if table:
        parts += ["## Average over levels", "", table, ""]
    for level in sorted({k[0] for k in rates} - {AVERAGE}):
        table = delay_table(rates, level)
        if table:
            parts += [f"## {level}", "", table, ""]
    table = stochastic_table(rows)
    if table:
        parts += ["## Stochastic delays (pooled over levels; other columns averaged)", "", table, ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(parts))
    return path
