#!/usr/bin/env bash
# Distance Penalty post-training: the paper's seed command (4 GPUs, torchrun).
#   bash scripts/post_train.sh DATA_DIR CHECKPOINT [extra run_train.py flags...]
# CHECKPOINT is a modelNNNNNN.pt or ema_<rate>_NNNNNN.pt (ours or DiffuSeq's); training continues its step count.
# Environment: NPROC (default 4), SEQ_LEN (128), VOCAB (bert), STEPS (320000).
# DiffuSeq's --bsz is per process; here --bsz is the global batch, so the seed command's
# "--bsz 100 --microbatch 100" on 4 GPUs is --bsz 400 --microbatch 100 (override with BSZ).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then echo "usage: bash scripts/post_train.sh DATA_DIR CHECKPOINT [flags...]" >&2; exit 2; fi
DATA_DIR=$1; CHECKPOINT=$2; shift 2
NPROC=${NPROC:-4}
NAME=$(basename "$DATA_DIR")
exec torchrun --standalone --nproc_per_node="$NPROC" run_train.py \
  --diff_steps 2000 --microbatch 100 --lr 0.0001 --learning_steps "${STEPS:-320000}" --save_interval 2500 \
  --seed 109 --noise_schedule sqrt --hidden_dim 128 --bsz "${BSZ:-$((100 * NPROC))}" --dataset "$NAME" \
  --data_dir "$DATA_DIR" --vocab "${VOCAB:-bert}" --seq_len "${SEQ_LEN:-128}" \
  --simi_penalty l2_noise_random --simi_lambda -2 --simi_step 10 --simi_noise 0.05 \
  --resume_checkpoint "$CHECKPOINT" --schedule_sampler lossaware --notes "${NAME}_post" "$@"
