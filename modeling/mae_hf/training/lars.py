"""LARS as MAE's linear probing uses it (from MoCo v3).

Not timm's ``Lars``: that one divides by ``‖g‖ + wd·‖p‖ + eps`` (NVIDIA LARC) and adapts by parameter group,
while the reference adds weight decay to the gradient first, divides by the norm of that sum, and skips both
weight decay and trust scaling for every 1-D parameter (biases, norms).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios: for a parameter ``p`` with more than one dimension,
    ``g <- g + wd·p``, then ``g <- g · trust·‖p‖/‖g‖`` when both norms are positive; then ``μ <- momentum·μ + g``
    and ``p <- p − lr·μ``. 1-D parameters skip the first two steps."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ) -> None:
        if lr < 0 or weight_decay < 0 or momentum < 0 or trust_coefficient < 0:
            raise ValueError("LARS: lr, weight_decay, momentum and trust_coefficient must be non-negative")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(update)
                    trust = torch.where(
                        (param_norm > 0) & (update_norm > 0),
                        group["trust_coefficient"] * param_norm / update_norm,
                        torch.ones_like(param_norm),
                    )
                    update = update.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss
