#!/usr/bin/env bash
# The whole method on the embedded WordNet data, on a CPU, in about 12 minutes on 2 idle cores:
#   1. train a small DiffuSeq model,
#   2. post-train it with the Distance Penalty (l2_noise_random, lambda -2),
#   3. train a DiffuSeq-v2 model (--learned_mean_embed --denoise) for half the steps (V2=0 leaves it out),
#   4. decode and score the test split with adp_20, a uniform 20-step respacing and all T steps, and the
#      v2 model with adp_20 and v2's DPM-Solver at 10 steps,
#   5. print one table.
#
#   bash scripts/demo.sh
#
# Make it larger with environment variables, e.g. on GPUs:
#   NPROC=4 TRAIN_STEPS=50000 POST_STEPS=10000 LAYERS=12 HIDDEN=768 HEADS=12 FFN=3072 SEQ_LEN=128 \
#   DIFF_STEPS=2000 BSZ=1024 DATA_DIR=datasets/QQP VOCAB=bert bash scripts/demo.sh
# TRAIN_FLAGS adds training flags to every model, e.g. TRAIN_FLAGS=--self_cond (self-conditioning).
# V2_STEPS (default TRAIN_STEPS / 2) and V2_FLAGS (default DiffuSeq-v2's train.sh) set the v2 model.
# PRECISION (training) and DTYPE (decoding) default to bf16 where the CPU has native bf16 dot products
# (avx512_bf16 or amx_bf16) and no GPU is used; on the embedded task bf16 gives the BLEU of fp32
# within the seed spread (README, "Benchmarks"). PRECISION=fp32 DTYPE=fp32 runs everything in fp32.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

DATA_DIR=${DATA_DIR:-$ROOT/datasets/wordnet_reverse}
OUT=${OUT:-demo_outputs/$(basename "$DATA_DIR")_$(date +%Y%m%d-%H%M%S)}
NPROC=${NPROC:-1}
TRAIN_STEPS=${TRAIN_STEPS:-2000}
POST_STEPS=${POST_STEPS:-500}
DIFF_STEPS=${DIFF_STEPS:-1000}
SEQ_LEN=${SEQ_LEN:-32}
BSZ=${BSZ:-64}
LR=${LR:-0.001}
LAYERS=${LAYERS:-3}
HIDDEN=${HIDDEN:-128}
HEADS=${HEADS:-4}
FFN=${FFN:-512}
HIDDEN_DIM=${HIDDEN_DIM:-64}
VOCAB=${VOCAB:-train}
VOCAB_SIZE=${VOCAB_SIZE:-4000}
TEST_EXAMPLES=${TEST_EXAMPLES:-200}
SEEDS=${SEEDS:-10,11,12}  # decoding seeds: the table gives BLEU as mean ± sd over them
DECODE_BATCH=${DECODE_BATCH:-250}
V2=${V2:-1}
V2_STEPS=${V2_STEPS:-$((TRAIN_STEPS / 2))}
V2_FLAGS=${V2_FLAGS:---learned_mean_embed True --denoise True --denoise_rate 0.5}
SOLVER_STEPS=${SOLVER_STEPS:-10}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
if [ -z "${PRECISION:-}" ]; then
  PRECISION=fp32
  if grep -qw -e avx512_bf16 -e amx_bf16 /proc/cpuinfo 2>/dev/null \
     && python -c "import sys, torch; sys.exit(torch.cuda.is_available())"; then PRECISION=bf16; fi
fi
DTYPE=${DTYPE:-$PRECISION}

if [ "$NPROC" -gt 1 ]; then LAUNCH=(torchrun --standalone --nproc_per_node="$NPROC"); else LAUNCH=(python); fi
mkdir -p "$OUT"
echo "== demo: data $DATA_DIR, outputs in $OUT, training in $PRECISION, decoding in $DTYPE"
COMMON=(--data_dir "$DATA_DIR" --dataset "$(basename "$DATA_DIR")" --vocab "$VOCAB" --vocab_size "$VOCAB_SIZE"
        --seq_len "$SEQ_LEN" --hidden_dim "$HIDDEN_DIM" --hidden_t_dim "$HIDDEN_DIM" --num_layers "$LAYERS"
        --hidden_size "$HIDDEN" --num_heads "$HEADS" --intermediate_size "$FFN" --diff_steps "$DIFF_STEPS"
        --noise_schedule sqrt --bsz "$BSZ" --microbatch "$BSZ" --lr "$LR" --schedule_sampler lossaware
        --ema_rate 0.995 --log_interval 100 --eval_interval 1000 --seed 102 --precision "$PRECISION" ${TRAIN_FLAGS:-})

STAGES=$((V2 == 0 ? 4 : 5))
stage=0
say() { stage=$((stage + 1)); echo "== $stage/$STAGES $*"; }

say "training for $TRAIN_STEPS steps"
"${LAUNCH[@]}" "$ROOT/run_train.py" "${COMMON[@]}" --learning_steps "$TRAIN_STEPS" --save_interval "$TRAIN_STEPS" \
  --checkpoint_path "$OUT/base" --notes demo
BASE_CKPT=$(printf "%s/base/ema_0.995_%06d.pt" "$OUT" "$TRAIN_STEPS")

say "distance-penalty post-training for $POST_STEPS steps"
TOTAL=$((TRAIN_STEPS + POST_STEPS))
"${LAUNCH[@]}" "$ROOT/run_train.py" "${COMMON[@]}" --learning_steps "$TOTAL" --save_interval "$TOTAL" \
  --checkpoint_path "$OUT/post" --resume_checkpoint "$(printf "%s/base/model%06d.pt" "$OUT" "$TRAIN_STEPS")" \
  --simi_penalty l2_noise_random --simi_lambda -2 --simi_noise 0.05 --notes demo_post
POST_CKPT=$(printf "%s/post/ema_0.995_%06d.pt" "$OUT" "$TOTAL")

if [ "$V2" != 0 ]; then
  say "DiffuSeq-v2 model ($V2_FLAGS): training for $V2_STEPS steps"
  # shellcheck disable=SC2086  # V2_FLAGS is a list of flags
  "${LAUNCH[@]}" "$ROOT/run_train.py" "${COMMON[@]}" $V2_FLAGS --learning_steps "$V2_STEPS" \
    --save_interval "$V2_STEPS" --checkpoint_path "$OUT/v2" --notes demo_v2
  V2_CKPT=$(printf "%s/v2/ema_0.995_%06d.pt" "$OUT" "$V2_STEPS")
fi

say "decoding and scoring"
decode() {  # decode MODEL_NAME CHECKPOINT LABEL [FLAGS...]: decode and score (one pipeline)
  echo "-- $1 model, $3"
  "${LAUNCH[@]}" "$ROOT/sample_seq2seq.py" --model_path "$2" --step "$DIFF_STEPS" "${@:4}" \
    --batch_size "$DECODE_BATCH" --seeds "$SEEDS" --split test --max_examples "$TEST_EXAMPLES" \
    --out_dir "$OUT/decode/$1__$3" --evaluate --dtype "$DTYPE"
}
decode base "$BASE_CKPT" adp_20 --decode_respacing adp_20
decode base "$BASE_CKPT" uniform_20 --decode_respacing 20
decode post-trained "$POST_CKPT" adp_20 --decode_respacing adp_20
decode post-trained "$POST_CKPT" uniform_20 --decode_respacing 20
decode post-trained "$POST_CKPT" all
if [ "$V2" != 0 ]; then
  decode v2 "$V2_CKPT" adp_20 --decode_respacing adp_20
  decode v2 "$V2_CKPT" "time-uniform_$SOLVER_STEPS" --sampler dpm-solver-v2 --solver_steps "$SOLVER_STEPS"
fi

say "results (test split, first $TEST_EXAMPLES examples, seeds $SEEDS)"
python "$ROOT/scripts/demo_table.py" "$OUT" | tee "$OUT/results.txt"
echo "== done: everything is under $OUT"
