"""Optimisation as the reference: weight-decay groups, lr scaling with the effective batch, and the per-iteration
warm-up + half-cycle cosine schedule computed from the global step (no mutable scheduler state)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def param_groups_weight_decay(
    model: nn.Module, weight_decay: float, no_weight_decay_names: Iterable[str] = ()
) -> list[dict]:
    """The reference's (timm 0.3.2) ``add_weight_decay``: frozen parameters (the fixed sin-cos position tables) are
    left out; biases and 1-D parameters (norms) get no decay; everything else, including ``cls_token``,
    ``mask_token`` and the patch-embedding weight, is decayed. Names in ``no_weight_decay_names`` (matched on the
    last name component or the full name) are also exempt."""
    skip = set(no_weight_decay_names)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in skip or name.rsplit(".", 1)[-1] in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def layer_id_for_vit(name: str, num_layers: int) -> int:
    """The reference's ``get_layer_id_for_vit`` (BEiT): cls_token / pos_embed / patch_embed → 0, ``blocks.i`` →
    i + 1, everything else (fc_norm, norm, head) → ``num_layers`` (= depth + 1). The ``mae.`` prefix of this
    project's classifier is ignored."""
    name = name.removeprefix("mae.")
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups_layer_decay(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float,
    num_hidden_layers: int,
    no_weight_decay_names: Iterable[str] = ("pos_embed", "cls_token"),
) -> list[dict]:
    """The reference's ``param_groups_lrd``: one group per (layer id, decay / no decay), named
    ``layer_{id}_{decay|no_decay}``, with ``lr_scale = layer_decay ** (num_layers - id)`` where num_layers =
    depth + 1 (so the head has scale 1). No weight decay for 1-D parameters (biases, norms) and for
    ``no_weight_decay_names`` (last name component); frozen parameters are left out."""
    num_layers = num_hidden_layers + 1
    skip = set(no_weight_decay_names)
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim == 1 or name.rsplit(".", 1)[-1] in skip or name.removeprefix("mae.") in skip
        layer_id = layer_id_for_vit(name, num_layers)
        group_name = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
        if group_name not in groups:
            groups[group_name] = {
                "name": group_name,
                "lr_scale": layer_decay ** (num_layers - layer_id),
                "weight_decay": 0.0 if no_decay else weight_decay,
                "params": [],
                "param_names": [],
            }
        groups[group_name]["params"].append(param)
        groups[group_name]["param_names"].append(name)
    return list(groups.values())


def build_adamw(
    param_groups: list[dict], lr: float, betas: tuple[float, float], fused: bool = True
) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; ``fused`` runs one kernel for all parameters (CPU and CUDA), the fast path,
    instead of a loop of small per-parameter kernels. Same update rule; float results agree to rounding."""
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, fused=fused or None)


def scaled_learning_rate(blr: float, effective_batch_size: int, learning_rate: float | None = None) -> float:
    """``learning_rate`` if given, else the reference's linear scaling ``blr × effective batch / 256``."""
    return learning_rate if learning_rate is not None else blr * effective_batch_size / 256


def cosine_lr_at(epoch: float, base_lr: float, min_lr: float, warmup_epochs: float, total_epochs: float) -> float:
    """The reference schedule at a fractional epoch: linear warm-up from 0, then half-cycle cosine to ``min_lr``."""
    if epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    if total_epochs <= warmup_epochs:
        return base_lr
    progress = min(1.0, (epoch - warmup_epochs) / (total_epochs - warmup_epochs))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at_step(
    step: int, steps_per_epoch: int, base_lr: float, min_lr: float, warmup_epochs: float, total_steps: int
) -> float:
    """The lr of optimizer step ``step`` (0-based): the fractional epoch is ``step / steps_per_epoch``."""
    return cosine_lr_at(step / steps_per_epoch, base_lr, min_lr, warmup_epochs, total_steps / steps_per_epoch)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write ``lr`` into every group, times the group's ``lr_scale`` (layer-wise decay) when it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


__all__ = [
    "cosine_lr_at",
    "layer_id_for_vit",
    "lr_at_step",
    "param_groups_layer_decay",
    "param_groups_weight_decay",
    "scaled_learning_rate",
    "set_learning_rate",
]
