#!/usr/bin/env bash
# `make demo`: pre-train a small MAE on scikit-learn's digits on CPU (a few minutes on 2 cores) and write the
# model folder, log.jsonl, TensorBoard events and reconstruction grids to OUTPUT_DIR (default demo_output).
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
  --resume_from_checkpoint latest
end=$(date +%s)

"$PYTHON" - "$OUTPUT_DIR/mae-digits" <<'PY'
import json, sys
out = sys.argv[1]
losses = [r["loss"] for r in map(json.loads, open(f"{out}/log.jsonl")) if "loss" in r]
knn = [r["knn_top1"] for r in map(json.loads, open(f"{out}/log.jsonl")) if "knn_top1" in r]
print(f"loss: first logged {losses[0]:.4f} -> last {losses[-1]:.4f}" + (f"; kNN top-1 {knn[-1]:.3f}" if knn else ""))
PY
cat <<MSG
Demo finished in $((end - start)) s. Outputs in $OUTPUT_DIR/mae-digits:
  config.json, model.safetensors, modeling code, preprocessor_config.json, README.md  (load with
      AutoModelForPreTraining.from_pretrained("$OUTPUT_DIR/mae-digits", trust_remote_code=True))
  reconstruction.png   original | masked | reconstruction | reconstruction + visible patches
  reconstructions/     the same grid during training
  log.jsonl, train_results.json
  runs/                TensorBoard: .venv/bin/tensorboard --logdir $OUTPUT_DIR/mae-digits/runs
  checkpoints/         resumable state (--resume_from_checkpoint latest)
Re-draw the grid for any images: $PYTHON scripts/visualize.py $OUTPUT_DIR/mae-digits IMAGE... --output grid.png
MSG
