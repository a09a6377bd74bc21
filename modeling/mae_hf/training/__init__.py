"""Reusable training parts for pre-training, fine-tuning and linear probing: options and recipes, data,
optimisation (weight-decay and layer-decay groups, LARS), the shared training loop, checkpoints, logging,
classification (transforms, mixup, evaluation), reconstruction grids, kNN monitor and model cards."""

from .args import OptionError, build_pretrain_parser, parse_args_with_recipe, validate_pretrain_args
from .checkpoint import TrainingProgress, load_checkpoint, resolve_checkpoint, save_checkpoint, should_checkpoint
from .classification import (
    build_classifier,
    build_finetune_parser,
    build_finetune_transform,
    build_linprobe_parser,
    build_linprobe_transform,
    build_mixup,
    evaluate_classifier,
    validate_classification_args,
)
from .data import (
    EpochDataLoaders,
    build_eval_loader,
    build_eval_transform,
    build_pretrain_transform,
    load_image_datasets,
    steps_per_epoch,
    to_rgb,
)
from .knn import knn_accuracy, knn_top1
from .lars import LARS
from .logging import JsonlLogger, StepTimer, read_jsonl
from .loop import LoopSettings, NonFiniteLossError, TrainingInterrupted, add_loop_arguments, run_training_loop
from .optim import (
    cosine_lr_at,
    layer_id_for_vit,
    lr_at_step,
    param_groups_layer_decay,
    param_groups_weight_decay,
    scaled_learning_rate,
    set_learning_rate,
)
from .visualize import grid_shape, reconstruction_grid, save_reconstruction_grid

__all__ = [
    "EpochDataLoaders",
    "JsonlLogger",
    "LARS",
    "LoopSettings",
    "NonFiniteLossError",
    "OptionError",
    "StepTimer",
    "TrainingInterrupted",
    "TrainingProgress",
    "add_loop_arguments",
    "build_classifier",
    "build_finetune_parser",
    "build_finetune_transform",
    "build_linprobe_parser",
    "build_linprobe_transform",
    "build_mixup",
    "evaluate_classifier",
    "layer_id_for_vit",
    "param_groups_layer_decay",
    "run_training_loop",
    "validate_classification_args",
    "build_eval_loader",
    "build_eval_transform",
    "build_pretrain_parser",
    "build_pretrain_transform",
    "cosine_lr_at",
    "grid_shape",
    "knn_accuracy",
    "knn_top1",
    "load_checkpoint",
    "load_image_datasets",
    "lr_at_step",
    "param_groups_weight_decay",
    "parse_args_with_recipe",
    "read_jsonl",
    "reconstruction_grid",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_reconstruction_grid",
    "scaled_learning_rate",
    "set_learning_rate",
    "should_checkpoint",
    "steps_per_epoch",
    "to_rgb",
    "validate_pretrain_args",
]
