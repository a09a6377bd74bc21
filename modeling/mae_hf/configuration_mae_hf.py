"""Configuration of MAE (He et al., "Masked Autoencoders Are Scalable Vision Learners").

This file travels to the Hub with saved models (``trust_remote_code``): it imports only transformers.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

# Architectures of the reference (facebookresearch/mae) factories, plus a tiny one for tests.
# Every reference model uses the 512-d, 8-block, 16-head decoder and mlp_ratio 4.
MAE_PRESETS: dict[str, dict[str, Any]] = {
    "mae-vit-base-patch16": dict(
        image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12
    ),
    "mae-vit-large-patch16": dict(
        image_size=224, patch_size=16, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16
    ),
    "mae-vit-huge-patch14": dict(
        image_size=224, patch_size=14, hidden_size=1280, num_hidden_layers=32, num_attention_heads=16
    ),
    "mae-vit-tiny-test": dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
    ),
}


class MAEConfig(PreTrainedConfig):
    r"""Configuration of the MAE encoder, its pre-training decoder and its classification heads.

    Defaults are the reference ViT-B/16 with the 512-d 8-block decoder; ``MAEConfig.from_preset`` gives the others.

    Args:
        image_size: input resolution (square), divisible by ``patch_size``.
        patch_size: side of the square patches.
        num_channels: input channels.
        hidden_size / num_hidden_layers / num_attention_heads: encoder width, depth and heads.
        mlp_ratio: MLP hidden width as a multiple of ``hidden_size``; ``intermediate_size`` overrides it.
        qkv_bias: bias on the fused query/key/value projection (reference: True).
        layer_norm_eps: epsilon of every LayerNorm (reference: 1e-6).
        hidden_dropout_prob / attention_probs_dropout_prob: dropout after projections / on attention weights.
        drop_path_rate: stochastic depth of the encoder, rising linearly from 0 at the first block.
        decoder_hidden_size / decoder_num_hidden_layers / decoder_num_attention_heads: the pre-training decoder.
        mask_ratio: fraction of patches removed during pre-training, in [0, 1).
        norm_pix_loss: regress per-patch normalised pixels (mean 0, unit unbiased variance).
        global_pool: classifier pools the patch tokens (mean + ``fc_norm``) instead of taking the cls token.
        linear_probe: classifier head is ``BatchNorm1d(affine=False) -> Linear`` (MoCo v3 / MAE linear probing).
        label_smoothing: smoothing of the classifier's cross-entropy for hard labels.
        initializer_range: std of the normal init of the cls and mask tokens (reference: 0.02).
        head_init_std: std of the truncated-normal init of the classifier weights; ``None`` gives the
            reference value, 2e-5 for fine-tuning and 0.01 for linear probing.
    """

    model_type = "mae_hf"
    _auto_class = "AutoConfig"

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float = 4.0
    intermediate_size: int | None = None
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.0
    decoder_hidden_size: int = 512
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 16
    decoder_intermediate_size: int | None = None
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    global_pool: bool = True
    linear_probe: bool = False
    label_smoothing: float = 0.0
    initializer_range: float = 0.02
    head_init_std: float | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if self.intermediate_size is None:
            self.intermediate_size = int(self.hidden_size * self.mlp_ratio)
        if self.decoder_intermediate_size is None:
            self.decoder_intermediate_size = int(self.decoder_hidden_size * self.mlp_ratio)
        super().__post_init__(**kwargs)
        self.check_values()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> MAEConfig:
        """A reference architecture by name (see ``MAE_PRESETS``), with any field overridden."""
        if name not in MAE_PRESETS:
            raise ValueError(f"Unknown MAE preset {name!r}; choose one of {sorted(MAE_PRESETS)}.")
        return cls(**{**MAE_PRESETS[name], **overrides})

    @property
    def classifier_init_std(self) -> float:
        """``head_init_std``, else the reference's value for the head kind: 0.01 for a linear probe, 2e-5 for
        fine-tuning (resolved when used, so a saved config does not carry one kind's value to the other)."""
        if self.head_init_std is not None:
            return self.head_init_std
        return 0.01 if self.linear_probe else 2e-5

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def check_values(self) -> None:
        """Raise a ``ValueError`` naming the field and the fix for any value the model cannot be built with."""
        positive = (
            "image_size",
            "patch_size",
            "num_channels",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "decoder_hidden_size",
            "decoder_num_hidden_layers",
            "decoder_num_attention_heads",
            "decoder_intermediate_size",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"MAEConfig.{name} must be a positive integer, got {value!r}.")
        if self.mlp_ratio <= 0:
            raise ValueError(f"MAEConfig.mlp_ratio must be positive, got {self.mlp_ratio!r}.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"MAEConfig.image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size}); "
                f"use image_size={self.image_size // self.patch_size * self.patch_size or self.patch_size} "
                "or another patch_size."
            )
        for prefix, width, heads in (
            ("", self.hidden_size, self.num_attention_heads),
            ("decoder_", self.decoder_hidden_size, self.decoder_num_attention_heads),
        ):
            if width % heads:
                raise ValueError(
                    f"MAEConfig.{prefix}hidden_size ({width}) must be divisible by "
                    f"{prefix}num_attention_heads ({heads}); choose a head count that divides it."
                )
            if width % 4:
                raise ValueError(
                    f"MAEConfig.{prefix}hidden_size ({width}) must be divisible by 4 for the 2-D sin-cos "
                    "position embedding."
                )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(
                f"MAEConfig.mask_ratio must be in [0, 1), got {self.mask_ratio!r}; the reference uses 0.75."
            )
        for name in ("drop_path_rate", "hidden_dropout_prob", "attention_probs_dropout_prob", "label_smoothing"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"MAEConfig.{name} must be in [0, 1), got {value!r}.")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"MAEConfig.layer_norm_eps must be positive, got {self.layer_norm_eps!r}.")
        if (self.head_init_std is not None and self.head_init_std < 0) or self.initializer_range < 0:
            raise ValueError("MAEConfig.head_init_std and initializer_range must be non-negative.")


__all__ = ["MAE_PRESETS", "MAEConfig"]
