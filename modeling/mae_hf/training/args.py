"""Command-line options for the training scripts: argparse groups + YAML recipes with command-line overrides.

A recipe is a YAML mapping whose keys are option names (``learning_rate``, not ``--learning-rate``). Values from
the recipe become the parser's defaults, so anything given on the command line wins. Every option is documented
in ``--help``; a bad value stops the run with one line naming the option and the fix.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from ..cli import OptionParser
from ..configuration_mae_hf import MAE_PRESETS


class OptionError(ValueError):
    """A bad command-line or recipe value; the message names the option and how to fix it."""


def _checkpointing_steps(value: str) -> str | int:
    if value == "epoch":
        return value
    try:
        steps = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'epoch', got {value!r}") from None
    if steps <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'epoch', got {value!r}")
    return steps


def parse_overrides(value: str | dict | None) -> dict[str, Any]:
    """``"hidden_size=128,num_hidden_layers=4"`` (command line) or a mapping (recipe) → dict with YAML-typed values."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    overrides = {}
    for item in str(value).split(","):
        if "=" not in item:
            raise OptionError(f"--model_config_overrides: expected key=value pairs separated by commas, got {item!r}.")
        key, raw = item.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(raw)
    return overrides


# ---------------------------------------------------------------------------------------------------------------
# Reusable option groups (pre-training now; fine-tuning / linear probing reuse them)
# ---------------------------------------------------------------------------------------------------------------


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=str,
        default=None,
        help="YAML recipe (e.g. configs/pretrain_vit_base_patch16.yaml); its keys are option names, and options "
        "given on the command line override it.",
    )


def add_data_args(parser: argparse.ArgumentParser, decode_on_device: bool = False) -> None:
    """The data options; ``decode_on_device`` adds ``--decode_on_device`` (pre-training's augmentation only)."""
    group = parser.add_argument_group("data (read with 🤗 datasets)")
    group.add_argument("--train_dir", type=str, default=None, help="Local image folder for training (imagefolder).")
    group.add_argument(
        "--validation_dir", type=str, default=None, help="Local image folder for validation (imagefolder)."
    )
    group.add_argument(
        "--dataset_name", type=str, default=None, help="Hub dataset id or local dataset path/script for load_dataset."
    )
    group.add_argument("--dataset_config_name", type=str, default=None, help="Configuration of --dataset_name.")
    group.add_argument("--train_split", type=str, default="train", help="Split used for training.")
    group.add_argument(
        "--validation_split",
        type=str,
        default="validation",
        help="Split used for validation (reconstructions, kNN queries); missing is allowed.",
    )
    group.add_argument(
        "--image_column_name",
        type=str,
        default=None,
        help="Image column; default: the first column with the datasets Image feature, else 'image'/'img'.",
    )
    group.add_argument(
        "--label_column_name",
        type=str,
        default=None,
        help="Label column (kNN monitor, classification); default: the first ClassLabel column, else 'label'.",
    )
    group.add_argument(
        "--streaming",
        action="store_true",
        help="Iterate the dataset without materialising it (IterableDataset, sharded across processes); "
        "needs --max_train_steps.",
    )
    group.add_argument(
        "--shuffle_buffer_size", type=int, default=10_000, help="Shuffle buffer of the streaming dataset."
    )
    group.add_argument(
        "--num_examples_per_epoch",
        type=int,
        default=None,
        help="Streaming: images in one pass, so epochs (warm-up, schedule, logs) convert to steps; default: the "
        "dataset info's split size, else one optimizer step counts as one epoch.",
    )
    group.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N training images.")
    group.add_argument("--max_eval_samples", type=int, default=None, help="Use only the first N validation images.")
    group.add_argument("--cache_dir", type=str, default=None, help="datasets cache directory.")
    group.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=0,
        help="DataLoader worker processes (0 = load in the main process; bit-exact resume needs 0).",
    )
    group.add_argument("--input_size", type=int, default=None, help="Crop size; default: the model's image_size.")
    group.add_argument(
        "--strict_data",
        action="store_true",
        help="Stop on the first unreadable image (naming the file) instead of skipping and counting such files.",
    )
    if decode_on_device:
        group.add_argument(
            "--decode_on_device",
            action="store_true",
            help="Decode JPEGs and crop on the accelerator with torchvision's nvJPEG decode (decode_jpeg on CUDA): "
            "workers only read bytes and draw crop boxes; other formats are decoded on the workers; results differ "
            "from the PIL path only by decoder/resize rounding. Decoding runs one batch ahead of the step (on a side "
            "CUDA stream) and counts in data_time.",
        )


def add_optimization_args(parser: argparse.ArgumentParser, blr: float, betas: tuple[float, float]) -> None:
    group = parser.add_argument_group("optimisation")
    group.add_argument(
        "--per_device_train_batch_size", type=int, default=64, help="Images per process per forward pass."
    )
    group.add_argument(
        "--gradient_accumulation_steps",
        type=int,
        default=1,
        help="Forward/backward passes per optimizer step (the reference's accum_iter).",
    )
    group.add_argument(
        "--blr",
        type=float,
        default=blr,
        help="Base learning rate: lr = blr × effective batch / 256, effective batch = per-device batch × "
        "accumulation × processes.",
    )
    group.add_argument(
        "--learning_rate", type=float, default=None, help="Absolute learning rate; overrides the --blr scaling."
    )
    group.add_argument("--min_lr", type=float, default=0.0, help="Lower bound of the cosine schedule.")
    group.add_argument("--weight_decay", type=float, default=0.05, help="AdamW weight decay (not on biases/1-D).")
    group.add_argument("--adam_beta1", type=float, default=betas[0], help="AdamW beta1.")
    group.add_argument("--adam_beta2", type=float, default=betas[1], help="AdamW beta2.")
    group.add_argument(
        "--warmup_epochs", type=float, default=40, help="Epochs of linear warm-up from 0 (per iteration)."
    )
    group.add_argument("--num_train_epochs", type=float, default=400, help="Length of the run (and schedule).")
    group.add_argument(
        "--max_train_steps",
        type=int,
        default=None,
        help="Stop after this many optimizer steps; the schedule then ends at this step if it is earlier.",
    )
    group.add_argument(
        "--clip_grad", type=float, default=None, help="Clip the gradient norm to this value (default: no clipping)."
    )
    group.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=["no", "bf16", "fp16"],
        help="Mixed precision through Accelerate; default: the `accelerate launch` setting. fp16 needs a GPU.",
    )
    group.add_argument("--seed", type=int, default=0, help="Random seed; process r uses seed + r.")


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("outputs and checkpoints")
    group.add_argument("--output_dir", type=str, default=None, help="Where the model folder, logs, grids go.")
    group.add_argument(
        "--checkpointing_steps",
        type=_checkpointing_steps,
        default=None,
        help="Save the full training state every N optimizer steps, or 'epoch' at every epoch end.",
    )
    group.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep only the newest N checkpoints.")
    group.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help="A checkpoint folder, or 'latest' (newest under OUTPUT_DIR/checkpoints; starts fresh if none).",
    )


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging")
    group.add_argument(
        "--logging_steps", type=int, default=10, help="Write log.jsonl / trackers every N optimizer steps."
    )
    group.add_argument(
        "--report_to",
        type=str,
        default="tensorboard",
        help="Accelerate trackers: 'tensorboard', 'wandb', 'all', or 'none'.",
    )
    group.add_argument("--project_name", type=str, default="mae", help="Tracker project/run name.")
    group.add_argument("--disable_tqdm", action="store_true", help="No progress bar.")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model_preset",
        type=str,
        default="mae-vit-base-patch16",
        choices=sorted(MAE_PRESETS),
        help="Architecture to build from scratch.",
    )
    group.add_argument(
        "--model_name_or_path",
        type=str,
        default=None,
        help="Start from a saved model folder / Hub id instead of a fresh --model_preset.",
    )
    group.add_argument(
        "--model_config_overrides",
        type=parse_overrides,
        default=None,
        help="MAEConfig fields to change, 'hidden_size=128,num_hidden_layers=4' (or a mapping in a recipe).",
    )


# ---------------------------------------------------------------------------------------------------------------
# Pre-training parser and recipe loading
# ---------------------------------------------------------------------------------------------------------------


def build_pretrain_parser() -> argparse.ArgumentParser:
    parser = OptionParser(
        description="Pre-train a Masked Autoencoder (MAE) with 🤗 Accelerate on images read with 🤗 datasets.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_recipe_args(parser)
    add_model_args(parser)
    group = parser.add_argument_group("MAE objective")
    group.add_argument("--mask_ratio", type=float, default=None, help="Fraction of patches removed (0.75).")
    group.add_argument(
        "--norm_pix_loss",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Regress per-patch normalised pixels (the reference recipe); default: the model config's value.",
    )
    add_data_args(parser, decode_on_device=True)
    add_optimization_args(parser, blr=1e-3, betas=(0.9, 0.95))
    add_checkpoint_args(parser)
    add_logging_args(parser)
    group = parser.add_argument_group("monitoring")
    group.add_argument(
        "--visualize_every",
        type=int,
        default=0,
        help="Save reconstruction.png (and log it) every N optimizer steps; always at the end. 0 = end only.",
    )
    group.add_argument("--num_visualize_images", type=int, default=8, help="Validation images in the grid.")
    group.add_argument(
        "--knn_every",
        type=int,
        default=0,
        help="kNN top-1 of frozen features (k=--knn_k, cosine) every N optimizer steps; 0 = off.",
    )
    group.add_argument("--knn_k", type=int, default=20, help="Neighbours of the kNN monitor.")
    group.add_argument("--knn_temperature", type=float, default=0.07, help="Similarity temperature of the vote.")
    group.add_argument(
        "--knn_train_dir",
        type=str,
        default=None,
        help="Labelled image folder of kNN memory; default: the training data (labels used only here).",
    )
    group.add_argument(
        "--knn_validation_dir",
        type=str,
        default=None,
        help="Labelled image folder of kNN queries; default: the validation data.",
    )
    group.add_argument("--knn_max_train_samples", type=int, default=10_000, help="Images of the kNN memory (first N).")
    return parser


def load_recipe(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a YAML recipe and check that every key is an option of ``parser``."""
    if not os.path.isfile(path):
        raise OptionError(f"--config: recipe file {path!r} not found; pass a YAML file such as configs/*.yaml.")
    with open(path, encoding="utf-8") as handle:
        recipe = yaml.safe_load(handle) or {}
    if not isinstance(recipe, dict):
        raise OptionError(f"--config: {path} must be a YAML mapping of option names to values.")
    known = {action.dest for action in parser._actions}
    for key in recipe:
        if key not in known or key == "config":
            raise OptionError(f"--config: {path} has unknown option {key!r}; see --help for the option names.")
    return recipe


def parse_args_with_recipe(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``: defaults < recipe (``--config``) < command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_path = None
    for index, item in enumerate(argv):
        if item == "--config" and index + 1 < len(argv):
            recipe_path = argv[index + 1]
        elif item.startswith("--config="):
            recipe_path = item.split("=", 1)[1]
    if recipe_path:
        recipe = load_recipe(recipe_path, parser)
        if "model_config_overrides" in recipe:
            recipe["model_config_overrides"] = parse_overrides(recipe["model_config_overrides"])
        if "checkpointing_steps" in recipe and recipe["checkpointing_steps"] is not None:
            recipe["checkpointing_steps"] = _checkpointing_steps(str(recipe["checkpointing_steps"]))
        parser.set_defaults(**recipe)
    return parser.parse_args(argv)


def validate_schedule_args(args: argparse.Namespace) -> None:
    """Epochs, warm-up, learning rates, weight decay and clipping: the options every training script shares."""
    if args.num_train_epochs <= 0:
        raise OptionError(f"--num_train_epochs must be positive, got {args.num_train_epochs}.")
    if args.warmup_epochs < 0:
        raise OptionError(f"--warmup_epochs must be >= 0, got {args.warmup_epochs}.")
    if args.learning_rate is not None and args.learning_rate <= 0:
        raise OptionError(f"--learning_rate must be positive, got {args.learning_rate}; or omit it to use --blr.")
    if args.blr <= 0:
        raise OptionError(f"--blr must be positive, got {args.blr}.")
    if args.min_lr < 0:
        raise OptionError(f"--min_lr must be >= 0, got {args.min_lr}.")
    if args.weight_decay < 0:
        raise OptionError(f"--weight_decay must be >= 0, got {args.weight_decay}.")
    if args.clip_grad is not None and args.clip_grad <= 0:
        raise OptionError(f"--clip_grad must be positive when given, got {args.clip_grad}.")


def validate_pretrain_args(args: argparse.Namespace) -> None:
    """Raise ``OptionError`` with one line naming the option and the fix."""
    if not args.output_dir:
        raise OptionError("--output_dir is required: the folder that receives the model, logs and checkpoints.")
    if not args.train_dir and not args.dataset_name:
        raise OptionError("No training data: pass --train_dir IMAGE_FOLDER or --dataset_name NAME.")
    if args.train_dir and args.dataset_name:
        raise OptionError("Pass either --train_dir or --dataset_name, not both.")
    for name in ("train_dir", "validation_dir", "knn_train_dir", "knn_validation_dir"):
        path = getattr(args, name, None)
        if path and not os.path.isdir(path):
            raise OptionError(f"--{name}: {path!r} is not a directory; pass a folder of images (class sub-folders).")
    if args.streaming and not args.max_train_steps:
        raise OptionError("--streaming needs --max_train_steps: the length of a streamed dataset is unknown.")
    positive_ints = (
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "logging_steps",
        "num_visualize_images",
        "knn_k",
        "shuffle_buffer_size",
    )
    for name in positive_ints:
        if getattr(args, name) <= 0:
            raise OptionError(f"--{name} must be a positive integer, got {getattr(args, name)}.")
    for name in (
        "max_train_steps",
        "checkpoints_total_limit",
        "max_train_samples",
        "max_eval_samples",
        "num_examples_per_epoch",
    ):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise OptionError(f"--{name} must be positive when given, got {value}.")
    for name in ("visualize_every", "knn_every", "dataloader_num_workers"):
        if getattr(args, name) < 0:
            raise OptionError(f"--{name} must be >= 0, got {getattr(args, name)}.")
    validate_schedule_args(args)
    for name in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise OptionError(f"--{name} must be in [0, 1), got {getattr(args, name)}.")
    if args.knn_temperature <= 0:
        raise OptionError(f"--knn_temperature must be positive, got {args.knn_temperature}.")
    if args.knn_max_train_samples <= 0:
        raise OptionError(f"--knn_max_train_samples must be positive, got {args.knn_max_train_samples}.")
    if args.mask_ratio is not None and not 0.0 <= args.mask_ratio < 1.0:
        raise OptionError(f"--mask_ratio must be in [0, 1), got {args.mask_ratio}; the reference uses 0.75.")
    # argparse checks ``choices`` on the command line only; recipe values arrive as defaults and are checked here.
    if args.model_preset not in MAE_PRESETS:
        raise OptionError(f"--model_preset {args.model_preset!r} is not one of {sorted(MAE_PRESETS)}.")
    if args.mixed_precision not in (None, "no", "bf16", "fp16"):
        raise OptionError(f"--mixed_precision must be no, bf16 or fp16, got {args.mixed_precision!r}.")
    if args.report_to not in ("tensorboard", "wandb", "all", "none"):
        raise OptionError(f"--report_to must be tensorboard, wandb, all or none, got {args.report_to!r}.")
    if args.knn_every and not (args.knn_validation_dir or args.validation_dir or args.dataset_name):
        raise OptionError(
            "--knn_every needs labelled validation images: pass --validation_dir or --knn_validation_dir."
        )
    if args.resume_from_checkpoint and args.resume_from_checkpoint != "latest":
        if not os.path.isdir(args.resume_from_checkpoint):
            raise OptionError(
                f"--resume_from_checkpoint: {args.resume_from_checkpoint!r} is not a checkpoint folder; "
                "pass one under OUTPUT_DIR/checkpoints or 'latest'."
            )
    if args.mixed_precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise OptionError("--mixed_precision fp16 needs a CUDA GPU (on CPU it would silently run fp32); use bf16.")
    validate_paths(args)
    validate_model_args(args)


def validate_paths(args: argparse.Namespace) -> None:
    """Files and folders named by the options exist and are of the right kind (cheap checks, nothing loaded)."""
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise OptionError(f"--output_dir: {args.output_dir!r} is a file; pass a folder (created if missing).")
    if args.dataset_name and _looks_local(args.dataset_name) and not os.path.exists(args.dataset_name):
        raise OptionError(f"--dataset_name: {args.dataset_name!r} does not exist; pass a Hub dataset id or a path.")
    if args.resume_from_checkpoint and args.resume_from_checkpoint != "latest":
        state_file = os.path.join(args.resume_from_checkpoint, "training_state.json")  # checkpoint.STATE_FILE
        if not os.path.isfile(state_file):
            raise OptionError(
                f"--resume_from_checkpoint: {args.resume_from_checkpoint!r} has no training_state.json (not a "
                "complete checkpoint); pass a checkpoint_<step> folder under OUTPUT_DIR/checkpoints or 'latest'."
            )


def _looks_local(name: str) -> bool:
    """A filesystem path rather than a Hub id ('org/name')."""
    return os.path.isabs(name) or name.startswith(("./", "../", "~")) or name.count("/") > 1


def validate_model_args(args: argparse.Namespace, config_class: type | None = None) -> None:
    """The model options agree before anything is built: known ``--model_config_overrides`` fields, an
    ``--input_size`` equal to the model's image size and divisible by its patch size, and a
    ``--model_name_or_path`` folder that holds a model of this architecture (``config.json`` model_type)."""
    import dataclasses
    import json

    from ..configuration_mae_hf import MAEConfig

    config_class = config_class or MAEConfig
    overrides = dict(args.model_config_overrides or {})
    fields = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise OptionError(
            f"--model_config_overrides: unknown {config_class.__name__} field(s) {unknown}; see config.json keys."
        )
    if args.input_size is not None and args.input_size <= 0:
        raise OptionError(f"--input_size must be a positive integer, got {args.input_size}.")
    source = args.model_name_or_path
    if source:
        if _looks_local(source) or os.path.exists(source):
            config_path = os.path.join(source, "config.json")
            if not os.path.isfile(config_path):
                raise OptionError(
                    f"--model_name_or_path: {source!r} has no config.json; pass a folder saved by this project "
                    "(save_pretrained) or a Hub id."
                )
            with open(config_path, encoding="utf-8") as handle:
                model_type = json.load(handle).get("model_type")
            if model_type != config_class.model_type:
                raise OptionError(
                    f"--model_name_or_path: {source!r} holds a {model_type!r} model, not {config_class.model_type!r};"
                    " convert it first with scripts/convert_checkpoint.py."
                )
        return  # image and patch sizes of a saved model are checked after it is loaded
    preset = {**MAE_PRESETS.get(args.model_preset, {}), **overrides}
    image_size = preset.get("image_size", 224)
    patch_size = preset.get("patch_size", 16)
    if not isinstance(patch_size, int) or patch_size <= 0 or image_size % patch_size:
        raise OptionError(
            f"--model_config_overrides: image_size {image_size} is not divisible by patch_size {patch_size}."
        )
    if args.input_size is not None and args.input_size != image_size:
        hint = "divisible by" if args.input_size % patch_size else "equal to"
        raise OptionError(
            f"--input_size {args.input_size} must equal the model's image_size {image_size} ({hint} patch size "
            f"{patch_size}); add image_size={args.input_size} to --model_config_overrides."
        )


__all__ = [
    "OptionError",
    "add_checkpoint_args",
    "add_data_args",
    "add_logging_args",
    "add_model_args",
    "add_optimization_args",
    "add_recipe_args",
    "build_pretrain_parser",
    "load_recipe",
    "parse_args_with_recipe",
    "parse_overrides",
    "validate_model_args",
    "validate_paths",
    "validate_pretrain_args",
]
