#!/usr/bin/env bash
# Decode the test split with Adaptive Decay Sampling (the paper's decode command), several seeds, NPROC processes.
#   bash scripts/decode.sh CHECKPOINT [RESPACING] [extra sample_seq2seq.py flags...]
# Environment: NPROC (default 1), SEEDS (default 10), OUT_DIR (default generation_outputs), BATCH (16).
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR (see scripts/launch.sh).
set -euo pipefail
. "$(dirname "$0")/launch.sh"
if [ $# -lt 1 ]; then echo "usage: bash scripts/decode.sh CHECKPOINT [RESPACING] [flags...]" >&2; exit 2; fi
CHECKPOINT=$1; RESPACING=${2:-adp_20}; [ $# -gt 1 ] && shift 2 || shift 1
launch sample_seq2seq.py \
  --model_path "$CHECKPOINT" --batch_size "${BATCH:-16}" --seeds "${SEEDS:-10}" --split test \
  --out_dir "${OUT_DIR:-generation_outputs}" --decode_respacing "$RESPACING" "$@"
