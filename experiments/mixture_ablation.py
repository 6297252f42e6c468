"""Ablation (issue 13, item 3): does the number of experts in the data mixture make the methods separate?

From one expert run (``rtchunk train-expert``), for each mixture size k: record data from the first k solving
experts (``generate-data --max-experts k``), train the same flow policy on it (``train-policy``), measure how
multimodal it is (``rtchunk.diagnostics``: chunk spread over observations from its data, and how much RTC's
guidance changes its chunks), and evaluate naive / RTC / hard masking at d = 0..4 with s = max(d, 1)
(``rtchunk eval``). Every step is a project command, so every step resumes: rerun the same command after an
interruption. Results: ``<out>/k<k>/eval/results.csv``, ``<out>/diagnostics.csv``, ``<out>/summary.md``.

    python experiments/mixture_ablation.py --expert-dir runs/experts --level-dir levels/ --out runs/mixture --mixtures 1 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ablation_common import diagnostics, eval_delays, finish, rtchunk


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--expert-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("runs/mixture"))
    p.add_argument("--level", default="h17_unicycle")
    p.add_argument("--level-dir", type=Path, default=None, help="where the expert run's level file is")
    p.add_argument("--mixtures", type=int, nargs="+", default=[1, 4])
    p.add_argument("--data-steps", type=int, default=100_000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--eval-envs", type=int, default=1024)
    p.add_argument("--methods", nargs="+", default=["naive", "rtc", "hard_mask"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for k in args.mixtures:
        if k < 1:
            p.error(f"--mixtures: every mixture size must be >= 1, got {k}")
    rows = []
    for k in args.mixtures:
        root = args.out / f"k{k}"
        rtchunk("generate-data", "--preset", "cpu", "--expert-dir", str(args.expert_dir), "--out-dir", str(root / "data"),
                "--steps-per-level", str(args.data_steps), "--max-experts", str(k), "--seed", str(args.seed))
        rtchunk("train-policy", "--preset", "cpu", "--data-dir", str(root / "data"), "--out-dir", str(root / "policy"),
                "--num-epochs", str(args.epochs), "--batch-size", "256", "--warmup-steps", "200",
                "--quick-eval-envs", "0", "--model.channel-dim", "128", "--model.channel-hidden-dim", "256",
                "--model.token-hidden-dim", "32", "--model.num-layers", "2", "--seed", str(args.seed))
        level_args = ["--levels", args.level] + ([] if args.level_dir is None else ["--level-dir", str(args.level_dir)])
        eval_delays(level_args, root / "eval", args.methods, args.eval_envs, root / "policy", args.seed)
        rows.append({"experts": k, **diagnostics(root / "policy", root / "data", args.level, 512, args.seed, s=3, d=2)})
        print(rows[-1], flush=True)
    finish(args.out, rows, "experts", [(str(k), args.out / f"k{k}" / "eval" / "results.csv") for k in args.mixtures],
           args.methods)
    return 0


if __name__ == "__main__":
    sys.exit(main())
