#!/usr/bin/env bash
# The whole method on the embedded WordNet data, on a CPU, in about 10 minutes on 2 idle cores:
#   1. train a small DiffuSeq model,
#   2. post-train it with the Distance Penalty (l2_noise_random, lambda -2),
#   3. decode and score the test split with adp_20, a uniform 20-step respacing and all T steps,
#   4. print one table.
#
#   bash scripts/demo.sh
#
# Make it larger with environment variables, e.g. on GPUs:
#   NPROC=4 TRAIN_STEPS=50000 POST_STEPS=10000 LAYERS=12 HIDDEN=768 HEADS=12 FFN=3072 SEQ_LEN=128 \
#   DIFF_STEPS=2000 BSZ=1024 DATA_DIR=datasets/QQP VOCAB=bert bash scripts/demo.sh
# TRAIN_FLAGS adds training flags to both models, e.g. TRAIN_FLAGS=--self_cond (self-conditioning).
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

echo "== 1/4 training for $TRAIN_STEPS steps"
"${LAUNCH[@]}" "$ROOT/run_train.py" "${COMMON[@]}" --learning_steps "$TRAIN_STEPS" --save_interval "$TRAIN_STEPS" \
  --checkpoint_path "$OUT/base" --notes demo
BASE_CKPT=$(printf "%s/base/ema_0.995_%06d.pt" "$OUT" "$TRAIN_STEPS")

echo "== 2/4 distance-penalty post-training for $POST_STEPS steps"
TOTAL=$((TRAIN_STEPS + POST_STEPS))
"${LAUNCH[@]}" "$ROOT/run_train.py" "${COMMON[@]}" --learning_steps "$TOTAL" --save_interval "$TOTAL" \
  --checkpoint_path "$OUT/post" --resume_checkpoint "$(printf "%s/base/model%06d.pt" "$OUT" "$TRAIN_STEPS")" \
  --simi_penalty l2_noise_random --simi_lambda -2 --simi_noise 0.05 --notes demo_post
POST_CKPT=$(printf "%s/post/ema_0.995_%06d.pt" "$OUT" "$TOTAL")

decode() {  # decode MODEL_NAME CHECKPOINT RESPACING LABEL: decode and score (one pipeline)
  echo "== 3/4 decoding and scoring: $1 model, $4"
  "${LAUNCH[@]}" "$ROOT/sample_seq2seq.py" --model_path "$2" --step "$DIFF_STEPS" --decode_respacing "$3" \
    --batch_size "$DECODE_BATCH" --seeds "$SEEDS" --split test --max_examples "$TEST_EXAMPLES" \
    --out_dir "$OUT/decode/$1__$4" --evaluate --dtype "$DTYPE"
}
decode base "$BASE_CKPT" adp_20 adp_20
decode base "$BASE_CKPT" 20 uniform_20
decode post-trained "$POST_CKPT" adp_20 adp_20
decode post-trained "$POST_CKPT" 20 uniform_20
decode post-trained "$POST_CKPT" "" all

echo "== 4/4 results (test split, first $TEST_EXAMPLES examples, seeds $SEEDS)"
python "$ROOT/scripts/demo_table.py" "$OUT" | tee "$OUT/results.txt"
echo "== done: everything is under $OUT"
