"""Publishing model folders to the Hugging Face Hub (or any Hub-compatible endpoint), and their model cards.

The endpoint is ``HF_ENDPOINT`` (read by huggingface_hub when it is imported) unless one is passed; the token is
``--hub_token`` / ``token=``, else ``HF_TOKEN``, else the one saved by ``hf auth login``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

# What a model repository receives: weights, configs, remote code, the card. Everything else (training checkpoints,
# logs, TensorBoard runs, metrics files) stays local.
UPLOAD_ALLOW_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "*.py",
    "README.md",
    "*.png",
)
UPLOAD_IGNORE_PATTERNS: tuple[str, ...] = (
    "checkpoints/*",
    "checkpoint-*/*",
    "step_*/*",
    "epoch_*/*",
    "runs/*",
    "logs/*",
    "*.jsonl",
    "*.log",
    "events.out.tfevents.*",
    "*.pth",
    "*.pt",
    "*.bin",
    "*.ckpt",
    "__pycache__/*",
)
REQUIRED_FILES: tuple[str, ...] = ("config.json", "model.safetensors")


def write_model_card(
    folder: str | os.PathLike,
    *,
    model_name: str,
    architecture: str,
    pipeline_tag: str = "image-feature-extraction",
    remote_code: bool = True,
    repo_id: str | None = None,
    description: str | None = None,
    license: str = "apache-2.0",
    datasets: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    base_model: str | None = None,
) -> str:
    """Write ``folder/README.md`` from ``model_cards/model.md``: metadata (license, ``library_name: transformers``,
    ``pipeline_tag``, tags starting with ``mae``) and how to load the model. Returns the card's path.

    The default license is this project's (Apache-2.0), for models trained with it; weights converted from
    facebookresearch/mae are CC BY-NC 4.0 (``convert_to_folder`` says so).
    """
    from huggingface_hub import ModelCardData

    from .cards import render_model_card

    card_tags = ["mae", "masked-autoencoder", "vision", "vit"]
    if remote_code:
        card_tags += ["mae_hf", "custom_code"]
    card_tags += [tag for tag in tags or () if tag not in card_tags]
    data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=card_tags,
        datasets=list(datasets) if datasets else None,
        base_model=base_model,
        model_name=model_name,
    )
    auto_class = {
        "MAEForPreTraining": "AutoModelForPreTraining",
        "ViTMAEForPreTraining": "AutoModelForPreTraining",
        "MAEForImageClassification": "AutoModelForImageClassification",
    }.get(architecture, "AutoModel")
    path = os.path.join(os.fspath(folder), "README.md")
    render_model_card(
        "model.md",
        data,
        path,
        model_name=model_name,
        model_id=repo_id or model_name,
        architecture=architecture,
        description=description,
        auto_class=auto_class,
        trust=", trust_remote_code=True" if remote_code else "",
        pipeline_tag=pipeline_tag,
        remote_code=remote_code,
    )
    return path


def _check_folder(folder: str) -> None:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Model folder {folder!r} does not exist; pass the folder written by save_pretrained.")
    missing = [name for name in REQUIRED_FILES if not os.path.isfile(os.path.join(folder, name))]
    if missing and not os.path.isfile(os.path.join(folder, "model.safetensors.index.json")):
        raise FileNotFoundError(
            f"Model folder {folder!r} lacks {missing}; save the model with save_pretrained (safetensors) first."
        )
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    if config.get("model_type") == "mae_hf" and not config.get("auto_map"):
        raise ValueError(
            f"{folder!r}/config.json has no auto_map, so the Hub copy would not load with trust_remote_code; "
            "save it with this package's save_pretrained."
        )


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str = "Upload MAE model",
    revision: str | None = None,
    create_card: bool = True,
    card_kwargs: dict[str, Any] | None = None,
) -> str:
    """Create ``repo_id`` if needed and upload the model files of ``folder`` (see ``UPLOAD_ALLOW_PATTERNS``; never
    checkpoints, logs or TensorBoard runs). Writes a model card first if the folder has none. Returns the commit URL.
    """
    from huggingface_hub import HfApi

    folder = os.fspath(folder)
    _check_folder(folder)
    if create_card and not os.path.isfile(os.path.join(folder, "README.md")):
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        architecture = (config.get("architectures") or ["MAEModel"])[0]
        defaults: dict[str, Any] = dict(
            model_name=repo_id.split("/")[-1],
            repo_id=repo_id,
            architecture=architecture,
            pipeline_tag="image-classification" if "Classification" in architecture else "image-feature-extraction",
            remote_code=config.get("model_type") == "mae_hf",
        )
        write_model_card(folder, **{**defaults, **(card_kwargs or {})})
    api = HfApi(endpoint=endpoint, token=token)
    repo_url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_url.repo_id,
        folder_path=folder,
        repo_type="model",
        revision=revision,
        commit_message=commit_message,
        allow_patterns=list(UPLOAD_ALLOW_PATTERNS),
        ignore_patterns=list(UPLOAD_IGNORE_PATTERNS),
    )
    return commit.commit_url


def add_hub_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--push_to_hub``, ``--hub_model_id``, ``--hub_private``, ``--hub_token`` to a training script."""
    group = parser.add_argument_group("Hugging Face Hub")
    group.add_argument(
        "--push_to_hub", action="store_true", help="Upload the final model folder to the Hub when training ends."
    )
    group.add_argument(
        "--hub_model_id", default=None, help="Repository to push to, 'user/name' or 'org/name' (needs --push_to_hub)."
    )
    group.add_argument("--hub_private", action="store_true", help="Create the repository as private.")
    group.add_argument(
        "--hub_token",
        default=None,
        help="Hub token; defaults to $HF_TOKEN or the token saved by `hf auth login`. The endpoint is $HF_ENDPOINT.",
    )
    return parser


def check_hub_arguments(args: argparse.Namespace) -> None:
    """Fail before training, not after, when ``--push_to_hub`` lacks ``--hub_model_id``."""
    if getattr(args, "push_to_hub", False) and not getattr(args, "hub_model_id", None):
        raise ValueError("--push_to_hub needs --hub_model_id user/name (the repository to create or update).")
    if getattr(args, "hub_model_id", None) and "/" not in args.hub_model_id:
        raise ValueError(f"--hub_model_id must look like 'user/name', got {args.hub_model_id!r}.")


def push_folder_from_args(
    args: argparse.Namespace, folder: str | os.PathLike, card_kwargs: dict[str, Any] | None = None
) -> str | None:
    """Push ``folder`` if ``args.push_to_hub``; returns the commit URL (``None`` when not pushing)."""
    if not getattr(args, "push_to_hub", False):
        return None
    check_hub_arguments(args)
    return push_folder(
        folder,
        args.hub_model_id,
        private=True if args.hub_private else None,
        token=args.hub_token,
        card_kwargs=card_kwargs,
    )


__all__ = [
    "UPLOAD_ALLOW_PATTERNS",
    "UPLOAD_IGNORE_PATTERNS",
    "add_hub_arguments",
    "check_hub_arguments",
    "push_folder",
    "push_folder_from_args",
    "write_model_card",
]
