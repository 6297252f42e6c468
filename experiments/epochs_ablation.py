"""Ablation (issue 13, item 3): how far does the policy's training (epochs) decide what delay does to it?

From one finished level of `rtchunk demo` or `rtchunk reproduce` (its BC run keeps every epoch's checkpoint),
evaluate chosen epochs' checkpoints with naive and RTC at d = 0..4, s = max(d, 1) (``rtchunk eval``, which
resumes), and measure each one's multimodality (chunk spread, RTC's guidance change). The data, the model
and the seed are the same for every row: only the number of epochs trained differs. Results:
``<out>/epoch_XXX/results.csv``, ``<out>/diagnostics.csv``, ``<out>/summary.md``.

    python experiments/epochs_ablation.py --level-root runs/demo/levels/h17_unicycle --out runs/epochs --epochs 4 6 8 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ablation_common import diagnostics, eval_delays, finish


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--level-root", type=Path, required=True, help="<run>/levels/<level> of a demo or reproduce run")
    p.add_argument("--out", type=Path, default=Path("runs/epochs"))
    p.add_argument("--level", default="h17_unicycle")
    p.add_argument("--level-dir", type=Path, default=None, help="where the run's level file is (default: kinetix-env)")
    p.add_argument("--epochs", type=int, nargs="+", default=[4, 6, 8, 10], help="epochs trained (1-based)")
    p.add_argument("--eval-envs", type=int, default=256)
    p.add_argument("--methods", nargs="+", default=["naive", "rtc"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    policy_dir = args.level_root / "policy" / args.level
    for e in args.epochs:
        if not (policy_dir / f"epoch_{e - 1:03d}").is_dir():
            p.error(f"--epochs: no checkpoint after {e} epochs in {policy_dir} (epoch_{e - 1:03d})")
    rows = []
    level_args = ["--levels", args.level] + ([] if args.level_dir is None else ["--level-dir", str(args.level_dir)])
    for e in args.epochs:
        checkpoint = policy_dir / f"epoch_{e - 1:03d}"
        eval_delays(level_args, args.out / checkpoint.name, args.methods, args.eval_envs, checkpoint, args.seed)
        rows.append({"epochs": e, **diagnostics(checkpoint, args.level_root / "data", args.level, 512, args.seed,
                                                s=3, d=2)})
        print(rows[-1], flush=True)
    finish(args.out, rows, "epochs", [(str(e), args.out / f"epoch_{e - 1:03d}" / "results.csv") for e in args.epochs],
           args.methods)
    return 0


if __name__ == "__main__":
    sys.exit(main())
