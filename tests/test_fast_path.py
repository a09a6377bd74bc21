"""The compiled fast path computes the same loss, predictions and gradients as the plain fp32 path."""

from __future__ import annotations

import torch

from mae_hf import MAEConfig, MAEForPreTraining


def test_compiled_model_matches_the_plain_fp32_path():
    torch.manual_seed(0)
    config = MAEConfig(
        image_size=16,
        patch_size=4,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=4,
        norm_pix_loss=True,
    )
    model = MAEForPreTraining(config)
    images, noise = torch.randn(4, 3, 16, 16), torch.rand(4, 16)

    plain = model(images, noise=noise)
    plain.loss.backward()
    plain_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    compiled = torch.compile(model, fullgraph=True)  # fullgraph: masking and gathers compile without breaks
    fast = compiled(images, noise=noise)
    fast.loss.backward()
    assert torch.equal(fast.mask, plain.mask) and torch.equal(fast.ids_restore, plain.ids_restore)
    torch.testing.assert_close(fast.loss, plain.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.logits, plain.logits, atol=1e-5, rtol=0)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)
