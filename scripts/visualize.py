#!/usr/bin/env python
"""Reconstruction grid for any saved MAE pre-training model and image files:
rows = images; columns = original | masked | reconstruction | reconstruction with the visible patches pasted.

    python scripts/visualize.py demo_output/mae-digits a.png b.jpg --output grid.png --mask_ratio 0.75
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from PIL import Image
from transformers import AutoModelForPreTraining

import mae_hf  # noqa: F401  (registers the Auto classes)
from mae_hf.cli import OptionParser
from mae_hf.training.data import build_eval_transform, to_rgb
from mae_hf.training.visualize import save_reconstruction_grid


def main(argv: list[str] | None = None) -> str:
    parser = OptionParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="Folder (or Hub id) of an MAE pre-training model (with its decoder).")
    parser.add_argument("images", nargs="+", help="Image files (any PIL mode: converted to RGB).")
    parser.add_argument("--output", default="reconstruction.png", help="PNG file to write.")
    parser.add_argument("--mask_ratio", type=float, default=None, help="Fraction removed; default: the model's.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random mask.")
    parser.add_argument("--trust_remote_code", action="store_true", help="Use the code saved with the model.")
    args = parser.parse_args(argv)

    if args.mask_ratio is not None and not 0.0 <= args.mask_ratio < 1.0:
        parser.error(f"--mask_ratio must be in [0, 1), got {args.mask_ratio}")
    if args.model.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(args.model)):
        parser.error(f"model: no folder {args.model!r}; pass a folder written by scripts/pretrain.py (or a Hub id)")
    try:
        model = AutoModelForPreTraining.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as error:  # missing folder / Hub id, or a folder of another architecture
        first_line = str(error).strip().splitlines()[0]
        parser.error(f"model: cannot load {args.model!r} as an MAE pre-training model ({first_line})")
    if args.mask_ratio is not None:
        model.config.mask_ratio = args.mask_ratio
    transform = build_eval_transform(model.config.image_size)
    try:
        pixel_values = torch.stack([transform(to_rgb(Image.open(path))) for path in args.images])
    except (FileNotFoundError, OSError) as error:
        parser.error(f"images: cannot read {error}")
    save_reconstruction_grid(model, pixel_values, args.output, seed=args.seed)
    print(f"Wrote {args.output} ({len(args.images)} image(s) x 4 columns)")
    return args.output


if __name__ == "__main__":
    main(sys.argv[1:])
