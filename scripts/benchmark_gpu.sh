#!/usr/bin/env bash
# Every GPU figure the README's Performance section asks for (roughly 10 minutes on one H100, mostly compilation):
# pre-training steps of ViT-B/16 and ViT-L/16 against the anchors, the fine-tuning step against timm, and
# pre-training end to end from JPEG files with data-loader decoding and with JPEG decoding on the GPU.
#   bash scripts/benchmark_gpu.sh RESULTS_DIR [pretrain] [finetune] [e2e]    (default: all three parts)
# writes the JSON and the printed table of each measurement to RESULTS_DIR.
# Needs a CUDA build of torch/torchvision and the project's requirements; the package itself is found in modeling/.
set -euo pipefail
out=$(mkdir -p "${1:?usage: bash scripts/benchmark_gpu.sh RESULTS_DIR}" && cd "$1" && pwd)
jpegs=${JPEG_DIR:-/tmp/mae_hf_jpegs}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/modeling${PYTHONPATH:+:$PYTHONPATH}"
bench() { name=$1; shift; ${PYTHON:-python3} scripts/benchmark.py "$@" --output "$out/$name.json" 2>&1 | tee "$out/$name.txt"; }
parts=" ${*:2} "
[ "$parts" = "  " ] && parts=" pretrain finetune e2e "
common=(--batch_size 256 --precision bf16 --compile)
if [[ $parts == *" pretrain "* ]]; then
  bench pretrain_vit_b "${common[@]}" --model vit-base-patch16
  bench pretrain_vit_l "${common[@]}" --model vit-large-patch16
fi
if [[ $parts == *" finetune "* ]]; then
  bench finetune_vit_b "${common[@]}" --model vit-base-patch16 --task finetune
fi
if [[ $parts == *" e2e "* ]]; then
  # 16 workers (the host's cores) reading photo-like 500x375 JPEGs; the model-only step of the same run.
  e2e=(--model vit-base-patch16 "${common[@]}" --only "mae_hf (sdpa, compiled)" --steps 10 --rounds 3)
  e2e+=(--data_dir "$jpegs" --make_jpegs 12800 --workers "${WORKERS:-16}")
  bench end_to_end_pil_vit_b "${e2e[@]}"
  bench end_to_end_gpu_decode_vit_b "${e2e[@]}" --decode_on_device
fi
