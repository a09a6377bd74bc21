"""MAE (Masked Autoencoders) as transformers models, with the reference's numerics.

Importing this package registers the models with the Auto classes (``AutoConfig``, ``AutoModel``,
``AutoModelForPreTraining``, ``AutoModelForImageClassification``).
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from .configuration_mae_hf import MAE_PRESETS, MAEConfig
from .modeling_mae_hf import (
    MAEForImageClassification,
    MAEForPreTraining,
    MAEForPreTrainingOutput,
    MAEModel,
    MAEModelOutput,
    MAEPreTrainedModel,
    build_image_processor,
    get_2d_sincos_pos_embed,
    patchify,
    random_masking,
    resize_pos_embed,
    unpatchify,
)

__version__ = "0.1.0"

AutoConfig.register(MAEConfig.model_type, MAEConfig, exist_ok=True)
AutoModel.register(MAEConfig, MAEModel, exist_ok=True)
AutoModelForPreTraining.register(MAEConfig, MAEForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(MAEConfig, MAEForImageClassification, exist_ok=True)

__all__ = [
    "MAE_PRESETS",
    "MAEConfig",
    "MAEModel",
    "MAEForPreTraining",
    "MAEForImageClassification",
    "MAEPreTrainedModel",
    "MAEModelOutput",
    "MAEForPreTrainingOutput",
    "build_image_processor",
    "get_2d_sincos_pos_embed",
    "patchify",
    "unpatchify",
    "random_masking",
    "resize_pos_embed",
]
