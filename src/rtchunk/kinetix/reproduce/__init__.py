"""The papers' whole Kinetix protocol over a list of levels (``rtchunk reproduce``), resumable per stage and level.

For every level, in stages: the experts of every level first (so the expert table, and which levels are
excluded, are known early), then one level at a time through the other five (so each level's results are
complete, and in the report, before the next starts):

1. ``experts``: ``experts.num_seeds`` PPO seeds (``rtchunk.kinetix.expert``). Seeds whose best checkpoint
   reaches ``threshold`` join the data's mixture. With fewer than ``min_experts`` of them, up to
   ``extra_seed_rounds`` more runs of as many new seeds follow; a level that still has too few is
   excluded, loudly, in the log and in the report (never a silent mixture of one expert).
2. ``data``: a mixture of the solving experts, a new expert per episode (``collect.record_datasets``).
3. ``policy``: behaviour cloning (``bc.train_policy``); every epoch is kept, and ``weak_epoch``'s
   checkpoint is BID's weak policy (the papers: an early checkpoint).
4. ``finetune``: training-time RTC, fine-tuned from the BC run's epoch ``finetune.init_epoch``.
5. ``eval``: the simulated-delay sweep (``sweep.run``) at d in ``eval.delays`` with s = max(d, 1), then at
   d = ``horizon_sweep_delay`` with every s (1 .. H - d); both sweeps write one results CSV per level.
6. ``diagnostics``: for the BC, weak and fine-tuned policies, on observations from the level's data:
   how multimodal the chunks are (``rtchunk.diagnostics.chunk_spread``) and how much RTC's guidance (and,
   for the fine-tuned model, the trained prefix) changes the chunk (``guidance_change``), given the naive
   chunk sampled s steps earlier in the same episode, shifted by s, as the previous chunk.

Then the report, per level and pooled over levels: ``rtchunk.kinetix.report``'s plots and tables on all
levels' rows, plus ``summary.md`` (Wilson intervals at d = 0..4 and at d = 1 for every s, seam jumps and max
||Δ²a||, the diagnostics, the expert table, exclusions, the command and seed), rewritten after every level.

Resuming: every stage function resumes by itself (checkpoints, finished CSV rows); on top, a stage that
finished for a level leaves ``levels/<level>/done/<stage>.json`` and is not called again. ``run.json``
holds the settings (all but the level list), which a resumed run must share. A finished run, run again,
only reads its report back.

Layout::

    <out>/run.json, invocations.txt
    <out>/levels/<level>/experts[_round_R]/      train-expert runs (round 0, then extra seeds)
    <out>/levels/<level>/experts.csv             how far each seed got
    <out>/levels/<level>/data/<level>/           the dataset
    <out>/levels/<level>/policy/<level>/epoch_XXX, policy_rtc/<level>/epoch_XXX
    <out>/levels/<level>/eval/results.csv, diagnostics.csv, done/<stage>.json
    <out>/report/summary.md, report.md, solve_rate_vs_delay.png, solve_rate_vs_horizon.png,
                 results.csv, experts.csv, diagnostics.csv

Modules: ``config`` (the settings), ``layout`` (the directories), ``stages`` (one function per stage),
``diagnose`` (the diagnostics stage), ``summary`` (the report), ``protocol`` (``plan`` and ``run``).
"""

from rtchunk.kinetix.reproduce.config import (PAPER_METHODS, PER_LEVEL, STAGES, DataSettings, DiagnosticsSettings,
                                              ReproduceConfig, resume_key)
from rtchunk.kinetix.reproduce.layout import LevelDirs, excluded, level_dirs, report_dir, stage_record
from rtchunk.kinetix.reproduce.protocol import LEVEL_STAGES, Plan, plan, run
from rtchunk.kinetix.reproduce.stages import run_diagnostics, run_experts, run_finetune, seed_rows

__all__ = ["PAPER_METHODS", "PER_LEVEL", "STAGES", "LEVEL_STAGES", "DataSettings", "DiagnosticsSettings",
           "ReproduceConfig", "resume_key", "LevelDirs", "excluded", "level_dirs", "report_dir", "stage_record",
           "Plan", "plan", "run", "run_diagnostics", "run_experts", "run_finetune", "seed_rows"]
