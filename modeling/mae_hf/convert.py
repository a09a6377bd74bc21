"""Weight conversion between this project, facebookresearch/mae and transformers' ViTMAE.

Key layouts :

- reference (facebookresearch/mae): ``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.i.{norm1, attn.qkv,
  attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``mask_token``, ``decoder_embed``, ``decoder_pos_embed``,
  ``decoder_blocks.i``, ``decoder_norm``, ``decoder_pred``; classifiers add ``fc_norm`` and ``head``
  (``head.0`` BatchNorm, ``head.1`` Linear for linear probes).
- this project: the encoder under ``mae.`` with the reference's inner names, the decoder under ``decoder.`` as
  ``embed``, ``mask_token``, ``pos_embed``, ``blocks.i``, ``norm``, ``pred``; ``fc_norm`` and ``head`` as the reference.
- ViTMAE in memory (transformers 5): ``vit.embeddings...``, ``vit.layers.i.attention.{q,k,v,o}_proj``,
  ``layernorm_before/after``, ``mlp.fc1/fc2``, ``vit.layernorm``, ``decoder.decoder_*``; the Hub (transformers 4)
  layout uses ``vit.encoder.layer.i.attention.attention.{query,key,value}``, ``attention.output.dense``,
  ``intermediate.dense``, ``output.dense``; transformers 5 writes the decoder as ``decoder.decoder_encoder.layer.i``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .configuration_mae_hf import MAEConfig
from .modeling_mae_hf import MAEForPreTraining, MAEModel

StateDict = dict[str, torch.Tensor]

_REFERENCE_DECODER = {
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.pos_embed",
    "decoder_embed.": "decoder.embed.",
    "decoder_blocks.": "decoder.blocks.",
    "decoder_norm.": "decoder.norm.",
    "decoder_pred.": "decoder.pred.",
}
_HEAD_PREFIXES = ("fc_norm.", "head.")


# ----------------------------------------------------------------------------------------------------------------
# facebookresearch/mae <-> this project
# ----------------------------------------------------------------------------------------------------------------


def reference_to_mae_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename a reference ``MaskedAutoencoderViT`` / ``VisionTransformer`` state dict to this project's keys."""
    converted: StateDict = {}
    for key, value in state_dict.items():
        for old, new in _REFERENCE_DECODER.items():
            if key == old or (old.endswith(".") and key.startswith(old)):
                converted[new + key[len(old) :]] = value
                break
        else:
            converted[key if key.startswith(_HEAD_PREFIXES) else f"mae.{key}"] = value
    return converted


def mae_to_reference_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Inverse of ``reference_to_mae_state_dict``."""
    inverse = {new: old for old, new in _REFERENCE_DECODER.items()}
    converted: StateDict = {}
    for key, value in state_dict.items():
        for new, old in inverse.items():
            if key == new or (new.endswith(".") and key.startswith(new)):
                converted[old + key[len(new) :]] = value
                break
        else:
            converted[key.removeprefix("mae.")] = value
    return converted


# ----------------------------------------------------------------------------------------------------------------
# transformers ViTMAE <-> this project
# ----------------------------------------------------------------------------------------------------------------

_VITMAE_V4_TO_V5 = [
    (r"encoder\.layer\.(\d+)\.", r"layers.\1."),
    (r"decoder_encoder\.layer\.(\d+)\.", r"decoder_layers.\1."),
    (r"attention\.attention\.query\.", "attention.q_proj."),
    (r"attention\.attention\.key\.", "attention.k_proj."),
    (r"attention\.attention\.value\.", "attention.v_proj."),
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (r"intermediate\.dense\.", "mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]

# ViTMAE (v5 in-memory) name -> this project's, for the tensors outside the blocks that do not follow a prefix rule.
_VITMAE_SINGLE = {
    "vit.embeddings.cls_token": "mae.cls_token",
    "vit.embeddings.position_embeddings": "mae.pos_embed",
    "vit.embeddings.patch_embeddings.projection.weight": "mae.patch_embed.proj.weight",
    "vit.embeddings.patch_embeddings.projection.bias": "mae.patch_embed.proj.bias",
    "vit.layernorm.weight": "mae.norm.weight",
    "vit.layernorm.bias": "mae.norm.bias",
    "decoder.mask_token": "decoder.mask_token",
    "decoder.decoder_pos_embed": "decoder.pos_embed",
}

_VITMAE_BLOCK = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def _vitmae_v5_names(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Any ViTMAE layout (Hub/v4, v5 on disk, v5 in memory) to the v5 in-memory names, ``vit.`` prefix included."""
    converted: StateDict = {}
    is_base_model = not any(key.startswith(("vit.", "decoder.")) for key in state_dict)
    for key, value in state_dict.items():
        for pattern, replacement in _VITMAE_V4_TO_V5:
            key = re.sub(pattern, replacement, key)
        converted[f"vit.{key}" if is_base_model else key] = value
    return converted


def vitmae_to_mae_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """A ``ViTMAEForPreTraining`` or ``ViTMAEModel`` state dict (any transformers layout) to this project's keys;
    the separate q/k/v projections are fused into ``qkv`` (rows [q; k; v])."""
    source = _vitmae_v5_names(state_dict)
    converted: StateDict = {}
    block = re.compile(r"^(vit\.layers|decoder\.decoder_layers)\.(\d+)\.(.+)\.(weight|bias)$")
    pending_qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in source.items():
        match = block.match(key)
        if match:
            stack, index, inner, kind = match.groups()
            prefix = f"{'mae.blocks' if stack == 'vit.layers' else 'decoder.blocks'}.{index}"
            if inner in ("attention.q_proj", "attention.k_proj", "attention.v_proj"):
                pending_qkv.setdefault((prefix, kind), {})[inner[-6]] = value
                continue
            converted[f"{prefix}.{_VITMAE_BLOCK[inner]}.{kind}"] = value
            continue
        if key in _VITMAE_SINGLE:
            converted[_VITMAE_SINGLE[key]] = value
        elif key.startswith("decoder.decoder_"):
            converted["decoder." + key[len("decoder.decoder_") :]] = value
        else:
            raise KeyError(f"Unexpected ViTMAE key {key!r}")
    for (prefix, kind), parts in pending_qkv.items():
        converted[f"{prefix}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return converted


def mae_to_vitmae_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """This project's ``MAEForPreTraining`` / ``MAEModel`` state dict to ViTMAE's in-memory (transformers 5) names.
    Classifier heads have no ViTMAE counterpart and are refused."""
    inverse_block = {ours: theirs for theirs, ours in _VITMAE_BLOCK.items()}
    block = re.compile(r"^(mae\.blocks|decoder\.blocks)\.(\d+)\.(.+)\.(weight|bias)$")
    converted: StateDict = {}
    for key, value in state_dict.items():
        if key.startswith(_HEAD_PREFIXES):
            raise ValueError(f"{key!r}: classifier heads have no transformers ViTMAE counterpart.")
        match = block.match(key)
        if match:
            stack, index, inner, kind = match.groups()
            prefix = f"{'vit.layers' if stack == 'mae.blocks' else 'decoder.decoder_layers'}.{index}"
            if inner == "attn.qkv":
                for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                    converted[f"{prefix}.attention.{name}_proj.{kind}"] = part
            else:
                converted[f"{prefix}.{inverse_block[inner]}.{kind}"] = value
            continue
        inverse_single = {ours: theirs for theirs, ours in _VITMAE_SINGLE.items()}
        if key in inverse_single:
            converted[inverse_single[key]] = value
        elif key.startswith("decoder."):
            converted["decoder.decoder_" + key[len("decoder.") :]] = value
        else:
            raise KeyError(f"Unexpected key {key!r}")
    return converted


def vitmae_config_to_mae_config(vitmae_config, **overrides) -> MAEConfig:
    """A ``ViTMAEConfig`` as an ``MAEConfig`` (keeps its ``layer_norm_eps``: Hub ViTMAE models say 1e-12)."""
    fields = dict(
        image_size=_single(vitmae_config.image_size),
        patch_size=_single(vitmae_config.patch_size),
        num_channels=vitmae_config.num_channels,
        hidden_size=vitmae_config.hidden_size,
        num_hidden_layers=vitmae_config.num_hidden_layers,
        num_attention_heads=vitmae_config.num_attention_heads,
        intermediate_size=vitmae_config.intermediate_size,
        hidden_act=vitmae_config.hidden_act,
        qkv_bias=vitmae_config.qkv_bias,
        layer_norm_eps=vitmae_config.layer_norm_eps,
        hidden_dropout_prob=vitmae_config.hidden_dropout_prob,
        attention_probs_dropout_prob=vitmae_config.attention_probs_dropout_prob,
        decoder_hidden_size=vitmae_config.decoder_hidden_size,
        decoder_num_hidden_layers=vitmae_config.decoder_num_hidden_layers,
        decoder_num_attention_heads=vitmae_config.decoder_num_attention_heads,
        decoder_intermediate_size=vitmae_config.decoder_intermediate_size,
        mask_ratio=vitmae_config.mask_ratio,
        norm_pix_loss=vitmae_config.norm_pix_loss,
        initializer_range=vitmae_config.initializer_range,
    )
    return MAEConfig(**{**fields, **overrides})


def mae_config_to_vitmae_config(config: MAEConfig):
    """An ``MAEConfig`` as a transformers ``ViTMAEConfig``."""
    from transformers import ViTMAEConfig

    return ViTMAEConfig(
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act,
        qkv_bias=config.qkv_bias,
        layer_norm_eps=config.layer_norm_eps,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        decoder_hidden_size=config.decoder_hidden_size,
        decoder_num_hidden_layers=config.decoder_num_hidden_layers,
        decoder_num_attention_heads=config.decoder_num_attention_heads,
        decoder_intermediate_size=config.decoder_intermediate_size,
        mask_ratio=config.mask_ratio,
        norm_pix_loss=config.norm_pix_loss,
        initializer_range=config.initializer_range,
    )


def mae_from_vitmae(vitmae_model) -> MAEForPreTraining | MAEModel:
    """This project's model with the weights of a transformers ``ViTMAEForPreTraining`` / ``ViTMAEModel``."""
    from transformers import ViTMAEForPreTraining

    config = vitmae_config_to_mae_config(vitmae_model.config)
    model_class = MAEForPreTraining if isinstance(vitmae_model, ViTMAEForPreTraining) else MAEModel
    model = model_class(config)
    state_dict = vitmae_to_mae_state_dict(vitmae_model.state_dict())
    if model_class is MAEModel:
        state_dict = {key.removeprefix("mae."): value for key, value in state_dict.items()}
    model.load_state_dict(state_dict, strict=True)
    return model


def vitmae_from_mae(model: MAEForPreTraining | MAEModel):
    """A transformers ``ViTMAEForPreTraining`` / ``ViTMAEModel`` with this project's weights; it saves and loads
    without ``trust_remote_code``."""
    from transformers import ViTMAEForPreTraining, ViTMAEModel

    config = mae_config_to_vitmae_config(model.config)
    if isinstance(model, MAEForPreTraining):
        vitmae = ViTMAEForPreTraining(config)
        state_dict = mae_to_vitmae_state_dict(model.state_dict())
    else:
        vitmae = ViTMAEModel(config)
        state_dict = mae_to_vitmae_state_dict({f"mae.{k}": v for k, v in model.state_dict().items()})
        state_dict = {key.removeprefix("vit."): value for key, value in state_dict.items()}
    vitmae.load_state_dict(state_dict, strict=True)
    return vitmae


def _single(size) -> int:
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"Only square image and patch sizes are supported, got {size}")
        return int(size[0])
    return int(size)


__all__ = [
    "reference_to_mae_state_dict",
    "mae_to_reference_state_dict",
    "vitmae_to_mae_state_dict",
    "mae_to_vitmae_state_dict",
    "vitmae_config_to_mae_config",
    "mae_config_to_vitmae_config",
    "mae_from_vitmae",
    "vitmae_from_mae",
]
