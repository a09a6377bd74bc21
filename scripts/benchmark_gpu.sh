#!/usr/bin/env bash
# Every GPU figure the README's Performance section asks for, in one go (about 8 minutes on one H100):
# pre-training steps of ViT-B/16 and ViT-L/16 against the anchors, the fine-tuning step against timm, and
# pre-training end to end from JPEG files with data-loader decoding and with JPEG decoding on the GPU.
#   bash scripts/benchmark_gpu.sh RESULTS_DIR        (JSON per measurement and the printed tables in RESULTS_DIR)
# Needs the project installed (pip install -e .) or PYTHONPATH=modeling, and a CUDA build of torch/torchvision.
set -euo pipefail
out=${1:?usage: bash scripts/benchmark_gpu.sh RESULTS_DIR}
jpegs=${JPEG_DIR:-/tmp/mae_hf_jpegs}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
bench() { name=$1; shift; python scripts/benchmark.py "$@" --output "$out/$name.json" 2>&1 | tee "$out/$name.txt"; }
common=(--batch_size 256 --precision bf16 --compile)
bench pretrain_vit_b "${common[@]}" --model vit-base-patch16
bench pretrain_vit_l "${common[@]}" --model vit-large-patch16
bench finetune_vit_b "${common[@]}" --model vit-base-patch16 --task finetune
# End to end: 16 workers (the host's cores) reading photo-like 500x375 JPEGs; the model-only step of the same run.
e2e=(--model vit-base-patch16 "${common[@]}" --only "mae_hf (sdpa, compiled)" --steps 10 --rounds 3)
e2e+=(--data_dir "$jpegs" --make_jpegs 12800 --workers "${WORKERS:-16}")
bench end_to_end_pil_vit_b "${e2e[@]}"
bench end_to_end_gpu_decode_vit_b "${e2e[@]}" --decode_on_device
