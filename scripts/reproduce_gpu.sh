#!/usr/bin/env bash
# The papers' Kinetix protocol (`rtchunk reproduce --preset paper`) on two levels, sized for about 10 minutes
# on one large GPU (an H100/H200), and the same command line at toy size on a CPU (--toy) to check it.
#
#   scripts/reproduce_gpu.sh [--toy] [OUT_DIR] [more rtchunk reproduce flags ...]
#
# The paper preset as it is, except the PPO budget: 8 seeds x 65M steps x 2 levels (1.04 billion environment
# steps) does not fit 10 minutes, so each seed gets PPO_STEPS (default 6.55M: 100 updates of 512 x 128 steps).
# Everything else is the papers': 8 seeds, threshold 0.65, 1M transitions per level, the 256x4 MLP-Mixer for
# 32 epochs, training-time RTC for 8 epochs from epoch 24, 2048 environments per point, d = 0..4 with
# s = max(d, 1) and every s at d = 1, BID with N = 32, K = 3 and an early checkpoint as its weak policy.
# The 10-minute sizing is an estimate, not a measurement (no GPU was lent while this was written): after the
# first run, the per-stage seconds in <OUT_DIR>/levels/<level>/done/*.json say where to trim or add.
#
# Environment variables: LEVELS (default "h17_unicycle hard_lunar_lander"; both ship with kinetix-env),
# LEVEL_DIR (your copies of the papers' level files, recommended), PPO_STEPS, RTCHUNK (the command, default
# `rtchunk`). Rerunning the same command resumes; a finished run prints its report.
set -euo pipefail

toy=0
if [[ "${1:-}" == "--toy" ]]; then
  toy=1
  shift
fi
out=${1:-$([[ $toy == 1 ]] && echo runs/reproduce-gpu-toy || echo runs/reproduce-gpu)}
[[ $# -gt 0 ]] && shift
read -r -a levels <<< "${LEVELS:-h17_unicycle hard_lunar_lander}"
read -r -a rtchunk <<< "${RTCHUNK:-rtchunk}"

args=(reproduce --preset paper --out-dir "$out" --levels "${levels[@]}"
      --experts.ppo.total-timesteps "${PPO_STEPS:-6553600}" --experts.checkpoint-every 20)
if [[ -n "${LEVEL_DIR:-}" ]]; then
  args+=(--level-dir "$LEVEL_DIR")
fi

if [[ $toy == 1 ]]; then
  # The same protocol and flags with every size shrunk (minutes on a laptop CPU; numbers meaningless).
  export JAX_PLATFORMS=cpu
  args+=(--shrink --max-timesteps 48 --threshold 0 --min-experts 2
         --experts.num-seeds 2 --experts.ppo.num-envs 16 --experts.ppo.num-steps 48
         --experts.ppo.num-minibatches 4 --experts.ppo.total-timesteps 1536 --experts.checkpoint-every 1
         --experts.num-eval-envs 0
         --data.steps-per-level 768 --data.num-envs 16
         --bc.model.channel-dim 16 --bc.model.channel-hidden-dim 32 --bc.model.token-hidden-dim 8
         --bc.model.num-layers 1 --bc.batch-size 16 --bc.num-epochs 2 --bc.warmup-steps 0
         --bc.max-steps-per-epoch 4
         --finetune.init-epoch 0 --finetune.num-epochs 1 --finetune.batch-size 16 --finetune.warmup-steps 0
         --finetune.max-steps-per-epoch 4
         --weak-epoch 0
         --eval.num-envs 8 --eval.fast-compile --eval.method-settings.bid-samples 2
         --eval.method-settings.bid-top-k 1
         --diagnostics.num-obs 16 --diagnostics.num-samples 2)
fi

start=$SECONDS
"${rtchunk[@]}" "${args[@]}" "$@"
echo "reproduce_gpu.sh: $(( SECONDS - start )) s ($([[ $toy == 1 ]] && echo toy size, CPU || echo paper preset))" >&2
