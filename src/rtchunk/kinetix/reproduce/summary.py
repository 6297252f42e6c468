"""The reproduction's report: ``rtchunk.kinetix.report``'s plots and tables over every finished level, and
``summary.md`` around them (exclusions, command and seed, Wilson intervals, smoothness, diagnostics, experts)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from rtchunk.files import atomic_write_text, read_json
from rtchunk.kinetix import results
from rtchunk.kinetix.reproduce.config import STAGES, ReproduceConfig
from rtchunk.kinetix.reproduce.diagnose import DIAGNOSTIC_COLUMNS
from rtchunk.kinetix.reproduce.layout import excluded, level_dirs, report_dir, stage_record
from rtchunk.kinetix.reproduce.stages import EXPERT_COLUMNS

def _read_all(paths: Sequence[Path], columns=None) -> list[dict]:
    return [row for p in paths for row in results.read_rows(p, columns)]


def _fmt(value: str, digits: int = 3) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def horizon_table(rates, panel: str, d: int) -> str | None:
    """Rows: methods; columns: every s at delay d (solve rate [Wilson 95 %])."""
    from rtchunk.kinetix import report

    keys = [k for k in rates if k[0] == panel and k[2] == d]
    if not keys:
        return None
    ss = sorted({k[3] for k in keys})
    body = [[m] + [str(rates[(panel, m, d, s)]) if (panel, m, d, s) in rates else "" for s in ss]
            for m in report._method_order({k[1] for k in keys})]
    return report._table(["method"] + [f"s={s}" for s in ss], body)


def smoothness_table(rows: list[dict], levels: list[str]) -> str | None:
    """Rows: methods; columns: d at s = max(d, 1): mean seam jump (mean over levels) / max ||Δ²a|| (max over
    levels)."""
    from rtchunk.kinetix import report

    rows = [r for r in rows if r["profile"] == "fixed" and r["level"] in levels and int(r["s"]) == max(int(r["d"]), 1)]
    if not rows:
        return None
    ds = sorted({int(r["d"]) for r in rows})
    body = []
    for method in report._method_order({r["method"] for r in rows}):
        cells = []
        for d in ds:
            rs = [r for r in rows if r["method"] == method and int(r["d"]) == d]
            seams = [float(r["seam_jump_mean"]) for r in rs if r["seam_jump_mean"] != ""]
            dd = [float(r["max_ddelta_action"]) for r in rs if r["max_ddelta_action"] != ""]
            cells.append(f"{sum(seams) / len(seams):.3f} / {max(dd):.3f}" if seams and dd else "")
        body.append([method] + cells)
    return report._table(["method"] + [f"d={d}, s={max(d, 1)}" for d in ds], body)


def diagnostics_table(rows: list[dict]) -> str | None:
    from rtchunk.kinetix import report

    if not rows:
        return None
    points = sorted({(int(r["d"]), int(r["s"])) for r in rows if r["metric"] == "guidance_change"})
    body = []
    for level in sorted({r["level"] for r in rows}):
        for policy in dict.fromkeys(r["policy"] for r in rows if r["level"] == level):
            mine = [r for r in rows if r["level"] == level and r["policy"] == policy]
            spread = next((r for r in mine if r["metric"] == "chunk_spread"), None)
            for method in dict.fromkeys(r["method"] for r in mine if r["metric"] == "guidance_change"):
                cells = []
                for d, s in points:
                    r = next((r for r in mine if r["method"] == method and (int(r["d"]), int(r["s"])) == (d, s)), None)
                    cells.append("" if r is None else _fmt(r["mean"]))
                body.append([level, policy, _fmt(spread["mean"]) if spread else "", method] + cells)
    return report._table(["level", "policy", "chunk spread", "guidance change of"] + [f"d={d}, s={s}" for d, s in points],
                         body)


def expert_table(rows: list[dict]) -> str | None:
    if not rows:
        return None
    from rtchunk.kinetix import report

    body = [[r["level"], r["round"], r["seed"], _fmt(r["best_solve_rate"], 2), f"{int(r['best_env_steps']):,}",
             f"{int(r['first_env_steps_at_threshold']):,}" if r["first_env_steps_at_threshold"] else "never",
             _fmt(r["final_solve_rate"], 2), "yes" if r["reached_threshold"] == "True" else "no"] for r in rows]
    return report._table(["level", "round", "seed", "best solve rate", "at env step", "first at threshold",
                          "final solve rate", "in the mixture"], body)


def claims_section(rates, panel: str, levels: list[str], title: str) -> list[str]:
    """The papers' claims judged on ``panel`` (``rtchunk.kinetix.claims``), with per-level counts when pooled."""
    from rtchunk.kinetix import claims

    points = [k[1:] for k in rates if k[0] == panel]
    methods = {m for m, _, _ in points}
    delays = sorted({d for m, d, s in points if s == max(d, 1)})
    horizon_s = sorted({s for m, d, s in points if m == "rtc" and d == 1})
    found = claims.paper_claims(methods, delays, horizon_s)
    if not found:
        return []
    table = claims.claims_table(rates, panel, found, levels if len(levels) > 1 else [])
    return [f"## The papers' claims ({title})", "",
            "Reproduced: every comparison's intervals apart in the claimed direction; not reproduced: at least one "
            "apart the other way; inconclusive: otherwise (overlapping intervals never count as support).", "",
            table, ""]


def write_summary(config: ReproduceConfig, names: list[str], files: dict[str, Path], command: str) -> Path:
    """The report over every level with results: ``kinetix.report``'s plots and tables on all levels' rows,
    and summary.md around them."""
    from rtchunk.kinetix import report

    out = report_dir(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_info = read_json(Path(config.out_dir) / results.RUN_FILE, "run file")
    exclusions = {n: excluded(config.out_dir, n) for n in names if excluded(config.out_dir, n)}
    complete = [n for n in names if n not in exclusions and all(
        stage_record(config.out_dir, n, s) is not None for s in STAGES)]
    incomplete = [n for n in names if n not in exclusions and n not in complete]
    dirs = {n: level_dirs(config.out_dir, n) for n in names}

    expert_rows = _read_all([dirs[n].experts_csv for n in names if dirs[n].experts_csv.is_file()])
    results.write_rows(out / "experts.csv", expert_rows, EXPERT_COLUMNS)
    diag_rows = _read_all([dirs[n].diagnostics for n in complete])
    results.write_rows(out / "diagnostics.csv", diag_rows, DIAGNOSTIC_COLUMNS)
    eval_rows = _read_all([p for n in complete for p in results.iter_result_files(dirs[n].eval)], results.COLUMNS)
    results.write_rows(out / "results.csv", eval_rows, results.COLUMNS)

    parts = ["# Kinetix reproduction", ""]
    if exclusions:
        parts += ["**Levels excluded: too few experts reached the threshold.**", ""]
        parts += [f"- **{message}**" for message in exclusions.values()] + [""]
    if incomplete:
        parts += [f"Not finished yet: {', '.join(incomplete)}.", ""]
    parts += [f"- command: `{run_info.get('first_command') or command}`",
              f"- seed: {config.seed}; settings: `{Path(config.out_dir) / results.RUN_FILE}`",
              f"- levels: {', '.join(f'{n} ({files[n]})' for n in names)}",
              f"- experts: {config.experts.num_seeds} seeds x {config.experts.ppo.total_timesteps:,} steps per round, "
              f"threshold {config.threshold:.2f}, at least {config.min_experts} solving seeds "
              f"(up to {config.extra_seed_rounds} extra round(s)); data: {config.data.steps_per_level:,} transitions; "
              f"BC {config.bc.num_epochs} epochs" + _finetune_words(config) + (
                  f"; BID's weak policy: epoch {config.weak_epoch}" if config.uses_weak_policy else ""),
              f"- evaluation: {config.eval.num_envs} environments per point, first episode of each counted; solve "
              f"rates with Wilson 95 % intervals", ""]
    if eval_rows:
        report.write_report(out)
        rates = report.fixed_rates(eval_rows)
        panel = report.AVERAGE if len(complete) > 1 else complete[0]
        title = "pooled over " + ", ".join(complete) if len(complete) > 1 else complete[0]
        parts += ["![solve rate vs delay](solve_rate_vs_delay.png)",
                  "![solve rate vs execute horizon](solve_rate_vs_horizon.png)", "",
                  "Plots and per-level tables: [report.md](report.md); rows: [results.csv](results.csv).", ""]
        table = report.delay_table(rates, panel)
        if table:
            parts += [f"## Solve rate, s = max(d, 1) ({title})", "", table, ""]
        parts += claims_section(rates, panel, complete, title)
        if config.horizon_sweep_delay is not None:
            d1 = config.horizon_sweep_delay
            for p in ([panel] + (complete if len(complete) > 1 else [])):
                table = horizon_table(rates, p, d1)
                if table:
                    parts += [f"## Solve rate at d = {d1}, every s ({p})", "", table, ""]
        table = smoothness_table(eval_rows, complete)
        if table:
            parts += [f"## Mean seam jump / max ||Δ²a|| of executed actions, s = max(d, 1) ({title}: seam jumps "
                      f"averaged, ||Δ²a|| the largest)", "", table, ""]
            if len(complete) > 1:
                for n in complete:
                    parts += [f"### {n}", "", smoothness_table(eval_rows, [n]), ""]
    else:
        parts += ["No level has evaluation results.", ""]
    table = diagnostics_table(diag_rows)
    if table:
        parts += ["## Multimodality and guidance", "",
                  "Chunk spread: mean distance ||a - a'|| over the whole chunk between chunks sampled with different "
                  "noise for the same observation (observations from the data). Guidance change: ||guided chunk - "
                  "naive chunk|| from the same noise, given the naive chunk sampled s steps earlier (shifted by s) "
                  "as the previous chunk. [diagnostics.csv](diagnostics.csv)", "", table, ""]
    table = expert_table(expert_rows)
    if table:
        parts += ["## Experts (how far each seed got)", "", table, "", "[experts.csv](experts.csv)", ""]
    path = out / "summary.md"
    atomic_write_text(path, "\n".join(parts))
    return path


def _finetune_words(config: ReproduceConfig) -> str:
    if not config.fine_tunes:
        return " (no training-time-RTC fine-tune: trained_prefix is not evaluated)"
    init = config.finetune.init_epoch if config.finetune.init_epoch is not None else config.bc.num_epochs - 1
    return f", training-time RTC {config.finetune.num_epochs} epochs from epoch {init} (0-based)"
