"""Safe loading and conversion of MAE checkpoints into model folders of this project (and to transformers' ViTMAE).

Sources understood:

- facebookresearch/mae checkpoints (``.pth`` with a ``model`` entry, or a bare state dict; ``.safetensors`` too):
  every published kind, detected from the keys (see ``detect_reference_kind``), with the architecture inferred from
  the tensor shapes (see ``infer_reference_config``).
- transformers ``ViTMAEForPreTraining`` / ``ViTMAEModel`` folders (Hub/v4 and v5 key layouts).
- model folders of this project (``model_type == "mae_hf"``), exported to a plain transformers ViTMAE folder.

Pickled files are read with ``torch.load(weights_only=True)``: tensors and plain containers only, plus the
``argparse.Namespace`` the reference stores under ``args`` (it holds plain values, so allowing it runs no code).
Anything else is refused unless the caller says the file is trusted (``trust_pickle=True``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from safetensors.torch import load_file as load_safetensors

from .configuration_mae_hf import MAE_PRESETS, MAEConfig
from .convert import (
    mae_config_to_vitmae_config,
    mae_to_vitmae_state_dict,
    reference_to_mae_state_dict,
    vitmae_config_to_mae_config,
    vitmae_to_mae_state_dict,
)
from .modeling_mae_hf import MAEForImageClassification, MAEForPreTraining, MAEModel, MAEPreTrainedModel

StateDict = dict[str, torch.Tensor]
ReferenceKind = Literal["pretrain-encoder", "pretrain", "finetune", "linear-probe"]

# Pickled globals that ``torch.load(weights_only=True)`` may rebuild on top of its own allow-list: the reference's
# ``args`` entry is an ``argparse.Namespace``, a plain attribute bag whose reconstruction runs no user code.
SAFE_PICKLE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)

# Entries under which training scripts store the weights, in the order they are tried.
STATE_DICT_ENTRIES = ("model", "state_dict", "model_state_dict", "module")

# Encoder width -> head count of the standard architectures (reference ViT-B/L/H and the tiny test preset).
_ENCODER_HEADS = {preset["hidden_size"]: preset["num_attention_heads"] for preset in MAE_PRESETS.values()}
# Decoder width -> head count: every reference model uses the 512-d decoder with 16 heads.
_DECODER_HEADS = {
    preset.get("decoder_hidden_size", MAEConfig.decoder_hidden_size): preset.get(
        "decoder_num_attention_heads", MAEConfig.decoder_num_attention_heads
    )
    for preset in MAE_PRESETS.values()
}


class UnsafeCheckpointError(RuntimeError):
    """A pickled checkpoint needs arbitrary Python objects to load; it was not unpickled."""


class CheckpointFormatError(ValueError):
    """A checkpoint's keys or shapes do not describe a model this project can build."""


@dataclass
class LoadedCheckpoint:
    """The weights of a checkpoint file plus what else it carried (the reference's ``args``, epoch, ...)."""

    state_dict: StateDict
    args: dict[str, Any] = field(default_factory=dict)
    extra_keys: list[str] = field(default_factory=list)


@dataclass
class ConversionResult:
    """What ``convert_to_folder`` wrote and how it read the source."""

    output_dir: str
    source_format: Literal["reference", "vitmae", "mae_hf"]
    target_format: Literal["mae_hf", "vitmae"]
    architecture: str
    kind: str
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# Safe loading
# ----------------------------------------------------------------------------------------------------------------


def load_checkpoint_file(path: str | os.PathLike, trust_pickle: bool = False) -> LoadedCheckpoint:
    """Read a ``.safetensors`` file, or a pickled ``.pth``/``.bin``/``.pt`` checkpoint without running code.

    A pickled file holding a ``model`` (or ``state_dict``) entry gives that entry; a bare state dict is used as is.
    DistributedDataParallel's ``module.`` prefix is removed. Raises ``UnsafeCheckpointError`` (nothing unpickled)
    if the file needs objects beyond tensors, plain containers and ``argparse.Namespace``, unless ``trust_pickle``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file {path!r} does not exist; pass the path of a .pth or .safetensors.")
    if path.endswith(".safetensors"):
        return LoadedCheckpoint(state_dict=_strip_module_prefix(load_safetensors(path)))
    raw = _torch_load(path, trust_pickle)
    return _split_checkpoint(raw, path)


def _torch_load(path: str, trust_pickle: bool) -> Any:
    if trust_pickle:
        # The user vouched for the file: full unpickling, which can execute arbitrary code.
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(list(SAFE_PICKLE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f" (it references {blocked.group(1)})" if blocked else ""
        raise UnsafeCheckpointError(
            f"Refused to load {path!r}: it needs arbitrary Python objects to unpickle{what}, which can run code. "
            "Only if you trust its origin, pass --trust_pickle (trust_pickle=True); better, convert it once and "
            "share the safetensors folder."
        ) from None
    except RuntimeError as error:
        if "zip" in str(error).lower() or "magic number" in str(error).lower():
            raise CheckpointFormatError(f"{path!r} is not a PyTorch checkpoint ({error}).") from None
        raise


def _split_checkpoint(raw: Any, path: str) -> LoadedCheckpoint:
    if not isinstance(raw, Mapping):
        raise CheckpointFormatError(f"{path!r} holds a {type(raw).__name__}, not a state dict or a checkpoint dict.")
    args: dict[str, Any] = {}
    extra: list[str] = []
    state: Any = raw
    for entry in STATE_DICT_ENTRIES:
        if isinstance(raw.get(entry), Mapping):
            state = raw[entry]
            extra = [key for key in raw if key != entry]
            namespace = raw.get("args")
            if isinstance(namespace, argparse.Namespace):
                args = dict(vars(namespace))
            elif isinstance(namespace, Mapping):
                args = dict(namespace)
            break
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CheckpointFormatError(
            f"{path!r} has no tensors under any of {list(STATE_DICT_ENTRIES)} nor at the top level; "
            f"top-level keys: {sorted(map(str, raw))[:10]}."
        )
    return LoadedCheckpoint(state_dict=_strip_module_prefix(tensors), args=args, extra_keys=extra)


def _strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module.") :]: value for key, value in state_dict.items()}
    return dict(state_dict)


# ----------------------------------------------------------------------------------------------------------------
# facebookresearch/mae checkpoints: kind and architecture
# ----------------------------------------------------------------------------------------------------------------


def detect_reference_kind(state_dict: Mapping[str, torch.Tensor]) -> ReferenceKind:
    """Which published kind a reference-layout state dict is, from its keys.

    - ``pretrain``: encoder + decoder (``decoder_*``, ``mask_token``): the ``_full`` and ``visualize`` files.
    - ``pretrain-encoder``: encoder only (``blocks``, ``norm``), no decoder, no head.
    - ``finetune``: ``head.weight`` with ``fc_norm`` (global pool) or ``norm`` (cls token).
    - ``linear-probe``: ``head.0`` BatchNorm statistics + ``head.1`` Linear.
    """
    keys = set(state_dict)
    for required in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if required not in keys:
            raise CheckpointFormatError(
                f"Not a facebookresearch/mae ViT state dict: key {required!r} is missing "
                f"(first keys: {sorted(keys)[:8]})."
            )
    has_decoder = any(key.startswith(("decoder_", "mask_token")) for key in keys)
    if "head.1.weight" in keys and "head.0.running_mean" in keys:
        return "linear-probe"
    if "head.weight" in keys:
        return "finetune"
    if has_decoder:
        return "pretrain"
    return "pretrain-encoder"


def _block_count(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    indices = {int(m.group(1)) for key in state_dict if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", key))}
    if indices and indices != set(range(len(indices))):
        raise CheckpointFormatError(f"Blocks under {prefix!r} are not numbered 0..n-1: {sorted(indices)}.")
    return len(indices)


def _heads_for(width: int, given: int | None, table: dict[int, int], option: str) -> int:
    if given is not None:
        return given
    if width in table:
        return table[width]
    raise CheckpointFormatError(
        f"Width {width} is not a standard MAE architecture, so its head count is unknown; pass {option} N "
        f"(N must divide {width})."
    )


def infer_reference_config(
    state_dict: Mapping[str, torch.Tensor],
    kind: ReferenceKind | None = None,
    num_attention_heads: int | None = None,
    decoder_num_attention_heads: int | None = None,
    **overrides: Any,
) -> MAEConfig:
    """The ``MAEConfig`` of a reference-layout state dict, from the tensor shapes.

    Patch size, channels, width, depth, MLP width, number of patches (hence image size), qkv bias, decoder width,
    depth and MLP width, and the number of classes are read from the shapes; head counts come from the standard
    architectures by width unless given. ``overrides`` (e.g. ``norm_pix_loss``) are applied last.
    """
    kind = kind or detect_reference_kind(state_dict)
    patch_weight = state_dict["patch_embed.proj.weight"]
    hidden_size, num_channels, patch_size = patch_weight.shape[0], patch_weight.shape[1], patch_weight.shape[-1]
    num_patches = state_dict["pos_embed"].shape[1] - 1
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise CheckpointFormatError(f"pos_embed has {num_patches} patch positions, not a square grid.")
    depth = _block_count(state_dict, "blocks.")
    if depth == 0:
        raise CheckpointFormatError("No encoder blocks ('blocks.0.*') in the state dict.")
    fields: dict[str, Any] = dict(
        image_size=grid * patch_size,
        patch_size=patch_size,
        num_channels=num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=depth,
        num_attention_heads=_heads_for(hidden_size, num_attention_heads, _ENCODER_HEADS, "--num_attention_heads"),
        intermediate_size=state_dict["blocks.0.mlp.fc1.weight"].shape[0],
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
        layer_norm_eps=1e-6,
    )
    if kind == "pretrain":
        decoder_width = state_dict["decoder_embed.weight"].shape[0]
        decoder_depth = _block_count(state_dict, "decoder_blocks.")
        fields.update(
            decoder_hidden_size=decoder_width,
            decoder_num_hidden_layers=decoder_depth,
            decoder_num_attention_heads=_heads_for(
                decoder_width, decoder_num_attention_heads, _DECODER_HEADS, "--decoder_num_attention_heads"
            ),
            decoder_intermediate_size=state_dict["decoder_blocks.0.mlp.fc1.weight"].shape[0]
            if decoder_depth
            else int(decoder_width * MAEConfig.mlp_ratio),
        )
    if kind in ("finetune", "linear-probe"):
        head = state_dict["head.weight" if kind == "finetune" else "head.1.weight"]
        num_labels = head.shape[0]
        fields.update(
            num_labels=num_labels,
            global_pool="fc_norm.weight" in state_dict,
            linear_probe=kind == "linear-probe",
        )
    fields.update(overrides)
    try:
        return MAEConfig(**fields)
    except ValueError as error:
        raise CheckpointFormatError(f"Inferred architecture is invalid: {error}") from None


def _model_class_for(kind: str) -> type[MAEPreTrainedModel]:
    return {
        "pretrain": MAEForPreTraining,
        "pretrain-encoder": MAEModel,
        "finetune": MAEForImageClassification,
        "linear-probe": MAEForImageClassification,
    }[kind]


def reference_state_dict_to_model(
    state_dict: Mapping[str, torch.Tensor], config: MAEConfig, kind: ReferenceKind
) -> MAEPreTrainedModel:
    """The model of this project for ``kind``, with the reference weights loaded strictly (every key used)."""
    converted = reference_to_mae_state_dict(state_dict)
    if kind == "pretrain-encoder":
        converted = {key.removeprefix("mae."): value for key, value in converted.items()}
    if kind in ("finetune", "linear-probe") and config.global_pool and "mae.norm.weight" in converted:
        raise CheckpointFormatError(
            "The classifier has both 'fc_norm' (global pool) and 'norm' (cls token); the reference writes one."
        )
    model = _model_class_for(kind)(config)
    result = model.load_state_dict(converted, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointFormatError(
            f"The {kind} checkpoint does not match the inferred architecture: missing {result.missing_keys[:6]}, "
            f"unexpected {result.unexpected_keys[:6]}."
        )
    return model.eval()


def _norm_pix_loss_for(path: str, args: Mapping[str, Any], explicit: bool | None, notes: list[str]) -> bool:
    """The loss target of a full pre-training checkpoint, which its keys cannot tell."""
    if explicit is not None:
        notes.append(f"norm_pix_loss={explicit} (given)")
        return explicit
    if "norm_pix_loss" in args:
        notes.append(f"norm_pix_loss={bool(args['norm_pix_loss'])} (from the checkpoint's args)")
        return bool(args["norm_pix_loss"])
    # Published files: ``visualize/*`` were trained on raw pixels, ``*_full.pth`` with normalised-pixel targets.
    pixel_target = "visualize" in os.path.basename(path).lower()
    notes.append(
        f"norm_pix_loss={not pixel_target} (guessed from the file name; pass --norm_pix_loss or "
        "--no_norm_pix_loss to set it)"
    )
    return not pixel_target


def load_reference_model(
    path: str | os.PathLike,
    *,
    num_attention_heads: int | None = None,
    decoder_num_attention_heads: int | None = None,
    norm_pix_loss: bool | None = None,
    trust_pickle: bool = False,
    config_overrides: Mapping[str, Any] | None = None,
    notes: list[str] | None = None,
) -> tuple[MAEPreTrainedModel, ReferenceKind]:
    """A facebookresearch/mae checkpoint file as this project's model (in eval mode), and its detected kind.

    ``MAEModel`` for encoder-only pre-training files, ``MAEForPreTraining`` for full ones (``norm_pix_loss`` from
    the argument, the checkpoint's ``args``, or the file name), ``MAEForImageClassification`` for fine-tuned and
    linear-probe classifiers (pooling and head from the keys).
    """
    path = os.fspath(path)
    notes = notes if notes is not None else []
    checkpoint = load_checkpoint_file(path, trust_pickle=trust_pickle)
    kind = detect_reference_kind(checkpoint.state_dict)
    overrides = dict(config_overrides or {})
    if kind == "pretrain":
        overrides.setdefault("norm_pix_loss", _norm_pix_loss_for(path, checkpoint.args, norm_pix_loss, notes))
    config = infer_reference_config(
        checkpoint.state_dict,
        kind,
        num_attention_heads=num_attention_heads,
        decoder_num_attention_heads=decoder_num_attention_heads,
        **overrides,
    )
    return reference_state_dict_to_model(checkpoint.state_dict, config, kind), kind


# ----------------------------------------------------------------------------------------------------------------
# Model folders: transformers ViTMAE <-> this project
# ----------------------------------------------------------------------------------------------------------------


def read_folder_config(folder: str | os.PathLike) -> dict[str, Any]:
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{os.fspath(folder)!r} has no config.json; pass a model folder or a checkpoint file.")
    with open(config_path) as f:
        return json.load(f)


def load_folder_state_dict(folder: str | os.PathLike, trust_pickle: bool = False) -> StateDict:
    """All weights of a model folder: ``model.safetensors``, its sharded index, or (safely) ``pytorch_model.bin``."""
    folder = os.fspath(folder)
    index_path = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        with open(index_path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state: StateDict = {}
        for shard in shards:
            state.update(load_safetensors(os.path.join(folder, shard)))
        return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(folder, name)):
            return load_checkpoint_file(os.path.join(folder, name), trust_pickle=trust_pickle).state_dict
    raise FileNotFoundError(f"{folder!r} has no model.safetensors (or pytorch_model.bin).")


def load_vitmae_folder(folder: str | os.PathLike, trust_pickle: bool = False) -> MAEForPreTraining | MAEModel:
    """A transformers ``ViTMAEForPreTraining`` / ``ViTMAEModel`` folder (Hub/v4 or v5 keys) as this project's model;
    ``MAEForPreTraining`` when the weights hold the decoder, ``MAEModel`` otherwise."""
    from transformers import ViTMAEConfig

    raw_config = read_folder_config(folder)
    if raw_config.get("model_type") != "vit_mae":
        raise CheckpointFormatError(
            f"{os.fspath(folder)!r} is a {raw_config.get('model_type')!r} model, not a transformers ViTMAE (vit_mae)."
        )
    vitmae_config = ViTMAEConfig.from_dict(raw_config)
    state = load_folder_state_dict(folder, trust_pickle=trust_pickle)
    converted = vitmae_to_mae_state_dict(state)
    config = vitmae_config_to_mae_config(vitmae_config)
    has_decoder = any(key.startswith("decoder.") for key in converted)
    if has_decoder:
        model: MAEForPreTraining | MAEModel = MAEForPreTraining(config)
    else:
        model = MAEModel(config)
        converted = {key.removeprefix("mae."): value for key, value in converted.items()}
    model.load_state_dict(converted, strict=True)
    return model.eval()


def save_as_vitmae(model: MAEForPreTraining | MAEModel, output_dir: str | os.PathLike) -> None:
    """Write a plain transformers ViTMAE folder (loads without ``trust_remote_code``) with ``model``'s weights.

    The weights are written in the Hub (transformers 4) key layout, which transformers 4 and 5 both read; transformers
    5's own ``save_pretrained`` writes the decoder as ``decoder_encoder.layer.N``, which transformers 4 cannot load.
    """
    from safetensors.torch import save_file

    if isinstance(model, MAEForImageClassification):
        raise CheckpointFormatError(
            "Classifiers have no transformers ViTMAE counterpart; only pre-training models and encoders export."
        )
    os.makedirs(output_dir, exist_ok=True)
    vitmae_config = mae_config_to_vitmae_config(model.config)
    is_encoder = isinstance(model, MAEModel)
    state = model.state_dict()
    if is_encoder:
        state = {f"mae.{key}": value for key, value in state.items()}
    converted = mae_to_vitmae_state_dict(state)
    if is_encoder:
        converted = {key.removeprefix("vit."): value for key, value in converted.items()}
    vitmae_config.architectures = ["ViTMAEModel" if is_encoder else "ViTMAEForPreTraining"]
    vitmae_config.save_pretrained(output_dir)
    tensors = {_vitmae_hub_key(key): value.detach().contiguous().clone() for key, value in converted.items()}
    save_file(tensors, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})


# transformers 5 in-memory names -> the Hub (transformers 4) names, applied to block keys only.
_VITMAE_V5_TO_HUB = (
    (re.compile(r"^(vit\.)?layers\.(\d+)\."), r"\1encoder.layer.\2."),
    (re.compile(r"\.attention\.q_proj\."), ".attention.attention.query."),
    (re.compile(r"\.attention\.k_proj\."), ".attention.attention.key."),
    (re.compile(r"\.attention\.v_proj\."), ".attention.attention.value."),
    (re.compile(r"\.attention\.o_proj\."), ".attention.output.dense."),
    (re.compile(r"\.mlp\.fc1\."), ".intermediate.dense."),
    (re.compile(r"\.mlp\.fc2\."), ".output.dense."),
)


def _vitmae_hub_key(key: str) -> str:
    for pattern, replacement in _VITMAE_V5_TO_HUB:
        key = pattern.sub(replacement, key)
    return key


# ----------------------------------------------------------------------------------------------------------------
# One entry point: any source -> a model folder
# ----------------------------------------------------------------------------------------------------------------


def detect_source_format(source: str | os.PathLike) -> Literal["reference", "vitmae", "mae_hf"]:
    """``reference`` for a checkpoint file, ``vitmae`` / ``mae_hf`` for a model folder of that ``model_type``."""
    source = os.fspath(source)
    if os.path.isfile(source):
        return "reference"
    if not os.path.isdir(source):
        raise FileNotFoundError(f"Source {source!r} does not exist; pass a checkpoint file or a model folder.")
    model_type = read_folder_config(source).get("model_type")
    if model_type == "vit_mae":
        return "vitmae"
    if model_type == MAEConfig.model_type:
        return "mae_hf"
    raise CheckpointFormatError(
        f"{source!r} is a {model_type!r} model; only 'vit_mae' (transformers) and 'mae_hf' folders convert."
    )


def load_project_folder(folder: str | os.PathLike) -> MAEPreTrainedModel:
    """A model folder of this project, as the class its ``config.json`` names."""
    classes = {cls.__name__: cls for cls in (MAEForPreTraining, MAEModel, MAEForImageClassification)}
    architectures = read_folder_config(folder).get("architectures") or ["MAEForPreTraining"]
    model_class = classes.get(architectures[0])
    if model_class is None:
        raise CheckpointFormatError(f"{os.fspath(folder)!r}: unknown architecture {architectures[0]!r}.")
    return model_class.from_pretrained(os.fspath(folder)).eval()


def _prepare_output_dir(output_dir: str, overwrite: bool) -> None:
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        if not overwrite:
            raise FileExistsError(f"Output folder {output_dir!r} is not empty; choose another one or pass --overwrite.")
        shutil.rmtree(output_dir)
    os.makedirs(output_dir, exist_ok=True)


def convert_to_folder(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    to: Literal["mae_hf", "vitmae"] = "mae_hf",
    num_attention_heads: int | None = None,
    decoder_num_attention_heads: int | None = None,
    norm_pix_loss: bool | None = None,
    trust_pickle: bool = False,
    overwrite: bool = False,
    write_card: bool = True,
    model_name: str | None = None,
) -> ConversionResult:
    """Convert ``source`` (a reference checkpoint file, a ViTMAE folder or a folder of this project) into
    ``output_dir``: a model folder of this project (config with ``auto_map``, ``model.safetensors``, modeling code,
    image processor, README card), or with ``to="vitmae"`` a plain transformers ViTMAE folder."""
    from .hub import write_model_card

    source, output_dir = os.fspath(source), os.fspath(output_dir)
    if to not in ("mae_hf", "vitmae"):
        raise ValueError(f"to must be 'mae_hf' or 'vitmae', got {to!r}.")
    source_format = detect_source_format(source)
    notes: list[str] = []
    kind: str
    if source_format == "reference":
        model, kind = load_reference_model(
            source,
            num_attention_heads=num_attention_heads,
            decoder_num_attention_heads=decoder_num_attention_heads,
            norm_pix_loss=norm_pix_loss,
            trust_pickle=trust_pickle,
            notes=notes,
        )
    elif source_format == "vitmae":
        if to == "vitmae":
            raise ValueError(f"{source!r} is already a transformers ViTMAE folder; use --to mae_hf.")
        model = load_vitmae_folder(source, trust_pickle=trust_pickle)
        kind = "pretrain" if isinstance(model, MAEForPreTraining) else "pretrain-encoder"
    else:
        if to == "mae_hf":
            raise ValueError(f"{source!r} is already a model folder of this project; use --to vitmae.")
        model = load_project_folder(source)
        kind = {MAEForPreTraining: "pretrain", MAEModel: "pretrain-encoder"}.get(type(model), "finetune")
    if norm_pix_loss is not None and isinstance(model, MAEForPreTraining):
        model.config.norm_pix_loss = norm_pix_loss

    if to == "vitmae" and isinstance(model, MAEForImageClassification):
        raise CheckpointFormatError(
            f"{source!r} is a classifier; classifiers have no transformers ViTMAE counterpart, only pre-training "
            "models and encoders export (use --to mae_hf)."
        )
    _prepare_output_dir(output_dir, overwrite)
    if to == "vitmae":
        save_as_vitmae(model, output_dir)
        preprocessor = os.path.join(source, "preprocessor_config.json") if os.path.isdir(source) else None
        if preprocessor and os.path.isfile(preprocessor):
            shutil.copy(preprocessor, output_dir)
    else:
        model.save_pretrained(output_dir)
    if write_card:
        write_model_card(
            output_dir,
            model_name=model_name or os.path.basename(os.path.normpath(output_dir)),
            architecture=type(model).__name__ if to == "mae_hf" else _vitmae_architecture(model),
            pipeline_tag="image-classification"
            if isinstance(model, MAEForImageClassification)
            else "image-feature-extraction",
            remote_code=to == "mae_hf",
            # The facebookresearch/mae weights are released under CC BY-NC 4.0.
            license="cc-by-nc-4.0" if source_format == "reference" else "apache-2.0",
            description=f"Converted from {os.path.basename(os.path.normpath(source))} ({source_format}, {kind}).",
        )
    return ConversionResult(
        output_dir=output_dir,
        source_format=source_format,
        target_format=to,
        architecture=type(model).__name__ if to == "mae_hf" else _vitmae_architecture(model),
        kind=kind,
        notes=notes,
    )


def _vitmae_architecture(model: MAEPreTrainedModel) -> str:
    return "ViTMAEModel" if isinstance(model, MAEModel) else "ViTMAEForPreTraining"


__all__ = [
    "CheckpointFormatError",
    "ConversionResult",
    "LoadedCheckpoint",
    "SAFE_PICKLE_GLOBALS",
    "UnsafeCheckpointError",
    "convert_to_folder",
    "detect_reference_kind",
    "detect_source_format",
    "infer_reference_config",
    "load_checkpoint_file",
    "load_folder_state_dict",
    "load_project_folder",
    "load_reference_model",
    "load_vitmae_folder",
    "read_folder_config",
    "reference_state_dict_to_model",
    "save_as_vitmae",
]
