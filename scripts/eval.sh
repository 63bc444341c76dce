#!/usr/bin/env bash
# Evaluate a folder of per-seed outputs (BLEU, ROUGE-L, dist-1, length; diversity or MBR across seeds).
#   bash scripts/eval.sh OUTPUT_FOLDER [--mbr] [--json OUT.json] [...]
# OUTPUT_FOLDER is a decode folder (<out_dir>/<checkpoint folder>/<checkpoint file>.samples/) or an output
# root such as generation_outputs, whose decode folders are found and evaluated in turn.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -lt 1 ]; then echo "usage: bash scripts/eval.sh OUTPUT_FOLDER [flags...]" >&2; exit 2; fi
FOLDER=$1; shift
exec python "$ROOT/scripts/eval_seq2seq.py" --folder "$FOLDER" "$@"
