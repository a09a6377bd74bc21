"""MAE (He et al., "Masked Autoencoders Are Scalable Vision Learners") for transformers.

Weight-compatible and numerically faithful to facebookresearch/mae: the same parameters (a fused ``qkv``
projection, pre-norm blocks, LayerNorm eps 1e-6, exact GELU), the same fixed 2-D sin-cos position embeddings,
the same random masking, patch order and (norm-pix) loss. Given the same weights and the same ``noise``,
outputs equal the reference's.

This file travels to the Hub with saved models (``trust_remote_code``): it imports only torch and transformers,
and its sibling configuration file relatively.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BitImageProcessor, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_mae_hf import MAEConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORM_PIX_EPS = 1e-6

# Written into every saved config.json so that each Auto class finds its model with ``trust_remote_code``.
AUTO_MAP = {
    "AutoConfig": "configuration_mae_hf.MAEConfig",
    "AutoModel": "modeling_mae_hf.MAEModel",
    "AutoModelForPreTraining": "modeling_mae_hf.MAEForPreTraining",
    "AutoModelForImageClassification": "modeling_mae_hf.MAEForImageClassification",
}


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class MAEModelOutput(ModelOutput):
    """Encoder output.

    last_hidden_state: (B, 1 + kept patches, D), cls token first, kept patches in shuffled order when masking.
    pooler_output: (B, D) mean of the patch tokens of ``last_hidden_state``.
    mask: (B, L) 0 = kept, 1 = removed, in the original patch order.
    ids_restore: (B, L) argsort of the shuffle; ``gather`` with it puts shuffled tokens back in order.
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class MAEForPreTrainingOutput(ModelOutput):
    """Pre-training output.

    loss: mean squared error over the removed patches (normalised-pixel targets under ``norm_pix_loss``).
    logits: (B, L, p*p*C) per-patch predictions in ``patchify`` order (row, column, channel).
    mask / ids_restore: as in ``MAEModelOutput``. hidden_states / attentions: the encoder's.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# ----------------------------------------------------------------------------------------------------------------
# Functions named after the paper's concepts
# ----------------------------------------------------------------------------------------------------------------


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int, cls_token: bool = False) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding of a ``grid_size``² patch grid, as the reference builds it.

    Token ``i * G + j`` (row i, column j) gets ``[sin(j w), cos(j w), sin(i w), cos(i w)]`` with
    ``w_k = 10000^(-k / (D/4))``: the first half encodes the column, the second the row (the reference's
    variable names say the opposite; checkpoints depend on this order). A zero row is prepended for the cls token.
    Computed in float64, returned in float32.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for a 2-D sin-cos embedding, got {embed_dim}")
    omega = torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4.0)
    omega = 1.0 / 10000**omega
    coords = torch.arange(grid_size, dtype=torch.float32).to(torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    col_angles = cols.reshape(-1, 1) * omega
    row_angles = rows.reshape(-1, 1) * omega
    pos_embed = torch.cat([col_angles.sin(), col_angles.cos(), row_angles.sin(), row_angles.cos()], dim=1)
    if cls_token:
        pos_embed = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), pos_embed], dim=0)
    return pos_embed.float()


def resize_pos_embed(pos_embed: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Bicubic resize of a square (1, prefix + G*G, D) position table to ``grid_size`` (the reference's
    ``interpolate_pos_embed``: prefix rows kept, patch rows resized as a 2-D grid, align_corners=False)."""
    prefix, patch_pos = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = math.isqrt(patch_pos.shape[1])
    if (old, old) == tuple(grid_size):
        return pos_embed
    dim = patch_pos.shape[-1]
    patch_pos = patch_pos.reshape(1, old, old, dim).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=tuple(grid_size), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([prefix, patch_pos], dim=1)


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, h*w, p*p*C): patches row-major, each vector ordered (row-in-patch, col, channel)."""
    batch, channels, height, width = pixel_values.shape
    p = patch_size
    if height % p or width % p:
        raise ValueError(f"Image size {height}x{width} is not divisible by the patch size {p}.")
    h, w = height // p, width // p
    x = pixel_values.reshape(batch, channels, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(batch, h * w, p * p * channels)


def unpatchify(patches: torch.Tensor, patch_size: int, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Inverse of ``patchify``; a square grid unless ``grid_size`` (h, w) is given."""
    batch, length, dim = patches.shape
    p = patch_size
    channels = dim // (p * p)
    if grid_size is None:
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(f"{length} patches do not form a square grid; pass grid_size=(h, w).")
        grid_size = (side, side)
    h, w = grid_size
    x = patches.reshape(batch, h, w, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(batch, channels, h * p, w * p)


def masking_indices(
    batch: int, length: int, mask_ratio: float, noise: torch.Tensor | None = None, device: torch.device | None = None
) -> tuple[torch.LongTensor, torch.Tensor, torch.LongTensor]:
    """Per-sample random masking by argsort of uniform noise, as the reference does: the patches with the smallest
    noise are kept. Returns ``ids_keep`` (B, kept) in shuffled order, the binary mask (B, L; 0 = kept, 1 = removed,
    original order) and ``ids_restore`` (B, L), the argsort of the shuffle, on ``device`` (default: the noise's)."""
    len_keep = int(length * (1 - mask_ratio))
    if device is None and noise is not None:
        device = noise.device
    if noise is None:
        noise = torch.rand(batch, length, device=device)
    elif noise.shape != (batch, length):
        raise ValueError(f"noise must have shape (batch, num_patches) = {(batch, length)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise.to(device), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, length, device=device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle[:, :len_keep], mask, ids_restore


def gather_tokens(tokens: torch.Tensor, ids: torch.LongTensor) -> torch.Tensor:
    """``tokens`` (B, L, D) at the positions ``ids`` (B, K) of each sample: (B, K, D)."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def random_masking(
    tokens: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.LongTensor]:
    """The reference's ``random_masking``: the kept tokens (in shuffled order), the mask and ``ids_restore``."""
    batch, length, _ = tokens.shape
    ids_keep, mask, ids_restore = masking_indices(batch, length, mask_ratio, noise, tokens.device)
    return gather_tokens(tokens, ids_keep), mask, ids_restore


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample: zero the residual branch with probability ``drop_prob``, rescale the rest."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
    return x * keep.div_(keep_prob)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against class probabilities (mixup / cutmix targets)."""
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ · scale) v, the reference's explicit attention; returns (B, N, heads, hd) and the weights."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class MAEPatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` convolution; tokens row-major (row outer, column inner).

    Given ``ids_keep``, only those patches are embedded: the convolution sees each patch alone, so cutting the kept
    patches out first and running it on them as a batch of ``p``x``p`` images gives the reference's tokens (the
    same values) for a quarter of the work at 75 % masking, forward and backward."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.proj = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size)

    def forward(self, pixel_values: torch.Tensor, ids_keep: torch.LongTensor | None = None) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.num_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}."
            )
        batch, channels, height, width = pixel_values.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"Image size {height}x{width} is not divisible by the patch size {p}.")
        if ids_keep is None:
            return self.proj(pixel_values).flatten(2).transpose(1, 2)
        patches = pixel_values.reshape(batch, channels, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5)
        kept = gather_tokens(patches.reshape(batch, -1, channels * p * p), ids_keep)
        return self.proj(kept.reshape(-1, channels, p, p)).reshape(batch, ids_keep.shape[1], -1)


class MAEAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (rows [q; k; v]) and any transformers backend."""

    def __init__(self, config: MAEConfig, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False  # bidirectional; sdpa assumes causal unless told
        self.attention_dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.proj_drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, width = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = self.proj_drop(self.proj(attn_output.reshape(batch, length, width)))
        return attn_output, attn_weights


class MAEMLP(nn.Module):
    """fc1 -> GELU (exact) -> dropout -> fc2 -> dropout."""

    def __init__(self, config: MAEConfig, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(hidden_states)))))


class MAEClassifierLinear(nn.Linear):
    """The classifier's linear layer; its own class so that init gives it trunc-normal(``classifier_init_std``)."""


class MAEBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + drop_path(attn(norm1(x))), then x + drop_path(mlp(norm2(x)))."""

    def __init__(
        self, config: MAEConfig, hidden_size: int, num_heads: int, intermediate_size: int, drop_path_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attn = MAEAttention(config, hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = MAEMLP(config, hidden_size, intermediate_size)
        self.drop_path_rate = drop_path_rate

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_output, attn_weights = self.attn(self.norm1(hidden_states), **kwargs)
        hidden_states = hidden_states + drop_path(attn_output, self.drop_path_rate, self.training)
        mlp_output = self.mlp(self.norm2(hidden_states))
        hidden_states = hidden_states + drop_path(mlp_output, self.drop_path_rate, self.training)
        return hidden_states, attn_weights

    def extra_repr(self) -> str:
        return f"drop_path_rate={self.drop_path_rate:.4f}"


# ----------------------------------------------------------------------------------------------------------------
# Pre-trained model base: weight init, saving, loading
# ----------------------------------------------------------------------------------------------------------------


def build_image_processor(config: MAEConfig) -> BitImageProcessor:
    """The reference evaluation transform as a stock processor: shorter side to ``image_size / crop_pct``
    (bicubic; crop_pct 224/256 up to 224 px, 1.0 above, as the reference), centre crop, ImageNet mean/std."""
    crop_pct = 224 / 256 if config.image_size <= 224 else 1.0
    return BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": int(config.image_size / crop_pct)},
        resample=3,  # PIL bicubic
        do_center_crop=True,
        crop_size={"height": config.image_size, "width": config.image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_convert_rgb=True,
    )


class MAEPreTrainedModel(PreTrainedModel):
    config_class = MAEConfig
    config: MAEConfig
    base_model_prefix = "mae"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["MAEBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # A classifier loaded into another image size resizes its learned position table from the checkpoint.
    _interpolate_pos_embed_on_load = False

    def _init_weights(self, module: nn.Module) -> None:
        """The reference's init: xavier-uniform Linear (bias 0) and patch conv viewed as a Linear (its bias keeps
        PyTorch's default), LayerNorm 1/0, fixed sin-cos position tables, normal(0.02) cls/mask tokens."""
        std = self.config.initializer_range
        if isinstance(module, MAEClassifierLinear):
            init.trunc_normal_(module.weight, std=self.config.classifier_init_std)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d):
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, MAEModel):
            grid = self.config.image_size // self.config.patch_size
            init.copy_(module.pos_embed, get_2d_sincos_pos_embed(module.pos_embed.shape[-1], grid, True)[None])
            init.normal_(module.cls_token, std=std)
        elif isinstance(module, MAEDecoder):
            grid = self.config.image_size // self.config.patch_size
            init.copy_(module.pos_embed, get_2d_sincos_pos_embed(module.pos_embed.shape[-1], grid, True)[None])
            init.normal_(module.mask_token, std=std)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """``PreTrainedModel.save_pretrained`` plus a full ``auto_map`` and, if absent, the image processor, so the
        folder loads with every Auto class (``trust_remote_code=True``) and with ``pipeline``."""
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        is_main_process = kwargs.get("is_main_process", True)
        if is_main_process and not os.path.exists(os.path.join(save_directory, "preprocessor_config.json")):
            build_image_processor(self.config).save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """``PreTrainedModel.from_pretrained``; loading into another ``image_size`` resizes the position tables:
        a classifier's learned table bicubically from the checkpoint (the reference's ``interpolate_pos_embed``),
        the fixed sin-cos tables of the pre-training model are rebuilt for the new grid."""
        target_size = kwargs.get("image_size")
        config = kwargs.get("config")
        if isinstance(config, MAEConfig):
            target_size = config.image_size
        resized = False
        if target_size is not None and not kwargs.get("ignore_mismatched_sizes", False):
            source = _read_source_config(pretrained_model_name_or_path, kwargs)
            if source is not None and source.get("image_size", target_size) != target_size:
                kwargs["ignore_mismatched_sizes"] = True
                resized = True
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model
        if resized and cls._interpolate_pos_embed_on_load:
            loaded._load_resized_pos_embed(pretrained_model_name_or_path, kwargs)
        return model

    def _load_resized_pos_embed(self, pretrained_model_name_or_path, kwargs) -> None:
        source = _read_checkpoint_tensor(pretrained_model_name_or_path, kwargs, ("mae.pos_embed", "pos_embed"))
        if source is None:
            return
        grid = self.config.image_size // self.config.patch_size
        with torch.no_grad():
            self.mae.pos_embed.copy_(resize_pos_embed(source.to(self.mae.pos_embed.dtype), (grid, grid)))


def _hub_kwargs(kwargs: dict) -> dict:
    keys = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
    return {k: kwargs[k] for k in keys if k in kwargs}


def _read_source_config(path, kwargs) -> dict | None:
    from transformers.utils import cached_file

    resolved = cached_file(path, "config.json", _raise_exceptions_for_missing_entries=False, **_hub_kwargs(kwargs))
    if resolved is None:
        return None
    with open(resolved) as f:
        return json.load(f)


def _read_checkpoint_tensor(path, kwargs, names: tuple[str, ...]) -> torch.Tensor | None:
    from safetensors import safe_open
    from transformers.utils import cached_file

    hub_kwargs = _hub_kwargs(kwargs)
    index = cached_file(
        path, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False, **hub_kwargs
    )
    if index is not None:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = {name: weight_map[name] for name in names if name in weight_map}
    else:
        files = {name: "model.safetensors" for name in names}
    for name, filename in files.items():
        resolved = cached_file(path, filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        if resolved is None:
            continue
        with safe_open(resolved, framework="pt") as f:
            if name in f.keys():
                return f.get_tensor(name)
    return None


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


class MAEModel(MAEPreTrainedModel):
    """The MAE encoder: a plain ViT with random masking.

    ``add_final_norm=False`` leaves out the last LayerNorm (the global-pool classifier uses ``fc_norm`` instead,
    as the reference does).
    """

    _auto_class = "AutoModel"

    def __init__(self, config: MAEConfig, add_final_norm: bool = True) -> None:
        super().__init__(config)
        config.check_values()
        self.patch_embed = MAEPatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        # Fixed sin-cos table (not trained during pre-training), still saved in the state dict.
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.hidden_size), requires_grad=False)
        rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            MAEBlock(config, config.hidden_size, config.num_attention_heads, config.intermediate_size, rate)
            for rate in rates
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if add_final_norm else nn.Identity()
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.patch_embed

    def position_embedding(self, height: int, width: int, interpolate_pos_encoding: bool) -> torch.Tensor:
        """The (1, 1 + h*w, D) table for an input of ``height`` x ``width`` pixels."""
        grid = (height // self.config.patch_size, width // self.config.patch_size)
        if grid[0] * grid[1] == self.pos_embed.shape[1] - 1 and grid[0] == grid[1]:
            return self.pos_embed
        if not interpolate_pos_encoding:
            raise ValueError(
                f"Input image size ({height}x{width}) doesn't match the model ({self.config.image_size}x"
                f"{self.config.image_size}); resize the input or pass interpolate_pos_encoding=True."
            )
        return resize_pos_embed(self.pos_embed, grid)

    def forward_encoder(
        self,
        pixel_values: torch.Tensor,
        mask_ratio: float,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        **kwargs,
    ) -> MAEModelOutput:
        batch = pixel_values.shape[0]
        pos_embed = self.position_embedding(*pixel_values.shape[-2:], interpolate_pos_encoding)
        if mask_ratio > 0:
            # The reference embeds every patch, adds positions, then drops the masked tokens; embedding and
            # positioning only the kept patches gives the same tokens without the work on the dropped ones.
            length = pos_embed.shape[1] - 1
            ids_keep, mask, ids_restore = masking_indices(batch, length, mask_ratio, noise, pixel_values.device)
            tokens = self.patch_embed(pixel_values, ids_keep)
            tokens = tokens + gather_tokens(pos_embed[:, 1:].expand(batch, -1, -1), ids_keep)
        else:  # no masking at all: every token, original order
            tokens = self.patch_embed(pixel_values) + pos_embed[:, 1:]
            length = tokens.shape[1]
            mask = tokens.new_zeros(batch, length, dtype=torch.float32)
            ids_restore = torch.arange(length, device=tokens.device).expand(batch, length)
        cls_tokens = (self.cls_token + pos_embed[:, :1]).expand(batch, -1, -1)
        hidden_states = torch.cat([cls_tokens, tokens], dim=1)

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in self.blocks:
            hidden_states, attn_weights = block(hidden_states, **kwargs)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        hidden_states = self.norm(hidden_states)
        return MAEModelOutput(
            last_hidden_state=hidden_states,
            pooler_output=hidden_states[:, 1:].mean(dim=1),
            mask=mask,
            ids_restore=ids_restore,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MAEModelOutput | tuple:
        """Encode images. ``mask_ratio=None`` (the default) masks nothing: every patch token in its original order,
        for features; ``MAEForPreTraining`` passes ``config.mask_ratio``. ``noise`` (B, L) fixes the masking."""
        output_hidden_states = _flag(output_hidden_states, self.config.output_hidden_states)
        output_attentions = _flag(output_attentions, self.config.output_attentions)
        _check_attentions_supported(self.config, output_attentions)
        mask_ratio = 0.0 if mask_ratio is None else mask_ratio
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        outputs = self.forward_encoder(
            pixel_values, mask_ratio, noise, interpolate_pos_encoding, output_hidden_states, output_attentions, **kwargs
        )
        return outputs if _flag(return_dict, self.config.return_dict) else outputs.to_tuple()


class MAEDecoder(nn.Module):
    """The light-weight pre-training decoder: embeds the visible tokens, fills the removed positions with the
    mask token, restores the order, adds its own fixed position table and predicts the pixels of every patch."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        width = config.decoder_hidden_size
        self.embed = nn.Linear(config.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, width), requires_grad=False)
        self.blocks = nn.ModuleList(
            MAEBlock(config, width, config.decoder_num_attention_heads, config.decoder_intermediate_size)
            for _ in range(config.decoder_num_hidden_layers)
        )
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.pred = nn.Linear(width, config.patch_size**2 * config.num_channels)

    def forward(
        self, hidden_states: torch.Tensor, ids_restore: torch.LongTensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        hidden_states = self.embed(hidden_states)
        batch, visible_plus_cls, width = hidden_states.shape
        length = ids_restore.shape[1]
        mask_tokens = self.mask_token.expand(batch, length + 1 - visible_plus_cls, -1)
        patches = torch.cat([hidden_states[:, 1:], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, width))
        hidden_states = torch.cat([hidden_states[:, :1], patches], dim=1)
        pos_embed = self.pos_embed
        if grid[0] * grid[1] != pos_embed.shape[1] - 1 or grid[0] != grid[1]:
            pos_embed = resize_pos_embed(pos_embed, grid)
        hidden_states = hidden_states + pos_embed
        for block in self.blocks:
            hidden_states, _ = block(hidden_states)
        return self.pred(self.norm(hidden_states))[:, 1:]


class MAEForPreTraining(MAEPreTrainedModel):
    """Encoder + decoder + the masked-patch reconstruction loss."""

    _auto_class = "AutoModelForPreTraining"

    def __init__(self, config: MAEConfig) -> None:
        super().__init__(config)
        self.mae = MAEModel(config)
        self.decoder = MAEDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.mae.patch_embed

    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return patchify(pixel_values, self.config.patch_size)

    def unpatchify(self, patches: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        return unpatchify(patches, self.config.patch_size, grid_size)

    def forward_encoder(self, pixel_values, mask_ratio, noise=None, interpolate_pos_encoding=False, **kwargs):
        return self.mae.forward_encoder(pixel_values, mask_ratio, noise, interpolate_pos_encoding, **kwargs)

    def forward_decoder(
        self, latent: torch.Tensor, ids_restore: torch.LongTensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        return self.decoder(latent, ids_restore, grid)

    def forward_loss(self, pixel_values: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over the removed patches (over all when nothing is removed)."""
        target = self.patchify(pixel_values)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased, as the reference
            target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)
        removed = mask.sum()
        # torch.where instead of an `if` on a tensor: no host-device sync in the training step
        return torch.where(removed > 0, (loss * mask).sum() / removed.clamp_min(1), loss.mean())

    def forward(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MAEForPreTrainingOutput | tuple:
        """Mask ``mask_ratio`` (default ``config.mask_ratio``) of the patches, encode the rest, decode, score."""
        output_hidden_states = _flag(output_hidden_states, self.config.output_hidden_states)
        output_attentions = _flag(output_attentions, self.config.output_attentions)
        _check_attentions_supported(self.config, output_attentions)
        mask_ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        encoded = self.forward_encoder(
            pixel_values,
            mask_ratio,
            noise,
            interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            **kwargs,
        )
        grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
        logits = self.forward_decoder(encoded.last_hidden_state, encoded.ids_restore, grid)
        loss = self.forward_loss(pixel_values, logits, encoded.mask)
        outputs = MAEForPreTrainingOutput(
            loss=loss,
            logits=logits,
            mask=encoded.mask,
            ids_restore=encoded.ids_restore,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return outputs if _flag(return_dict, self.config.return_dict) else outputs.to_tuple()

    @torch.no_grad()
    def predictions_to_images(self, logits: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Predicted patches as images in the input's (normalised) pixel space, (B, C, H, W).

        Under ``norm_pix_loss`` the predictions are per-patch normalised; each is mapped back with the mean and
        (unbiased) variance of the corresponding target patch, so the reconstruction can be shown.
        """
        pred = logits.float()
        if self.config.norm_pix_loss:
            target = self.patchify(pixel_values.float())
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            pred = pred * (var + NORM_PIX_EPS) ** 0.5 + mean
        grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
        return self.unpatchify(pred, grid)

    @torch.no_grad()
    def mask_to_image(self, mask: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """The per-patch mask (B, L) as a (B, 1, H, W) map, 1 where a patch was removed."""
        p = self.config.patch_size
        grid = (image_size[0] // p, image_size[1] // p)
        return self.unpatchify(mask.float().unsqueeze(-1).expand(-1, -1, p * p), grid)


class MAEForImageClassification(MAEPreTrainedModel):
    """The encoder with a classification head, as the reference fine-tunes and probes it.

    ``global_pool`` (default): mean of the patch tokens -> ``fc_norm`` -> head (the encoder's last norm is
    dropped, so loading a pre-training checkpoint discards it, as the reference does). Otherwise: the cls token
    after the encoder's ``norm``. ``linear_probe``: ``BatchNorm1d(affine=False, eps=1e-6)`` before the head.
    """

    _auto_class = "AutoModelForImageClassification"
    _interpolate_pos_embed_on_load = True

    def __init__(self, config: MAEConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mae = MAEModel(config, add_final_norm=not config.global_pool)
        self.mae.pos_embed.requires_grad_(True)  # learned when fine-tuning, initialised from the sin-cos table
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.global_pool else None
        linear = MAEClassifierLinear(config.hidden_size, config.num_labels)
        if config.linear_probe:
            self.head = nn.Sequential(nn.BatchNorm1d(config.hidden_size, affine=False, eps=1e-6), linear)
        else:
            self.head = linear
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.mae.patch_embed

    def forward_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs
    ) -> tuple[torch.Tensor, MAEModelOutput]:
        outputs = self.mae.forward_encoder(pixel_values, 0.0, None, interpolate_pos_encoding, **kwargs)
        if self.config.global_pool:
            return self.fc_norm(outputs.pooler_output), outputs
        return outputs.last_hidden_state[:, 0], outputs

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        """Classify images. ``labels``: class indices (B,) for cross-entropy with ``config.label_smoothing``, or
        class probabilities (B, num_labels) (mixup / cutmix) for soft-target cross-entropy."""
        output_hidden_states = _flag(output_hidden_states, self.config.output_hidden_states)
        output_attentions = _flag(output_attentions, self.config.output_attentions)
        _check_attentions_supported(self.config, output_attentions)
        features, outputs = self.forward_features(
            pixel_values,
            interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            **kwargs,
        )
        logits = self.head(features)
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if labels.is_floating_point() and labels.shape == logits.shape:
                loss = soft_target_cross_entropy(logits.float(), labels.float())
            elif labels.ndim == 1 and not labels.is_floating_point():
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.config.label_smoothing)
            else:
                raise ValueError(
                    f"labels must be class indices of shape ({logits.shape[0]},) or class probabilities of shape "
                    f"{tuple(logits.shape)}, got {labels.dtype} {tuple(labels.shape)}."
                )
        result = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return result if _flag(return_dict, self.config.return_dict) else result.to_tuple()


def _flag(value: bool | None, default: bool) -> bool:
    return default if value is None else value


def _check_attentions_supported(config: MAEConfig, output_attentions: bool) -> None:
    if output_attentions and config._attn_implementation != "eager":
        raise ValueError(
            f"output_attentions=True needs eager attention, but the model uses {config._attn_implementation!r}; "
            "load it with attn_implementation='eager' or call model.set_attn_implementation('eager')."
        )


__all__ = [
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
    "gather_tokens",
    "masking_indices",
    "random_masking",
    "resize_pos_embed",
]
