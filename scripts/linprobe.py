#!/usr/bin/env python
"""Linear probing of a frozen MAE encoder with 🤗 Accelerate, with the reference recipe.

    accelerate launch scripts/linprobe.py --config configs/linprobe_vit_base_patch16.yaml \
        --model_name_or_path mae-pretrained/ --train_dir imgs/train --validation_dir imgs/val --output_dir out

Recipe (facebookresearch/mae ``main_linprobe.py``): the encoder is frozen, the cls token (``--global_pool`` for
mean-pooled patches) goes through BatchNorm1d without affine and a linear head (trunc-normal std 0.01), weak
augmentation (RandomResizedCrop bicubic + flip), LARS (momentum 0.9, trust 0.001, no weight decay / trust
scaling for 1-D parameters), blr 0.1, 10 warm-up epochs, weight decay 0. Only the head is in the optimiser.
The shared run (data, loop, evaluation, outputs) is ``mae_hf.training.classifier_training``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from mae_hf import MAEForImageClassification
from mae_hf.training.classification import build_linprobe_parser, build_linprobe_transform
from mae_hf.training.classifier_training import ClassifierTask, classifier_main
from mae_hf.training.lars import LARS
from mae_hf.training.loop import run_script


def config_overrides(args: argparse.Namespace) -> dict:
    # No smoothing, no drop path: plain cross-entropy on a frozen encoder (the reference's linear probe).
    return {"global_pool": args.global_pool, "linear_probe": True, "drop_path_rate": 0.0, "label_smoothing": 0.0}


def freeze_encoder(model: MAEForImageClassification, args: argparse.Namespace) -> None:
    """Only the head (BatchNorm1d without affine + Linear) trains; fc_norm (global pool) stays as loaded."""
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("head."))


def build_optimizer(model: MAEForImageClassification, args: argparse.Namespace, lr: float) -> torch.optim.Optimizer:
    head = [param for param in model.parameters() if param.requires_grad]
    return LARS(
        head,
        lr=lr,
        weight_decay=args.weight_decay,
        momentum=args.lars_momentum,
        trust_coefficient=args.lars_trust_coefficient,
    )


def loss_function(args: argparse.Namespace, num_labels: int):
    def loss_of_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss

    return loss_of_batch


LINPROBE = ClassifierTask(
    name="linear probing",
    config_overrides=config_overrides,
    prepare_model=freeze_encoder,
    build_optimizer=build_optimizer,
    train_transform=lambda args, input_size: build_linprobe_transform(input_size, args.hflip, args.crop_min_scale),
    loss_function=loss_function,
    recipe_description=lambda args: {
        "optimizer": f"LARS (momentum {args.lars_momentum}, trust {args.lars_trust_coefficient}), "
        f"weight decay {args.weight_decay}; head only",
        "augmentation": f"RandomResizedCrop({args.crop_min_scale}-1, bicubic), flip {args.hflip}",
    },
)


def main(argv: Sequence[str] | None = None) -> dict:
    return classifier_main(build_linprobe_parser(), LINPROBE, argv)


if __name__ == "__main__":
    run_script(main)
