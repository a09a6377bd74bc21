#!/usr/bin/env bash
# `make demo`: the whole MAE story on scikit-learn's digits on CPU (under 10 minutes on 2 cores): pre-train a small
# MAE, then linear probe and fine-tune it and, with the same recipes, a randomly initialised encoder; evaluate; run
# `pipeline` on validation images; write results.md / results.json next to the reconstruction grid (OUTPUT_DIR,
# default demo_output).
#   DEMO_SEEDS="0 1 2" bash scripts/demo.sh    # the downstream runs for 3 seeds (the README table)
# DEMO_PRETRAIN_ARGS / DEMO_LINPROBE_ARGS / DEMO_FINETUNE_ARGS add options to each step (tests shorten it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUTPUT_DIR="${1:-demo_output}"
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
DATA_DIR="$OUTPUT_DIR/data/digits"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The datasets cache stays inside the output folder, so a demo never depends on (or fills) ~/.cache.
export HF_DATASETS_CACHE="${HF_DATASETS_CACHE:-$OUTPUT_DIR/data/cache}"
# One compute thread: this model is too small to gain from more, and on a busy machine several OpenMP threads
# per process slow every step down by 20x or more (measured); set OMP_NUM_THREADS to change it.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

start=$(date +%s)
if [ ! -d "$DATA_DIR/train" ]; then
  "$PYTHON" scripts/make_digits_dataset.py "$DATA_DIR" --size 16
fi
# One process on CPU; on a multi-GPU machine: accelerate launch --config_file configs/accelerate/multi_gpu.yaml ...
"$PYTHON" scripts/pretrain.py \
  --config configs/pretrain_demo.yaml \
  --train_dir "$DATA_DIR/train" \
  --validation_dir "$DATA_DIR/validation" \
  --output_dir "$OUTPUT_DIR/mae-digits" \
  --resume_from_checkpoint latest ${DEMO_PRETRAIN_ARGS:-}
pretrain_end=$(date +%s)

"$PYTHON" - "$OUTPUT_DIR/mae-digits" <<'PY'
import json, sys
out = sys.argv[1]
losses = [r["loss"] for r in map(json.loads, open(f"{out}/log.jsonl")) if "loss" in r]
knn = [r["knn_top1"] for r in map(json.loads, open(f"{out}/log.jsonl")) if "knn_top1" in r]
print(f"loss: first logged {losses[0]:.4f} -> last {losses[-1]:.4f}" + (f"; kNN top-1 {knn[-1]:.3f}" if knn else ""))
PY

# --- Downstream: linear probe and fine-tune, from MAE and from random init (same recipe), two runs at a time ------
SEEDS="${DEMO_SEEDS:-0}"
run_pair() {  # run_pair SCRIPT SEED: the MAE and the random-init run side by side (one core each)
  local script=$1 seed=$2 dir="$OUTPUT_DIR/downstream/seed$2"
  mkdir -p "$dir"
  local common=(--config "configs/${script}_demo.yaml" --model_name_or_path "$OUTPUT_DIR/mae-digits"
    --train_dir "$DATA_DIR/train" --validation_dir "$DATA_DIR/validation" --seed "$seed" --disable_tqdm
    --resume_from_checkpoint latest)
  local extra
  if [ "$script" = linprobe ]; then extra=${DEMO_LINPROBE_ARGS:-}; else extra=${DEMO_FINETUNE_ARGS:-}; fi
  "$PYTHON" "scripts/$script.py" "${common[@]}" --output_dir "$dir/$script-mae" $extra > "$dir/$script-mae.log" 2>&1 &
  local mae=$!
  "$PYTHON" "scripts/$script.py" "${common[@]}" --random_init --output_dir "$dir/$script-random" $extra \
    > "$dir/$script-random.log" 2>&1 &
  local random=$!
  wait $mae || { tail -20 "$dir/$script-mae.log"; exit 1; }
  wait $random || { tail -20 "$dir/$script-random.log"; exit 1; }
  grep -h "top-1" "$dir/$script-mae.log" | tail -1 | sed "s/^/  $script seed $seed MAE:    /"
  grep -h "top-1" "$dir/$script-random.log" | tail -1 | sed "s/^/  $script seed $seed random: /"
}
for seed in $SEEDS; do
  run_pair linprobe "$seed"
  run_pair finetune "$seed"
done
first_seed=${SEEDS%% *}
# A separate evaluation of the fine-tuned folder (the evaluate script; JSON next to the model).
"$PYTHON" scripts/evaluate.py --model_name_or_path "$OUTPUT_DIR/downstream/seed$first_seed/finetune-mae" \
  --data_dir "$DATA_DIR/validation" --output_file "$OUTPUT_DIR/downstream/seed$first_seed/finetune-mae/eval_validation.json" \
  > /dev/null 2>&1
"$PYTHON" scripts/demo_report.py "$OUTPUT_DIR" 2> /dev/null
end=$(date +%s)

cat <<MSG
Demo finished in $((end - start)) s (pre-training $((pretrain_end - start)) s). Results: $OUTPUT_DIR/results.md, results.json.
Downstream models (pipeline-ready): $OUTPUT_DIR/downstream/seed*/{linprobe,finetune}-{mae,random}
Pre-training outputs in $OUTPUT_DIR/mae-digits:
  config.json, model.safetensors, modeling code, preprocessor_config.json, README.md  (load with
      AutoModelForPreTraining.from_pretrained("$OUTPUT_DIR/mae-digits", trust_remote_code=True))
  reconstruction.png   original | masked | reconstruction | reconstruction + visible patches
  reconstructions/     the same grid during training
  log.jsonl, train_results.json
  runs/                TensorBoard: .venv/bin/tensorboard --logdir $OUTPUT_DIR/mae-digits/runs
  checkpoints/         resumable state (--resume_from_checkpoint latest)
Re-draw the grid for any images: $PYTHON scripts/visualize.py $OUTPUT_DIR/mae-digits IMAGE... --output grid.png
MSG
