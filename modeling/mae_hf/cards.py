"""Model cards rendered from the Jinja templates in ``model_cards/`` with huggingface_hub's ``ModelCard``."""

from __future__ import annotations

import importlib.resources
import os
import warnings
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData


def _installed_templates_dir() -> str | None:
    """The templates installed with the package (``model_cards/`` of the repository, as ``mae_hf.model_cards``)."""
    try:
        return str(importlib.resources.files("mae_hf.model_cards"))
    except ModuleNotFoundError:
        return None


def find_template(name: str, templates_dir: str | None = None) -> str:
    """``model_cards/<name>``, looked up in ``templates_dir``, ``$MAE_MODEL_CARDS_DIR`` and the installed package."""
    for folder in (templates_dir, os.environ.get("MAE_MODEL_CARDS_DIR"), _installed_templates_dir()):
        if folder and os.path.isfile(os.path.join(folder, name)):
            return os.path.abspath(os.path.join(folder, name))
    raise FileNotFoundError(f"Model card template {name!r} not found; pass templates_dir or set MAE_MODEL_CARDS_DIR.")


def sample_curve(records: list[dict[str, Any]], key: str = "loss", points: int = 10) -> list[dict[str, Any]]:
    """Up to ``points`` evenly spaced (step, epoch, value) rows of a logged curve, always with the last one."""
    rows = [record for record in records if key in record]
    if len(rows) <= points:
        return rows
    picked = [rows[round(i * (len(rows) - 1) / (points - 1))] for i in range(points)]
    return picked


def render_model_card(
    template: str,
    card_data: ModelCardData,
    path: str,
    templates_dir: str | None = None,
    **variables: Any,
) -> ModelCard:
    """Render ``model_cards/<template>`` with ``variables`` and save it as ``path`` (usually README.md). Without the
    templates (an installed package outside the repository) huggingface_hub's default card is written instead, so
    a finished training run never fails on its card."""
    try:
        template_path = find_template(template, templates_dir)
    except FileNotFoundError as error:
        warnings.warn(f"{error} Writing huggingface_hub's default model card instead.", stacklevel=2)
        template_path = None
    if template_path is None:
        card = ModelCard.from_template(card_data, model_id=variables.get("model_id"))
    else:
        card = ModelCard.from_template(card_data, template_path=template_path, **variables)
    card.save(path)
    return card


def pretrain_card_data(
    dataset_name: str | None = None, tags: list[str] | None = None, license: str = "apache-2.0"
) -> ModelCardData:
    """Metadata of a pre-trained MAE (encoder + decoder): feature extraction, self-supervised."""
    return ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="image-feature-extraction",
        tags=["mae", "masked-autoencoder", "vision", "self-supervised", "mae_hf", *(tags or [])],
        datasets=[dataset_name] if dataset_name else None,
    )


def classifier_card_data(
    model_name: str,
    dataset_name: str | None = None,
    base_model: str | None = None,
    top1: float | None = None,
    top5: float | None = None,
    dataset_label: str = "images",
    license: str = "apache-2.0",
    tags: list[str] | None = None,
) -> ModelCardData:
    """Metadata of a fine-tuned / linear-probed classifier; with top-1 / top-5 it gets ``eval_results`` and hence a
    ``model-index``. The licence defaults to this project's Apache-2.0 (pass cc-by-nc-4.0 for weights derived from
    the reference's). ``base_model`` is only kept when it looks like a Hub id (a local path is not valid metadata)."""
    eval_results = None
    if top1 is not None:
        dataset_type = dataset_name or dataset_label
        eval_results = [
            EvalResult(
                task_type="image-classification",
                dataset_type=dataset_type,
                dataset_name=dataset_name or dataset_label,
                metric_type="accuracy",
                metric_name=f"top-{k}",
                metric_value=value,
            )
            for k, value in ((1, top1), (5, top5))
            if value is not None
        ]
    hub_like = base_model is not None and base_model.count("/") == 1 and not os.path.exists(base_model)
    return ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["mae", "vision", "image-classification", "mae_hf", *(tags or [])],
        datasets=[dataset_name] if dataset_name else None,
        base_model=base_model if hub_like else None,
        model_name=model_name,
        eval_results=eval_results,
    )


__all__ = ["classifier_card_data", "find_template", "pretrain_card_data", "render_model_card", "sample_curve"]
