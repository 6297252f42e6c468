"""Ablation (issue 13): why is training-time RTC below inference-time RTC at d >= 2 here?

From one finished level of `rtchunk demo` or `rtchunk reproduce`, fine-tune the level's BC policy again with
training-time RTC under other settings, one factor at a time — the distribution of training delays (the papers'
exp weights give d = 4 about 1 % of the samples; uniform gives it 20 %) and the number of fine-tune epochs (from
an earlier BC epoch, so BC + fine-tune epochs stay the run's) — then evaluate each with ``trained_prefix`` at
d = 0..4, s = max(d, 1) (``rtchunk eval``, which resumes). Same data, model, BC run and seed for every row.
Results: ``<out>/<variant>/policy`` and ``<out>/<variant>/eval/results.csv``, ``<out>/summary.md``.

    python experiments/finetune_ablation.py --level-root runs/demo/levels/h17_unicycle --out runs/finetune \
        --variants exp:2 uniform:2 exp:4 uniform:4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ablation_common import finish, rtchunk


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--level-root", type=Path, required=True, help="<run>/levels/<level> of a demo or reproduce run")
    p.add_argument("--out", type=Path, default=Path("runs/finetune"))
    p.add_argument("--level", default="h17_unicycle")
    p.add_argument("--level-dir", type=Path, default=None, help="where the run's level file is (default: kinetix-env)")
    p.add_argument("--variants", nargs="+", default=["exp:2", "uniform:2", "exp:4", "uniform:4"],
                   help="DISTRIBUTION:EPOCHS, each fine-tuned from BC epoch (BC epochs - EPOCHS)")
    p.add_argument("--eval-envs", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    run = json.loads((args.level_root.parent.parent / "run.json").read_text())["config"]
    finetune, bc_epochs = run["finetune"], run["bc"]["num_epochs"]
    model = run["bc"]["model"]
    variants = []
    for v in args.variants:
        dist, _, epochs = v.partition(":")
        if dist not in ("exp", "uniform") or not epochs.isdigit() or not 1 <= int(epochs) < bc_epochs:
            p.error(f"--variants: {v!r} must be DISTRIBUTION:EPOCHS with exp or uniform and 1 <= EPOCHS < {bc_epochs}")
        variants.append((dist, int(epochs)))
    level_args = ["--levels", args.level] + ([] if args.level_dir is None else ["--level-dir", str(args.level_dir)])
    model_args = [f"--model.{k.replace('_', '-')}={v}" for k, v in model.items()]
    runs = []
    for dist, epochs in variants:
        name = f"{dist}_{epochs}epochs"
        out = args.out / name
        rtchunk("train-policy", "--data-dir", str(args.level_root / "data"), "--out-dir", str(out / "policy"),
                "--levels", args.level, *model_args, "--batch-size", str(finetune["batch_size"]),
                "--num-epochs", str(epochs), "--warmup-steps", str(finetune["warmup_steps"]),
                "--ema-decay", str(finetune["ema_decay"]), "--simulated-delay", str(finetune["simulated_delay"]),
                "--delay-distribution", dist, "--init-from", str(args.level_root / "policy"),
                "--init-epoch", str(bc_epochs - epochs - 1), "--seed", str(args.seed + 1), "--quick-eval-envs", "0")
        rtchunk("eval", *level_args, "--out", str(out / "eval"), "--methods", "trained_prefix",
                "--delays", "0", "1", "2", "3", "4", "--shortest-horizon-only", "--num-envs", str(args.eval_envs),
                "--policy-dir", str(args.level_root / "policy"), "--trained-prefix-policy-dir", str(out / "policy"),
                "--shrink", "--seed", str(args.seed))
        runs.append((name, out / "eval" / "results.csv"))
    rows = [{"variant": n, "distribution": d, "epochs": e} for (n, _), (d, e) in zip(runs, variants)]
    finish(args.out, rows, "fine-tune", runs, ["trained_prefix"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
