#!/usr/bin/env bash
# Speed/quality table of a base and a post-trained checkpoint: uniform and adp respacings, several step counts.
#   bash scripts/reproduce.sh BASE_CHECKPOINT POST_CHECKPOINT [OUT_DIR] [extra reproduce.py flags...]
# OUT_DIR defaults to reproduce_outputs (docs/samplers holds the committed study, made by scripts/sampler_study.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -lt 2 ]; then echo "usage: bash scripts/reproduce.sh BASE_CHECKPOINT POST_CHECKPOINT [OUT_DIR] [flags...]" >&2; exit 2; fi
BASE=$1; POST=$2; shift 2
OUT=reproduce_outputs
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUT=$1; shift; fi
exec python "$ROOT/scripts/reproduce.py" --base "$BASE" --post "$POST" --out_dir "$OUT" \
  --steps "${STEPS:-all,100,50,20,10,4}" --seeds "${SEEDS:-10,11,12}" "$@"
