#!/usr/bin/env bash
# The sampler study of docs/samplers/: the demo's base and post-trained models and the same two trained
# with self-conditioning, each decoded by DDPM, DDIM and DPM-Solver++ on uniform and adp grids at
# 2, 4, 10, 20 and all network evaluations (3 seeds, the first 200 test pairs).
#
#   bash scripts/sampler_study.sh                 # outputs in sampler_study_outputs/
#   OUT=/tmp/study bash scripts/sampler_study.sh
#
# Each part is reused when it is already there (the demo folders, finished decodes).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-sampler_study_outputs}
TRAIN_STEPS=${TRAIN_STEPS:-2000}
POST_STEPS=${POST_STEPS:-500}
export TRAIN_STEPS POST_STEPS
for variant in plain self_cond; do
  flags=""; [ "$variant" = self_cond ] && flags=--self_cond
  if [ ! -f "$OUT/$variant/results.txt" ]; then
    rm -rf "$OUT/$variant"
    OUT="$OUT/$variant" TRAIN_FLAGS="$flags" bash "$ROOT/scripts/demo.sh"
  fi
done
ckpt() { printf "%s/%s/%s/ema_0.995_%06d.pt" "$OUT" "$1" "$2" "$3"; }
TOTAL=$((TRAIN_STEPS + POST_STEPS))
python "$ROOT/scripts/reproduce.py" --base "$(ckpt plain base "$TRAIN_STEPS")" --post "$(ckpt plain post "$TOTAL")" \
  --model "self-cond=$(ckpt self_cond base "$TRAIN_STEPS")" --model "self-cond-post=$(ckpt self_cond post "$TOTAL")" \
  --samplers ddpm,ddim,dpm++ --steps "${STEPS:-all,20,10,4,2}" --seeds "${SEEDS:-10,11,12}" \
  --max_examples "${TEST_EXAMPLES:-200}" --batch_size 200 --out_dir "${STUDY_OUT:-$OUT/study}"
