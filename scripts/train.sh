#!/usr/bin/env bash
# Train a DiffuSeq model with the paper's settings (QQP command of DiffuSeq), on NPROC processes.
#   bash scripts/train.sh DATA_DIR [DATASET_NAME] [extra run_train.py flags...]
# Environment: NPROC (processes; default: the number of GPUs, or 1), BSZ (batch per process, default 2048),
# MICROBATCH (default 64), STEPS (default 50000), SEQ_LEN (default 128), VOCAB (default bert).
# Paths are relative to where you call it from.
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR (see scripts/launch.sh).
set -euo pipefail
. "$(dirname "$0")/launch.sh"
if [ $# -lt 1 ]; then echo "usage: bash scripts/train.sh DATA_DIR [DATASET_NAME] [flags...]" >&2; exit 2; fi
DATA_DIR=$1; shift
NAME=${1:-$(basename "$DATA_DIR")}; [ $# -gt 0 ] && shift
GPUS=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
NPROC=${NPROC:-$(( GPUS > 0 ? GPUS : 1 ))}
launch run_train.py \
  --diff_steps 2000 --lr 0.0001 --learning_steps "${STEPS:-50000}" --save_interval 10000 --seed 102 \
  --noise_schedule sqrt --hidden_dim 128 --bsz "${BSZ:-2048}" --microbatch "${MICROBATCH:-64}" \
  --dataset "$NAME" --data_dir "$DATA_DIR" --vocab "${VOCAB:-bert}" --seq_len "${SEQ_LEN:-128}" \
  --schedule_sampler lossaware --notes "$NAME" "$@"
