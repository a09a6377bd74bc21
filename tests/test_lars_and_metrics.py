"""LARS against the reference formula on a hand-checked step; the shipped top-k metric against a hand count."""

from __future__ import annotations

import evaluate
import pytest
import torch

from mae_hf.metrics import metric_path
from mae_hf.training.lars import LARS


def test_lars_step_equals_the_reference_formula_by_hand():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ‖w‖ = 5
    bias = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    weight.grad = torch.tensor([[0.0, 1.0]])
    bias.grad = torch.tensor([0.5, 0.5])
    optimizer = LARS([weight, bias], lr=2.0, weight_decay=0.1, momentum=0.9, trust_coefficient=0.001)
    optimizer.step()
    # weight: g + wd·p = [0.3, 1.4], ‖·‖ = sqrt(0.09 + 1.96) = sqrt(2.05); trust = 0.001·5/sqrt(2.05)
    trust = 0.001 * 5 / 2.05**0.5
    mu_w = torch.tensor([[0.3, 1.4]]) * trust
    torch.testing.assert_close(weight.data, torch.tensor([[3.0, 4.0]]) - 2.0 * mu_w)
    # bias (1-D): no weight decay, no trust ratio
    torch.testing.assert_close(bias.data, torch.tensor([1.0, -1.0]) - 2.0 * torch.tensor([0.5, 0.5]))
    # second step: momentum accumulates the scaled update
    weight.grad = torch.tensor([[0.0, 1.0]])
    bias.grad = torch.tensor([0.5, 0.5])
    before = weight.data.clone()
    optimizer.step()
    update = torch.tensor([[0.0, 1.0]]) + 0.1 * before
    mu_w = 0.9 * mu_w + update * (0.001 * before.norm() / update.norm())
    torch.testing.assert_close(weight.data, before - 2.0 * mu_w)
    torch.testing.assert_close(bias.data, torch.tensor([0.0, -2.0]) - 2.0 * torch.tensor([0.95, 0.95]))


def test_lars_leaves_zero_parameters_unscaled():
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    weight.grad = torch.ones(2, 2)
    LARS([weight], lr=1.0, momentum=0.0).step()
    torch.testing.assert_close(weight.data, -torch.ones(2, 2))  # ‖p‖ = 0: trust ratio 1


def test_topk_metric_equals_a_hand_computed_case():
    metric = evaluate.load(metric_path("topk_accuracy"))
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0],  # label 1: top-1 hit
            [0.9, 0.1, 0.5, 0.4, 0.3, 0.2, 0.0],  # label 4: rank 3 -> top-5 hit only
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],  # label 6: rank 7 -> miss
            [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],  # label 3: top-1 hit
        ]
    )
    labels = [1, 4, 6, 3]
    ranked = logits.topk(5, dim=-1).indices.tolist()
    assert metric.compute(predictions=ranked, references=labels) == {"top1": 0.5, "top5": 0.75}
    with pytest.raises(ValueError, match="empty"):
        metric.compute(predictions=[], references=[])
