#!/usr/bin/env bash
# Decode a split with Adaptive Decay Sampling (the paper's decode command), several seeds, NPROC processes.
#   bash scripts/decode.sh CHECKPOINT [RESPACING] [extra sample_seq2seq.py flags...]
# Environment: NPROC (default 1), SEEDS (default 10), OUT_DIR (default generation_outputs), BATCH (16).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then echo "usage: bash scripts/decode.sh CHECKPOINT [RESPACING] [flags...]" >&2; exit 2; fi
CHECKPOINT=$1; RESPACING=${2:-adp_20}; [ $# -gt 1 ] && shift 2 || shift 1
exec torchrun --standalone --nproc_per_node="${NPROC:-1}" sample_seq2seq.py \
  --model_path "$CHECKPOINT" --batch_size "${BATCH:-16}" --seeds "${SEEDS:-10}" --split test \
  --out_dir "${OUT_DIR:-generation_outputs}" --decode_respacing "$RESPACING" "$@"
