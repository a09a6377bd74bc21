#!/usr/bin/env python
"""Fine-tune an MAE encoder for image classification with 🤗 Accelerate, with the reference recipe.

    accelerate launch scripts/finetune.py --config configs/finetune_vit_base_patch16.yaml \
        --model_name_or_path mae-pretrained/ --train_dir imgs/train --validation_dir imgs/val --output_dir out
    python scripts/finetune.py --config configs/finetune_tiny_cpu.yaml --model_name_or_path d --train_dir ...

Recipe (facebookresearch/mae ``main_finetune.py``): RandAugment rand-m9-mstd0.5-inc1, mixup 0.8 / cutmix 1.0 with
soft targets, label smoothing 0.1, random erasing 0.25, drop path, layer-wise lr decay, AdamW (0.9, 0.999), lr =
blr × effective batch / 256 with per-iteration warm-up and cosine to ``--min_lr``, global pool (``--cls_token``
for the cls token). The model starts from ``--model_name_or_path`` (pre-training / classifier folder, Hub id,
or reference ``.pth``); classes come from the dataset; ``--input_size`` interpolates the position embeddings.
The shared run (data, loop, evaluation, outputs) is ``mae_hf.training.classifier_training``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from mae_hf import MAEForImageClassification
from mae_hf.training.classification import (
    build_finetune_parser,
    build_finetune_transform,
    build_mixup,
)
from mae_hf.training.classifier_training import ClassifierTask, classifier_main
from mae_hf.training.loop import run_script
from mae_hf.training.optim import build_adamw, param_groups_layer_decay


def config_overrides(args: argparse.Namespace) -> dict:
    return {
        "global_pool": args.global_pool,
        "linear_probe": False,
        "drop_path_rate": args.drop_path,
        "label_smoothing": args.smoothing,  # for hard labels (mixup off); mixup targets carry their own smoothing
    }


def build_optimizer(model: MAEForImageClassification, args: argparse.Namespace, lr: float) -> torch.optim.Optimizer:
    """AdamW over the reference's layer-decay groups (lr_scale = layer_decay ** (depth + 1 - layer id))."""
    groups = param_groups_layer_decay(model, args.weight_decay, args.layer_decay, model.config.num_hidden_layers)
    return build_adamw(groups, lr=lr, betas=(args.adam_beta1, args.adam_beta2), fused=args.fused_adamw)


def loss_function(args: argparse.Namespace, num_labels: int):
    """Mixup / CutMix turn integer labels into smoothed class probabilities; the model takes either."""
    mixup = build_mixup(args, num_labels)

    def loss_of_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pixel_values, labels = batch["pixel_values"], batch["labels"]
        if mixup is not None:
            if pixel_values.shape[0] % 2:  # an unreadable image was dropped: timm's Mixup pairs images, needs even
                pixel_values, labels = pixel_values[:-1], labels[:-1]
            pixel_values, labels = mixup(pixel_values, labels)
        return model(pixel_values=pixel_values, labels=labels).loss

    return loss_of_batch


FINETUNE = ClassifierTask(
    name="fine-tuning",
    config_overrides=config_overrides,
    prepare_model=lambda model, args: None,  # every parameter trains
    build_optimizer=build_optimizer,
    train_transform=build_finetune_transform,
    loss_function=loss_function,
    recipe_description=lambda args: {
        "optimizer": f"AdamW ({args.adam_beta1}, {args.adam_beta2}), weight decay {args.weight_decay}",
        "layer-wise lr decay": args.layer_decay,
        "drop path": args.drop_path,
        "augmentation": f"RandomResizedCrop({args.crop_min_scale}-1, bicubic), flip {args.hflip}, {args.auto_augment}, "
        f"random erasing {args.reprob} ({args.remode})",
        "mixup / cutmix / label smoothing": f"{args.mixup} / {args.cutmix} / {args.smoothing}",
    },
)


def main(argv: Sequence[str] | None = None) -> dict:
    return classifier_main(build_finetune_parser(), FINETUNE, argv)


if __name__ == "__main__":
    run_script(main)
