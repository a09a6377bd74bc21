"""Classification parts shared by ``scripts/finetune.py``, ``scripts/linprobe.py`` and ``scripts/evaluate.py``:
options, the model built from a pre-training / classifier folder, a Hub id or a reference ``.pth``, the reference's
augmentations (timm ``create_transform`` / ``Mixup``, torchvision v2), labelled data, and a multi-process evaluation
whose metrics come from the ``evaluate`` module shipped in ``mae_hf.metrics`` (offline)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from datasets import ClassLabel, Dataset
from PIL import Image, ImageOps
from timm.data import Mixup, create_transform
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from ..checkpoints import load_reference_model
from ..cli import OptionParser
from ..configuration_mae_hf import MAE_PRESETS, MAEConfig
from ..metrics import metric_path
from ..modeling_mae_hf import IMAGENET_MEAN, IMAGENET_STD, MAEForImageClassification
from .args import (
    OptionError,
    add_checkpoint_args,
    add_data_args,
    add_logging_args,
    add_optimization_args,
    add_recipe_args,
    parse_overrides,
    validate_schedule_args,
)
from .data import (
    EpochDataLoaders,
    build_eval_transform,
    collate_images,
    detect_image_column,
    detect_label_column,
    load_image_datasets_from_args,
    prepare_split,
)

REFERENCE_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin")

# ---------------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------------


def _add_classifier_model_args(parser: argparse.ArgumentParser, cls_token_default: bool) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model_name_or_path",
        type=str,
        default=None,
        help="Start from a pre-training or classifier folder, a Hub id, or a facebookresearch/mae .pth checkpoint.",
    )
    group.add_argument(
        "--model_preset",
        type=str,
        default=None,
        help=f"Without --model_name_or_path: a randomly initialised architecture, one of {sorted(MAE_PRESETS)}.",
    )
    group.add_argument(
        "--random_init",
        action="store_true",
        help="Use the architecture of --model_name_or_path but random weights (the from-scratch baseline).",
    )
    group.add_argument(
        "--model_config_overrides",
        type=parse_overrides,
        default=None,
        help="MAEConfig fields to change, 'drop_path_rate=0.1' (or a mapping in a recipe).",
    )
    pool = group.add_mutually_exclusive_group()
    pool.add_argument(
        "--cls_token",
        dest="global_pool",
        action="store_false",
        help="Classify the cls token (after the encoder norm) instead of mean-pooled patch tokens.",
    )
    pool.add_argument(
        "--global_pool", dest="global_pool", action="store_true", help="Classify mean-pooled patch tokens + fc_norm."
    )
    parser.set_defaults(global_pool=not cls_token_default)


def build_finetune_parser() -> argparse.ArgumentParser:
    parser = OptionParser(
        description="Fine-tune an MAE encoder for image classification (the reference recipe) with 🤗 Accelerate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_recipe_args(parser)
    _add_classifier_model_args(parser, cls_token_default=False)
    group = parser.add_argument_group("fine-tuning recipe")
    group.add_argument("--drop_path", type=float, default=0.1, help="Stochastic depth rate (0.1 B, 0.2 L, 0.3 H).")
    group.add_argument(
        "--layer_decay", type=float, default=0.75, help="Layer-wise lr decay (0.65 for ViT-B, 0.75 for L/H)."
    )
    group.add_argument("--smoothing", type=float, default=0.1, help="Label smoothing (also of mixup targets).")
    group.add_argument("--mixup", type=float, default=0.8, help="Mixup alpha; 0 turns mixup off.")
    group.add_argument("--cutmix", type=float, default=1.0, help="CutMix alpha; 0 turns cutmix off.")
    group.add_argument("--mixup_prob", type=float, default=1.0, help="Probability of mixup or cutmix per batch.")
    group.add_argument("--mixup_switch_prob", type=float, default=0.5, help="Probability of cutmix when both are on.")
    group.add_argument("--mixup_mode", type=str, default="batch", help="Mixup mode: batch, pair or elem.")
    group.add_argument(
        "--auto_augment", type=str, default="rand-m9-mstd0.5-inc1", help="timm auto-augment policy ('none': off)."
    )
    group.add_argument("--color_jitter", type=float, default=None, help="Colour jitter (only without auto-augment).")
    group.add_argument("--reprob", type=float, default=0.25, help="Random erasing probability.")
    group.add_argument("--remode", type=str, default="pixel", help="Random erasing mode.")
    group.add_argument("--recount", type=int, default=1, help="Random erasing count.")
    group.add_argument("--hflip", type=float, default=0.5, help="Horizontal flip probability.")
    group.add_argument(
        "--crop_min_scale", type=float, default=0.08, help="Smallest area fraction of RandomResizedCrop."
    )
    add_data_args(parser)
    add_optimization_args(parser, blr=1e-3, betas=(0.9, 0.999))
    parser.set_defaults(warmup_epochs=5, num_train_epochs=100, min_lr=1e-6, weight_decay=0.05)
    _add_common_classification_args(parser)
    return parser


def build_linprobe_parser() -> argparse.ArgumentParser:
    parser = OptionParser(
        description="Linear probing of a frozen MAE encoder (BatchNorm without affine + linear head, LARS).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_recipe_args(parser)
    _add_classifier_model_args(parser, cls_token_default=True)
    group = parser.add_argument_group("linear probing recipe")
    group.add_argument("--hflip", type=float, default=0.5, help="Horizontal flip probability.")
    group.add_argument(
        "--crop_min_scale", type=float, default=0.08, help="Smallest area fraction of RandomResizedCrop."
    )
    group.add_argument("--lars_momentum", type=float, default=0.9, help="LARS momentum.")
    group.add_argument("--lars_trust_coefficient", type=float, default=0.001, help="LARS trust coefficient.")
    add_data_args(parser)
    add_optimization_args(parser, blr=0.1, betas=(0.9, 0.999))
    parser.set_defaults(warmup_epochs=10, num_train_epochs=90, weight_decay=0.0, per_device_train_batch_size=512)
    _add_common_classification_args(parser)
    return parser


def _add_common_classification_args(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_args(parser)
    add_logging_args(parser)
    group = parser.add_argument_group("evaluation")
    group.add_argument(
        "--per_device_eval_batch_size", type=int, default=128, help="Images per process when evaluating."
    )
    group.add_argument(
        "--eval_every_epochs", type=int, default=1, help="Evaluate (top-1, top-5, loss) every N epochs and at the end."
    )
    group.add_argument(
        "--save_best_model",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Keep the best-top-1 model folder in OUTPUT_DIR/best_model.",
    )


def validate_classification_args(args: argparse.Namespace) -> None:
    """Raise ``OptionError`` with one line naming the option and the fix."""
    if not args.output_dir:
        raise OptionError("--output_dir is required: the folder that receives the model, logs and checkpoints.")
    if not args.model_name_or_path and not args.model_preset:
        raise OptionError("Pass --model_name_or_path (pre-trained folder, Hub id or .pth) or --model_preset.")
    if args.model_preset and args.model_preset not in MAE_PRESETS:
        raise OptionError(f"--model_preset {args.model_preset!r} is not one of {sorted(MAE_PRESETS)}.")
    if args.model_name_or_path and args.model_preset:
        raise OptionError("Pass either --model_name_or_path or --model_preset, not both.")
    if not args.train_dir and not args.dataset_name:
        raise OptionError("No training data: pass --train_dir IMAGE_FOLDER or --dataset_name NAME.")
    if args.train_dir and args.dataset_name:
        raise OptionError("Pass either --train_dir or --dataset_name, not both.")
    for name in ("train_dir", "validation_dir"):
        path = getattr(args, name)
        if path and not os.path.isdir(path):
            raise OptionError(f"--{name}: {path!r} is not a directory; pass a folder with class sub-folders.")
    if args.streaming:
        raise OptionError("--streaming is not supported for fine-tuning / linear probing; use a map-style dataset.")
    for name in (
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "logging_steps",
        "eval_every_epochs",
        "max_nonfinite_steps",
    ):
        if getattr(args, name) <= 0:
            raise OptionError(f"--{name} must be a positive integer, got {getattr(args, name)}.")
    for name in ("max_train_steps", "checkpoints_total_limit", "max_train_samples", "max_eval_samples"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise OptionError(f"--{name} must be positive when given, got {value}.")
    validate_schedule_args(args)
    if not 0.0 <= args.hflip <= 1.0:
        raise OptionError(f"--hflip must be a probability, got {args.hflip}.")
    if not 0.0 < args.crop_min_scale <= 1.0:
        raise OptionError(f"--crop_min_scale must be in (0, 1], got {args.crop_min_scale}.")
    if hasattr(args, "layer_decay"):
        if not 0.0 < args.layer_decay <= 1.0:
            raise OptionError(f"--layer_decay must be in (0, 1], got {args.layer_decay}.")
        if not 0.0 <= args.drop_path < 1.0:
            raise OptionError(f"--drop_path must be in [0, 1), got {args.drop_path}.")
        if not 0.0 <= args.smoothing < 1.0:
            raise OptionError(f"--smoothing must be in [0, 1), got {args.smoothing}.")
        if not 0.0 <= args.reprob <= 1.0:
            raise OptionError(f"--reprob must be a probability, got {args.reprob}.")
        if args.mixup < 0 or args.cutmix < 0:
            raise OptionError("--mixup and --cutmix must be >= 0 (0 turns them off).")
        if (args.mixup > 0 or args.cutmix > 0) and args.per_device_train_batch_size % 2:
            raise OptionError("Mixup / CutMix need an even --per_device_train_batch_size.")
    if args.mixed_precision not in (None, "no", "bf16", "fp16"):
        raise OptionError(f"--mixed_precision must be no, bf16 or fp16, got {args.mixed_precision!r}.")
    if args.report_to not in ("tensorboard", "wandb", "all", "none"):
        raise OptionError(f"--report_to must be tensorboard, wandb, all or none, got {args.report_to!r}.")
    if args.resume_from_checkpoint and args.resume_from_checkpoint != "latest":
        if not os.path.isdir(args.resume_from_checkpoint):
            raise OptionError(f"--resume_from_checkpoint: {args.resume_from_checkpoint!r} is not a checkpoint folder.")


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def class_names(dataset: Dataset, label_column: str) -> list[str]:
    """The dataset's class names (``ClassLabel``), else the sorted distinct label values as strings."""
    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    return [str(value) for value in sorted(set(dataset[label_column]))]


def build_classifier(
    model_name_or_path: str | None,
    names: list[str],
    input_size: int | None = None,
    *,
    model_preset: str | None = None,
    random_init: bool = False,
    config_overrides: dict[str, Any] | None = None,
) -> MAEForImageClassification:
    """``MAEForImageClassification`` with one output per class name (``id2label`` / ``label2id`` from ``names``).

    From a folder / Hub id (pre-training or classifier: the decoder is dropped, a classifier's head is replaced
    when the classes differ, the position table is interpolated when ``input_size`` differs), a reference ``.pth``
    (converted first), or random weights (``model_preset``, or ``random_init`` with the folder's architecture)."""
    overrides = dict(config_overrides or {})
    overrides.update(
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={name: index for index, name in enumerate(names)},
    )
    if input_size is not None:
        overrides["image_size"] = input_size
    if model_name_or_path is None:
        return MAEForImageClassification(MAEConfig.from_preset(model_preset, **overrides))
    if model_name_or_path.endswith(REFERENCE_CHECKPOINT_SUFFIXES) and os.path.isfile(model_name_or_path):
        with tempfile.TemporaryDirectory() as folder:
            converted, _ = load_reference_model(model_name_or_path)
            converted.save_pretrained(folder)
            return build_classifier(folder, names, input_size, random_init=random_init, config_overrides=overrides)
    if random_init:
        config = MAEConfig.from_pretrained(model_name_or_path)
        for key, value in overrides.items():
            setattr(config, key, value)
        return MAEForImageClassification(config)
    source = MAEConfig.from_pretrained(model_name_or_path)
    # A classifier with other classes: its head is replaced (the position table still interpolates, see below).
    other_head = source.num_labels != len(names) and any(
        "ForImageClassification" in a for a in source.architectures or []
    )
    model = MAEForImageClassification.from_pretrained(
        model_name_or_path, **overrides, **({"ignore_mismatched_sizes": True} if other_head else {})
    )
    if other_head and input_size is not None and source.image_size != input_size:
        model._load_resized_pos_embed(model_name_or_path, {})
    return model


# ---------------------------------------------------------------------------------------------------------------
# Transforms and mixup
# ---------------------------------------------------------------------------------------------------------------


def build_finetune_transform(args: argparse.Namespace, input_size: int) -> Callable:
    """The reference fine-tuning augmentation through timm's ``create_transform``: RandomResizedCrop (0.08-1,
    bicubic), flip, RandAugment ``rand-m9-mstd0.5-inc1``, ImageNet normalisation, random erasing 0.25 (pixel)."""
    auto_augment = None if args.auto_augment in (None, "", "none") else args.auto_augment
    transform = create_transform(
        input_size=input_size,
        is_training=True,
        scale=(args.crop_min_scale, 1.0),
        hflip=args.hflip,
        color_jitter=args.color_jitter if args.color_jitter is not None else 0.0,
        auto_augment=auto_augment,
        interpolation="bicubic",
        re_prob=args.reprob,
        re_mode=args.remode,
        re_count=args.recount,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    _allow_zero_bit_posterize(transform)
    return transform


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize, except that 0 bits (PosterizeIncreasing at magnitude 10, reachable with mstd 0.5) gives
    the black image older Pillow returned (the reference's behaviour) instead of Pillow >= 11's ValueError."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _allow_zero_bit_posterize(transform: Any) -> None:
    for step in getattr(transform, "transforms", []):
        for op in getattr(step, "ops", []):  # timm RandAugment's AugmentOp list
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize


def build_linprobe_transform(input_size: int, hflip: float = 0.5, crop_min_scale: float = 0.08) -> v2.Compose:
    """The reference linear-probing augmentation: RandomResizedCrop (bicubic) + flip, ImageNet normalisation."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(
                input_size,
                scale=(crop_min_scale, 1.0),
                interpolation=v2.InterpolationMode.BICUBIC,
                antialias=True,
            ),
            v2.RandomHorizontalFlip(hflip),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def build_mixup(args: argparse.Namespace, num_classes: int) -> Mixup | None:
    """timm ``Mixup`` (mixup 0.8 / cutmix 1.0, label smoothing in the soft targets); None when both are off."""
    if args.mixup <= 0 and args.cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=args.mixup,
        cutmix_alpha=args.cutmix,
        prob=args.mixup_prob,
        switch_prob=args.mixup_switch_prob,
        mode=args.mixup_mode,
        label_smoothing=args.smoothing,
        num_classes=num_classes,
    )


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ClassificationSplits:
    raw: dict[str, Dataset]
    image_column: str
    label_column: str
    names: list[str]


def load_classification_splits(args: argparse.Namespace) -> ClassificationSplits:
    """The train / validation splits, their image and label columns and class names (labels are required)."""
    splits = load_image_datasets_from_args(args)
    label_column = detect_label_column(splits["train"], args.label_column_name)
    if label_column is None:
        raise OptionError("The training data has no labels: use class sub-folders or pass --label_column_name.")
    image_column = detect_image_column(splits["train"], args.image_column_name)
    return ClassificationSplits(splits, image_column, label_column, class_names(splits["train"], label_column))


def build_train_loaders(
    args: argparse.Namespace,
    splits: ClassificationSplits,
    train_transform: Callable,
    num_processes: int,
    process_index: int,
) -> EpochDataLoaders:
    """Training batches (pixel_values, integer labels) in an order that depends only on (seed, epoch)."""
    train = prepare_split(
        splits.raw["train"],
        train_transform,
        splits.image_column,
        splits.label_column,
        args.max_train_samples,
        strict=args.strict_data,
    )
    if len(train) == 0:
        raise OptionError("The training data is empty; check --train_dir / --dataset_name / --train_split.")
    return EpochDataLoaders(
        train,
        batch_size=args.per_device_train_batch_size,
        num_processes=num_processes,
        process_index=process_index,
        seed=args.seed,
        num_workers=args.dataloader_num_workers,
    )


def eval_split(
    splits: ClassificationSplits, split: str, input_size: int, max_samples: int | None = None, strict: bool = False
) -> Dataset | None:
    """``split`` with the evaluation transform (None when absent); ``strict`` stops on an unreadable image."""
    if split not in splits.raw:
        return None
    transform = build_eval_transform(input_size)
    return prepare_split(splits.raw[split], transform, splits.image_column, splits.label_column, max_samples, strict)


def build_sharded_eval_loader(accelerator: Accelerator, dataset: Dataset, batch_size: int, workers: int = 0):
    """A sequential loader prepared by Accelerate: each process reads its shard; the last batch is padded with
    repeats that ``gather_for_metrics`` drops again, so every sample counts exactly once."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_images, num_workers=workers)
    return accelerator.prepare_data_loader(loader)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------


def import_evaluate_library() -> Any:
    """The 🤗 ``evaluate`` library, even when ``scripts/`` (which holds ``scripts/evaluate.py``) is on ``sys.path``
    (running a script from there, or PYTHONPATH): such path entries are skipped for this one import."""
    cached = sys.modules.get("evaluate")
    if cached is not None and hasattr(cached, "EvaluationModule"):
        return cached
    sys.modules.pop("evaluate", None)
    saved = list(sys.path)
    sys.path[:] = [entry for entry in saved if not os.path.isfile(os.path.join(entry or os.getcwd(), "evaluate.py"))]
    try:
        return importlib.import_module("evaluate")
    finally:
        sys.path[:] = saved


@torch.no_grad()
def evaluate_classifier(accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader) -> dict[str, float]:
    """Top-1, top-5 (the shipped ``topk_accuracy`` evaluate module) and mean cross-entropy (no smoothing) over the
    whole split, on every process (a collective: all processes must call it); ``model.eval()`` and no grad."""
    was_training = model.training
    model.eval()
    with accelerator.main_process_first():  # evaluate copies the module into its cache: one process at a time
        # In memory: every process holds the gathered predictions, so no shared cache files are needed.
        metric = import_evaluate_library().load(metric_path("topk_accuracy"), keep_in_memory=True)
    loss_sum, count = 0.0, 0
    k = None
    try:
        for batch in loader:
            with accelerator.autocast():
                logits = model(pixel_values=batch["pixel_values"]).logits.float()
            labels = batch["labels"]
            k = min(5, logits.shape[-1])
            ranked = logits.topk(k, dim=-1).indices
            losses = F.cross_entropy(logits, labels, reduction="none")
            ranked, labels, losses = accelerator.gather_for_metrics((ranked, labels, losses))
            loss_sum += losses.sum().item()
            count += labels.shape[0]
            metric.add_batch(predictions=ranked.cpu().tolist(), references=labels.cpu().tolist())
    finally:
        model.train(was_training)
    scores = metric.compute(k=[1, k or 1])
    return {
        "top1": scores["top1"],
        "top5": scores[f"top{k or 1}"],
        "loss": loss_sum / max(count, 1),
        "num_samples": count,
    }


__all__ = [
    "ClassificationSplits",
    "build_train_loaders",
    "build_classifier",
    "build_finetune_parser",
    "build_finetune_transform",
    "build_linprobe_parser",
    "build_linprobe_transform",
    "build_mixup",
    "build_sharded_eval_loader",
    "class_names",
    "eval_split",
    "evaluate_classifier",
    "import_evaluate_library",
    "load_classification_splits",
    "validate_classification_args",
]
