#!/usr/bin/env bash
# Distance Penalty post-training: the paper's seed command (Bridge-Gap's, 4 GPUs).
#   bash scripts/post_train.sh DATA_DIR CHECKPOINT [extra run_train.py flags...]
# CHECKPOINT is a modelNNNNNN.pt or ema_<rate>_NNNNNN.pt (ours or DiffuSeq's): the model size, T, the
# noise schedule, seq_len and the vocabulary come from its training_args.json; training continues its
# step count with a constant learning rate (as Bridge-Gap). Checkpoints go to OUT (default:
# <checkpoint folder>_post), so the same command started again continues where it stopped.
# Environment: POST_STEPS (post-training steps after the checkpoint's step), or TOTAL_STEPS (the step to
# stop at, counted from the base run's start: the seed command's --learning_steps, default 320000);
# NPROC (processes; default: the number of GPUs, or 1), BSZ (batch per process, default 100), OUT.
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR (see scripts/launch.sh).
set -euo pipefail
. "$(dirname "$0")/launch.sh"
if [ $# -lt 2 ]; then echo "usage: bash scripts/post_train.sh DATA_DIR CHECKPOINT [flags...]" >&2; exit 2; fi
DATA_DIR=$1; CHECKPOINT=$2; shift 2
if [ -n "${STEPS:-}" ]; then
  echo "error: STEPS is ambiguous here; set POST_STEPS (steps after the checkpoint) or TOTAL_STEPS (the step to stop at)" >&2
  exit 2
fi
START=$(basename "$CHECKPOINT" .pt | grep -oE '[0-9]{6}$' || true)
if [ -n "${POST_STEPS:-}" ]; then
  if [ -z "$START" ]; then echo "error: $CHECKPOINT is not named modelNNNNNN.pt or ema_<rate>_NNNNNN.pt" >&2; exit 2; fi
  TOTAL_STEPS=$((10#$START + POST_STEPS))
fi
TOTAL_STEPS=${TOTAL_STEPS:-320000}
echo "post-training from step $((10#${START:-0})) to step $TOTAL_STEPS" >&2
GPUS=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
NPROC=${NPROC:-$(( GPUS > 0 ? GPUS : 1 ))}
NAME=$(basename "$DATA_DIR")
launch run_train.py \
  --microbatch 100 --lr 0.0001 --learning_steps "$TOTAL_STEPS" --save_interval 2500 --seed 109 \
  --bsz "${BSZ:-100}" --dataset "$NAME" --data_dir "$DATA_DIR" \
  --simi_penalty l2_noise_random --simi_lambda -2 --simi_step 10 --simi_noise 0.05 \
  --resume_checkpoint "$CHECKPOINT" --checkpoint_path "${OUT:-$(dirname "$CHECKPOINT")_post}" \
  --schedule_sampler lossaware --notes "${NAME}_post" "$@"
