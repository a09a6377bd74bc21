"""Parity with transformers' ViTMAE in both directions, and exact round trips between key layouts."""

from __future__ import annotations

import pytest
import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

from mae_hf import MAEConfig, MAEForPreTraining, MAEModel
from mae_hf.convert import (
    mae_from_vitmae,
    mae_to_reference_state_dict,
    mae_to_vitmae_state_dict,
    reference_to_mae_state_dict,
    vitmae_from_mae,
    vitmae_to_mae_state_dict,
)
from mae_hf.timm_reference import ReferenceMAE, randomize_


@pytest.fixture(scope="module")
def vitmae_base():
    """transformers' ViTMAE-B/16 with the reference LayerNorm eps and random non-trivial weights."""
    config = ViTMAEConfig(layer_norm_eps=1e-6, norm_pix_loss=True, attn_implementation="sdpa")
    return randomize_(ViTMAEForPreTraining(config), seed=5).eval()


def _assert_same_outputs(ours, theirs, noise, images):
    with torch.no_grad():
        a = ours(images, noise=noise)
        b = theirs(images, noise=noise)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.ids_restore, b.ids_restore)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=0)


def test_vitmae_to_project_gives_the_same_loss_and_logits(vitmae_base):
    ours = mae_from_vitmae(vitmae_base).eval()
    assert isinstance(ours, MAEForPreTraining) and ours.config.norm_pix_loss
    torch.manual_seed(0)
    _assert_same_outputs(ours, vitmae_base, torch.rand(2, 196), torch.randn(2, 3, 224, 224))


def test_project_to_vitmae_gives_the_same_loss_and_logits(tmp_path):
    torch.manual_seed(1)
    ours = randomize_(MAEForPreTraining(MAEConfig.from_preset("mae-vit-base-patch16")), seed=6).eval()
    theirs = vitmae_from_mae(ours).eval()
    _assert_same_outputs(ours, theirs, torch.rand(2, 196), torch.randn(2, 3, 224, 224))
    # the exported folder is plain transformers: no remote code needed
    theirs.save_pretrained(tmp_path)
    reloaded = ViTMAEForPreTraining.from_pretrained(tmp_path).eval()
    back = mae_from_vitmae(reloaded)
    for key, value in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_encoder_only_conversion_both_ways():
    config = ViTMAEConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                          image_size=32, patch_size=8, layer_norm_eps=1e-6)
    theirs = randomize_(ViTMAEModel(config), seed=2).eval()
    ours = mae_from_vitmae(theirs).eval()
    assert isinstance(ours, MAEModel)
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        expected = theirs(images, noise=noise).last_hidden_state
        got = ours(images, mask_ratio=0.75, noise=noise).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    again = vitmae_from_mae(ours)
    for key, value in theirs.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_hub_v4_and_v5_on_disk_layouts_convert_identically(vitmae_base):
    in_memory = vitmae_base.state_dict()
    to_v4 = {
        "vit.layers.": "vit.encoder.layer.",
        "attention.q_proj.": "attention.attention.query.",
        "attention.k_proj.": "attention.attention.key.",
        "attention.v_proj.": "attention.attention.value.",
        "attention.o_proj.": "attention.output.dense.",
        "mlp.fc1.": "intermediate.dense.",
        "mlp.fc2.": "output.dense.",
    }
    hub_v4 = {}
    for key, value in in_memory.items():
        for new, old in to_v4.items():
            key = key.replace(new, old)
        hub_v4[key] = value
    assert "vit.encoder.layer.0.attention.attention.query.weight" in hub_v4
    assert "decoder.decoder_layers.0.intermediate.dense.weight" in hub_v4
    v5_disk = {key.replace("decoder.decoder_layers.", "decoder.decoder_encoder.layer."): v for key, v in hub_v4.items()}
    expected = vitmae_to_mae_state_dict(in_memory)
    for layout in (hub_v4, v5_disk):
        converted = vitmae_to_mae_state_dict(layout)
        assert converted.keys() == expected.keys()
        assert all(torch.equal(converted[k], expected[k]) for k in expected)


def test_round_trips_are_exact():
    ours = randomize_(MAEForPreTraining(MAEConfig.from_preset("mae-vit-tiny-test")), seed=3)
    state = ours.state_dict()
    via_vitmae = vitmae_to_mae_state_dict(mae_to_vitmae_state_dict(state))
    via_reference = reference_to_mae_state_dict(mae_to_reference_state_dict(state))
    for converted in (via_vitmae, via_reference):
        assert converted.keys() == state.keys()
        assert all(torch.equal(converted[k], state[k]) for k in state)


def test_reference_key_set_maps_onto_the_project():
    reference = ReferenceMAE(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=16,
                             decoder_depth=1, decoder_num_heads=2)
    converted = reference_to_mae_state_dict(reference.state_dict())
    assert set(converted) == set(MAEForPreTraining(MAEConfig.from_preset("mae-vit-tiny-test")).state_dict())
