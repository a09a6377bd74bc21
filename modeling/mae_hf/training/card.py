"""Model cards rendered from the Jinja templates in ``model_cards/`` with huggingface_hub's ``ModelCard``."""

from __future__ import annotations

import os
import warnings
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

DEFAULT_TEMPLATES_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "model_cards")


def find_template(name: str, templates_dir: str | None = None) -> str:
    """``model_cards/<name>``, looked up in ``templates_dir``, ``$MAE_MODEL_CARDS_DIR`` and the repository."""
    for folder in (templates_dir, os.environ.get("MAE_MODEL_CARDS_DIR"), DEFAULT_TEMPLATES_DIR, "model_cards"):
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


def pretrain_card_data(dataset_name: str | None = None, tags: list[str] | None = None) -> ModelCardData:
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-feature-extraction",
        tags=["mae", "masked-autoencoder", "vision", "self-supervised", "mae_hf", *(tags or [])],
        datasets=[dataset_name] if dataset_name else None,
    )


__all__ = ["find_template", "pretrain_card_data", "render_model_card", "sample_curve"]
