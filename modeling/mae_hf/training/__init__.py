"""Reusable training parts (pre-training now, fine-tuning / linear probing next): options and recipes, data,
optimisation, checkpoints, logging, reconstruction grids, kNN monitor and model cards."""

from .args import OptionError, build_pretrain_parser, parse_args_with_recipe, validate_pretrain_args
from .checkpoint import TrainingProgress, load_checkpoint, resolve_checkpoint, save_checkpoint, should_checkpoint
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
from .logging import JsonlLogger, StepTimer, read_jsonl
from .optim import cosine_lr_at, lr_at_step, param_groups_weight_decay, scaled_learning_rate, set_learning_rate
from .visualize import grid_shape, reconstruction_grid, save_reconstruction_grid

__all__ = [
    "EpochDataLoaders",
    "JsonlLogger",
    "OptionError",
    "StepTimer",
    "TrainingProgress",
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
