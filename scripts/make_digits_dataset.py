#!/usr/bin/env python
"""Write scikit-learn's bundled digits (1,797 8×8 grayscale images, no download) as an image folder:
ROOT/{train,validation}/<digit>/<index>.png, upscaled (bicubic) to --size pixels, RGB, deterministic split."""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digits(root: str, size: int = 16, validation_fraction: float = 1 / 6, seed: int = 0) -> dict[str, int]:
    """Write the folder and return the number of images per split."""
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))
    num_validation = int(round(len(order) * validation_fraction))
    splits = {"validation": order[:num_validation], "train": order[num_validation:]}
    counts = {}
    for split, indices in splits.items():
        for index in indices:
            label = int(digits.target[index])
            # Pixel values are 0..16; dark digits on white, as ink on paper.
            pixels = (255 - digits.images[index] * (255 / 16)).clip(0, 255).astype(np.uint8)
            image = Image.fromarray(pixels).resize((size, size), Image.BICUBIC).convert("RGB")
            folder = os.path.join(root, split, str(label))
            os.makedirs(folder, exist_ok=True)
            image.save(os.path.join(folder, f"{int(index):04d}.png"))
        counts[split] = len(indices)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", help="Output folder (gets train/ and validation/).")
    parser.add_argument("--size", type=int, default=16, help="Side of the written images in pixels.")
    parser.add_argument("--validation_fraction", type=float, default=1 / 6, help="Share of images for validation.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the split.")
    args = parser.parse_args()
    counts = write_digits(args.root, args.size, args.validation_fraction, args.seed)
    print(f"Wrote {counts['train']} train and {counts['validation']} validation digits ({args.size}px) to {args.root}")


if __name__ == "__main__":
    main()
