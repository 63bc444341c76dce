#!/usr/bin/env bash
# The sampler study of docs/samplers/: the demo's base and post-trained models, the same two trained with
# self-conditioning and with DiffuSeq-v2's flags (VARIANTS, default "plain self_cond v2"; v2_self_cond: both),
# each decoded by DDPM, DDIM, DPM-Solver++ and DiffuSeq-v2's DPM-Solver on uniform and adp grids (and the
# solver's own time-uniform grid) at 2, 4, 10, 20 and all network evaluations (3 seeds, the first 200 test pairs).
#
#   bash scripts/sampler_study.sh                 # outputs in sampler_study_outputs/
#   OUT=/tmp/study VARIANTS="plain v2" SAMPLERS=ddpm,dpm-solver-v2 bash scripts/sampler_study.sh
#
# Each part is reused when it is already there (the demo folders, finished decodes).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-sampler_study_outputs}
TRAIN_STEPS=${TRAIN_STEPS:-2000}
POST_STEPS=${POST_STEPS:-500}
VARIANTS=${VARIANTS:-plain self_cond v2}
export TRAIN_STEPS POST_STEPS
TOTAL=$((TRAIN_STEPS + POST_STEPS))
ckpt() { printf "%s/%s/%s/ema_0.995_%06d.pt" "$OUT" "$1" "$2" "$3"; }
for variant in $VARIANTS; do  # every name checked before anything runs
  case $variant in
    plain|self_cond|v2|v2_self_cond) ;;
    *) echo "VARIANTS: unknown $variant (plain, self_cond, v2, v2_self_cond)" >&2; exit 2 ;;
  esac
done
MODELS=()
for variant in $VARIANTS; do
  case $variant in
    plain) flags=""; names=(base post-trained) ;;
    self_cond) flags=--self_cond; names=(self-cond self-cond-post) ;;
    v2) flags="--learned_mean_embed True --denoise True --denoise_rate 0.5"; names=(v2 v2-post) ;;
    v2_self_cond) flags="--learned_mean_embed True --denoise True --denoise_rate 0.5 --self_cond"
                  names=(v2-self-cond v2-self-cond-post) ;;
  esac
  if [ ! -f "$OUT/$variant/results.txt" ]; then
    rm -rf "${OUT:?}/$variant"
    OUT="$OUT/$variant" TRAIN_FLAGS="$flags" V2=0 bash "$ROOT/scripts/demo.sh"
  fi
  MODELS+=(--model "${names[0]}=$(ckpt "$variant" base "$TRAIN_STEPS")" --model "${names[1]}=$(ckpt "$variant" post "$TOTAL")")
done
python "$ROOT/scripts/reproduce.py" "${MODELS[@]}" \
  --samplers "${SAMPLERS:-ddpm,ddim,dpm++,dpm-solver-v2}" --grids "${GRIDS:-uniform,adp,time-uniform}" \
  --steps "${STEPS:-all,20,10,4,2}" --seeds "${SEEDS:-10,11,12}" \
  --max_examples "${TEST_EXAMPLES:-200}" --batch_size 200 --out_dir "${STUDY_OUT:-$OUT/study}"
