#!/usr/bin/env bash
# One host, several GPUs: one worker per GPU, each pinned with CUDA_VISIBLE_DEVICES, all on one
# results folder. Every worker walks the experiments in its own order and claims whole programs
# (its runs' lock files); what another worker holds it leaves, and moves on. So with 3 GPUs the
# three paper experiments train side by side, one per GPU: on a GPU the rows of a program are
# nearly free, and whole programs are what is worth spreading.
#
#   examples/multi_gpu/run.sh                      # all GPUs nvidia-smi lists
#   GPUS="0 2" SEEDS=5 examples/multi_gpu/run.sh   # a chosen set, more seeds
#
# A worker that dies leaves its runs to the next start of this script (they resume).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-results}"
SEEDS="${SEEDS:-3}"
EXPERIMENTS=(${EXPERIMENTS:-cartpole guidance quantum})
GPUS=(${GPUS:-$(nvidia-smi --query-gpu=index --format=csv,noheader)})
mkdir -p logs
for i in "${!GPUS[@]}"; do
    # Rotate the order so that the workers start on different experiments.
    order=("${EXPERIMENTS[@]:i % ${#EXPERIMENTS[@]}}" "${EXPERIMENTS[@]:0:i % ${#EXPERIMENTS[@]}}")
    (
        for experiment in "${order[@]}"; do
            CUDA_VISIBLE_DEVICES="${GPUS[$i]}" .venv/bin/bptt-run "$experiment" --seeds "$SEEDS" --out "$OUT"
        done
    ) >"logs/gpu${GPUS[$i]}.log" 2>&1 &
done
wait
.venv/bin/bptt-plot "$OUT"
