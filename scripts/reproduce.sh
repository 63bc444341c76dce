#!/usr/bin/env bash
# Speed/quality table of a base and a post-trained checkpoint: uniform and adp respacings, several step counts.
#   bash scripts/reproduce.sh BASE_CHECKPOINT POST_CHECKPOINT [OUT_DIR] [extra reproduce.py flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then echo "usage: bash scripts/reproduce.sh BASE_CHECKPOINT POST_CHECKPOINT [OUT_DIR] [flags...]" >&2; exit 2; fi
BASE=$1; POST=$2; OUT=${3:-docs/reproduce}; shift $(( $# >= 3 ? 3 : 2 ))
exec python scripts/reproduce.py --base "$BASE" --post "$POST" --out_dir "$OUT" \
  --steps "${STEPS:-all,100,50,20,10,4}" --seeds "${SEEDS:-10,11,12}" "$@"
