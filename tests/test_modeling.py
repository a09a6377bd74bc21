"""Model core: numerics equal to the reference, transformers integration, Auto classes, remote code, pipeline."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    pipeline,
)

from mae_hf import (
    MAEConfig,
    MAEForImageClassification,
    MAEForPreTraining,
    MAEModel,
    get_2d_sincos_pos_embed,
    patchify,
    resize_pos_embed,
    unpatchify,
)
from mae_hf.convert import reference_to_mae_state_dict
from mae_hf.timm_reference import ReferenceMAE, ReferenceViT, numpy_sincos_2d, randomize_


def tiny_config(**overrides) -> MAEConfig:
    """32 px, 8 px patches, a 2-block 32-wide encoder and a 1-block 16-wide decoder."""
    return MAEConfig.from_preset("mae-vit-tiny-test", **overrides)


@pytest.fixture(scope="module")
def reference_base():
    """A reference ViT-B/16 MAE with deterministic non-trivial weights and this project's copy of it."""
    torch.manual_seed(0)
    reference = randomize_(ReferenceMAE(norm_pix_loss=True), seed=1).eval()
    ours = MAEForPreTraining(MAEConfig.from_preset("mae-vit-base-patch16", norm_pix_loss=True)).eval()
    ours.load_state_dict(reference_to_mae_state_dict(reference.state_dict()), strict=True)
    return reference, ours


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(image_size=225), "image_size"),
        (dict(hidden_size=770), "num_attention_heads"),
        (dict(decoder_hidden_size=100, decoder_num_attention_heads=16), "decoder_num_attention_heads"),
        (dict(mask_ratio=1.0), "mask_ratio"),
        (dict(mask_ratio=-0.1), "mask_ratio"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
        (dict(patch_size=-16), "patch_size"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(drop_path_rate=1.5), "drop_path_rate"),
    ],
)
def test_config_rejects_invalid_values_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        MAEConfig(**overrides)


def test_presets_match_reference_architectures():
    expected = {
        "mae-vit-base-patch16": (16, 768, 12, 12, 111_907_840),
        "mae-vit-large-patch16": (16, 1024, 24, 16, 329_541_888),
    }
    for name, (patch, width, depth, heads, params) in expected.items():
        config = MAEConfig.from_preset(name)
        assert (config.patch_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
            patch,
            width,
            depth,
            heads,
        )
        assert (config.decoder_hidden_size, config.decoder_num_hidden_layers, config.decoder_num_attention_heads) == (
            512,
            8,
            16,
        )
        assert config.layer_norm_eps == 1e-6
        with torch.device("meta"):
            model = MAEForPreTraining(config)
        assert sum(p.numel() for p in model.parameters()) == params
    huge = MAEConfig.from_preset("mae-vit-huge-patch14")
    assert (huge.patch_size, huge.hidden_size, huge.num_hidden_layers, huge.num_patches) == (14, 1280, 32, 256)


def test_config_round_trip(tmp_path):
    config = tiny_config(norm_pix_loss=True, mask_ratio=0.6)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MAEConfig)
    without_path = lambda c: {k: v for k, v in c.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert without_path(loaded) == without_path(config)


# ---------------------------------------------------------------------------------------------------------------
# Numerics of the reference
# ---------------------------------------------------------------------------------------------------------------


def test_pretraining_equals_reference_for_same_weights_and_noise(reference_base):
    reference, ours = reference_base
    torch.manual_seed(1)
    images, noise = torch.randn(2, 3, 224, 224), torch.rand(2, 196)
    with torch.no_grad():
        ref_loss, ref_pred, ref_mask = reference(images, 0.75, noise)
        out = ours(images, noise=noise)
    assert torch.equal(out.mask, ref_mask)
    torch.testing.assert_close(out.logits, ref_pred, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, ref_loss, atol=1e-6, rtol=0)
    assert out.mask.sum(1).tolist() == [196 - 49] * 2


def test_pixel_loss_equals_reference_without_norm_pix(reference_base):
    reference, ours = reference_base
    reference.norm_pix_loss, ours.config.norm_pix_loss = False, False
    try:
        images, noise = torch.randn(1, 3, 224, 224), torch.rand(1, 196)
        with torch.no_grad():
            ref_loss, _, _ = reference(images, 0.75, noise)
            loss = ours(images, noise=noise).loss
        torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
    finally:
        reference.norm_pix_loss, ours.config.norm_pix_loss = True, True


@pytest.mark.parametrize("global_pool", [True, False])
def test_classifier_equals_reference(global_pool):
    reference = randomize_(ReferenceViT(num_classes=10, global_pool=global_pool, depth=2), seed=3).eval()
    config = MAEConfig.from_preset("mae-vit-base-patch16", num_hidden_layers=2, num_labels=10, global_pool=global_pool)
    ours = MAEForImageClassification(config).eval()
    ours.load_state_dict(reference_to_mae_state_dict(reference.state_dict()), strict=True)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(images).logits, reference(images), atol=1e-5, rtol=0)


def test_sincos_position_embedding_matches_reference_layout():
    for dim, grid in ((768, 14), (1280, 16), (32, 4)):
        expected = torch.from_numpy(numpy_sincos_2d(dim, grid, cls_token=True)).float()
        assert torch.equal(get_2d_sincos_pos_embed(dim, grid, cls_token=True), expected)
    table = get_2d_sincos_pos_embed(8, 3, cls_token=True)
    assert torch.equal(table[0], torch.zeros(8))
    # token 1 + i*G + j: first half encodes the column j, second half the row i
    i, j = 1, 2
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2)
    expected = torch.cat([torch.sin(j * omega), torch.cos(j * omega), torch.sin(i * omega), torch.cos(i * omega)])
    torch.testing.assert_close(table[1 + i * 3 + j], expected.float())


def test_fixed_embeddings_are_right_after_init_and_after_reload(tmp_path):
    config = tiny_config()
    model = MAEForPreTraining(config)
    grid = config.image_size // config.patch_size
    assert torch.equal(model.mae.pos_embed[0], get_2d_sincos_pos_embed(config.hidden_size, grid, True))
    assert torch.equal(model.decoder.pos_embed[0], get_2d_sincos_pos_embed(config.decoder_hidden_size, grid, True))
    assert not model.mae.pos_embed.requires_grad and not model.decoder.pos_embed.requires_grad
    assert 0.01 < model.mae.cls_token.std() < 0.04 and 0.005 < model.decoder.mask_token.std() < 0.04
    model.save_pretrained(tmp_path)
    for cls in (MAEForPreTraining, AutoModelForPreTraining):
        reloaded = cls.from_pretrained(tmp_path)
        assert torch.equal(reloaded.mae.pos_embed, model.mae.pos_embed)
        assert torch.equal(reloaded.decoder.pos_embed, model.decoder.pos_embed)
        assert torch.equal(reloaded.mae.cls_token, model.mae.cls_token)
    # predictions at masked positions differ (a zero table would make them identical)
    with torch.no_grad():
        out = reloaded(torch.randn(1, 3, 32, 32), noise=torch.rand(1, 16))
    masked = out.logits[0][out.mask[0].bool()]
    assert (masked - masked[0]).abs().max() > 1e-4


def test_initialisation_follows_the_reference():
    model = MAEForPreTraining(MAEConfig.from_preset("mae-vit-base-patch16"))
    patch = model.mae.patch_embed.proj.weight
    bound = math.sqrt(6 / (768 + 3 * 16 * 16))
    assert patch.abs().max() <= bound and patch.abs().max() > 0.95 * bound
    assert model.mae.patch_embed.proj.bias.abs().max() > 0  # conv bias keeps PyTorch's default init
    qkv = model.mae.blocks[0].attn.qkv
    assert qkv.weight.abs().max() <= math.sqrt(6 / (768 + 2304)) and torch.equal(qkv.bias, torch.zeros(2304))
    assert torch.equal(model.mae.blocks[0].norm1.weight, torch.ones(768))
    assert abs(model.mae.cls_token.std().item() - 0.02) < 0.005
    assert abs(model.decoder.mask_token.std().item() - 0.02) < 0.005
    classifier = MAEForImageClassification(MAEConfig.from_preset("mae-vit-tiny-test", num_labels=100))
    assert classifier.head.weight.std() < 1e-4 and torch.equal(classifier.head.bias, torch.zeros(100))


def test_patchify_order_and_round_trip():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    patches = patchify(images, 2)
    assert patches.shape == (2, 4, 12)
    # patch 1 = row 0, column 1; vector index (a * p + b) * C + c
    a, b, c = 1, 0, 2
    assert patches[0, 1, (a * 2 + b) * 3 + c] == images[0, c, a, 2 + b]
    assert torch.equal(unpatchify(patches, 2), images)
    rectangular = torch.randn(1, 3, 4, 8)
    assert torch.equal(unpatchify(patchify(rectangular, 2), 2, (2, 4)), rectangular)


def test_masking_reference_semantics_and_no_shuffle_at_zero():
    model = MAEModel(tiny_config()).eval()
    images = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    with torch.no_grad():
        masked = model(images, mask_ratio=0.75, noise=noise)
        plain_a = model(images)
        plain_b = model(images, mask_ratio=0.0)
    len_keep = int(16 * 0.25)
    assert masked.last_hidden_state.shape == (2, 1 + len_keep, 32)
    kept = torch.argsort(noise, dim=1)[:, :len_keep]
    expected_mask = torch.ones(2, 16).scatter_(1, kept, 0.0)
    assert torch.equal(masked.mask, expected_mask)
    assert torch.equal(torch.gather(torch.argsort(noise, 1), 1, masked.ids_restore), torch.arange(16).expand(2, 16))
    assert plain_a.last_hidden_state.shape == (2, 17, 32)
    assert torch.equal(plain_a.last_hidden_state, plain_b.last_hidden_state)  # deterministic: no shuffle
    assert torch.equal(plain_a.ids_restore, torch.arange(16).expand(2, 16)) and plain_a.mask.sum() == 0
    torch.testing.assert_close(plain_a.pooler_output, plain_a.last_hidden_state[:, 1:].mean(1))


def test_norm_pix_loss_uses_unbiased_variance_on_removed_patches_only():
    model = MAEForPreTraining(tiny_config(norm_pix_loss=True)).eval()
    images, noise = torch.randn(1, 3, 32, 32), torch.rand(1, 16)
    with torch.no_grad():
        out = model(images, noise=noise)
    target = patchify(images, 8)
    target = (target - target.mean(-1, keepdim=True)) / torch.sqrt(target.var(-1, unbiased=True, keepdim=True) + 1e-6)
    per_patch = ((out.logits - target) ** 2).mean(-1)[0]
    removed = out.mask[0].bool()
    torch.testing.assert_close(out.loss, per_patch[removed].mean())


def test_predictions_to_images_inverts_the_norm_pix_target():
    model = MAEForPreTraining(tiny_config(norm_pix_loss=True))
    images = torch.randn(2, 3, 32, 32)
    target = patchify(images, 8)
    normalised = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    torch.testing.assert_close(model.predictions_to_images(normalised, images), images, atol=1e-4, rtol=0)
    mask_map = model.mask_to_image(torch.tensor([[1.0] + [0.0] * 15]), (32, 32))
    assert mask_map.shape == (1, 1, 32, 32) and mask_map[0, 0, :8, :8].eq(1).all() and mask_map.sum() == 64


# ---------------------------------------------------------------------------------------------------------------
# Classifier
# ---------------------------------------------------------------------------------------------------------------


def test_classifier_losses_hard_smoothed_and_soft_targets():
    model = MAEForImageClassification(tiny_config(num_labels=4, label_smoothing=0.1)).eval()
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 3, 1])
    with torch.no_grad():
        out = model(images, labels=labels)
        torch.testing.assert_close(
            out.loss, torch.nn.functional.cross_entropy(out.logits, labels, label_smoothing=0.1)
        )
        soft = torch.tensor([[0.7, 0.3, 0, 0], [0, 0, 0.5, 0.5], [0.25] * 4])
        soft_loss = model(images, labels=soft).loss
        expected = -(soft * out.logits.log_softmax(-1)).sum(-1).mean()
        torch.testing.assert_close(soft_loss, expected)
    with pytest.raises(ValueError, match="labels must be"):
        model(images, labels=torch.zeros(3, 2))


def test_linear_probe_head_and_cls_token_mode():
    model = MAEForImageClassification(tiny_config(num_labels=5, linear_probe=True, global_pool=False))
    batch_norm, linear = model.head
    assert isinstance(batch_norm, torch.nn.BatchNorm1d) and not batch_norm.affine and batch_norm.eps == 1e-6
    assert 0.005 < linear.weight.std() < 0.015
    assert model.fc_norm is None and isinstance(model.mae.norm, torch.nn.LayerNorm)
    keys = set(model.state_dict())
    assert {"head.0.running_mean", "head.0.running_var", "head.1.weight", "head.1.bias"} <= keys
    assert model(torch.randn(4, 3, 32, 32)).logits.shape == (4, 5)


def test_drop_path_rates_rise_linearly():
    model = MAEForImageClassification(tiny_config(num_hidden_layers=4, drop_path_rate=0.3, num_labels=2))
    rates = [block.drop_path_rate for block in model.mae.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    model.train()
    images = torch.randn(8, 3, 32, 32)
    torch.manual_seed(0)
    first = model(images).logits
    torch.manual_seed(1)
    assert not torch.equal(first, model(images).logits)  # stochastic in training
    model.eval()
    assert torch.equal(model(images).logits, model(images).logits)


def test_classifier_from_pretraining_checkpoint_drops_decoder_and_norm(tmp_path):
    pretrain = MAEForPreTraining(tiny_config())
    pretrain.save_pretrained(tmp_path)
    classifier, info = MAEForImageClassification.from_pretrained(tmp_path, num_labels=3, output_loading_info=True)
    assert set(info["missing_keys"]) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    unexpected = set(info["unexpected_keys"])
    assert {"mae.norm.weight", "mae.norm.bias", "decoder.mask_token"} <= unexpected
    assert all(key.startswith(("decoder.", "mae.norm.")) for key in unexpected)
    assert torch.equal(classifier.mae.blocks[1].attn.qkv.weight, pretrain.mae.blocks[1].attn.qkv.weight)
    assert torch.equal(classifier.fc_norm.weight, torch.ones(32))
    assert classifier.mae.pos_embed.requires_grad  # learned when fine-tuning
    assert classifier.head.weight.std() < 1e-4
    cls_mode, info = MAEForImageClassification.from_pretrained(
        tmp_path, num_labels=3, global_pool=False, output_loading_info=True
    )
    assert set(info["missing_keys"]) == {"head.weight", "head.bias"}
    assert torch.equal(cls_mode.mae.norm.weight, pretrain.mae.norm.weight)


# ---------------------------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------------------------


def test_loading_into_another_image_size_interpolates_like_the_reference(tmp_path):
    classifier = MAEForImageClassification(tiny_config(num_labels=3))
    with torch.no_grad():
        classifier.mae.pos_embed.add_(0.1 * torch.randn_like(classifier.mae.pos_embed))
    classifier.save_pretrained(tmp_path)
    bigger = MAEForImageClassification.from_pretrained(tmp_path, image_size=48)
    assert bigger.mae.pos_embed.shape == (1, 1 + 36, 32)
    old = classifier.mae.pos_embed
    grid = old[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    expected = torch.cat([old[:, :1], expected.permute(0, 2, 3, 1).reshape(1, 36, 32)], dim=1)
    torch.testing.assert_close(bigger.mae.pos_embed, expected)
    assert torch.equal(bigger.head.weight, classifier.head.weight)
    assert bigger(torch.randn(2, 3, 48, 48)).logits.shape == (2, 3)
    # the pre-training model rebuilds its fixed sin-cos tables for the new grid
    MAEForPreTraining(tiny_config()).save_pretrained(tmp_path / "pt")
    pretrain = MAEForPreTraining.from_pretrained(tmp_path / "pt", image_size=48)
    assert torch.equal(pretrain.mae.pos_embed[0], get_2d_sincos_pos_embed(32, 6, True))


def test_interpolate_pos_encoding_at_run_time():
    model = MAEForPreTraining(tiny_config()).eval()
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(torch.randn(1, 3, 48, 48))
    for height, width in ((48, 48), (32, 48), (40, 40)):
        out = model(torch.randn(2, 3, height, width), interpolate_pos_encoding=True)
        assert out.logits.shape == (2, (height // 8) * (width // 8), 192) and torch.isfinite(out.loss)
    same = model.mae.position_embedding(32, 32, True)
    assert same is model.mae.pos_embed
    assert torch.equal(resize_pos_embed(model.mae.pos_embed, (4, 4)), model.mae.pos_embed)


def test_bad_input_shapes_give_clear_errors():
    model = MAEForPreTraining(tiny_config())
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(batch, 3"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="noise must have shape"):
        model(torch.randn(2, 3, 32, 32), noise=torch.rand(2, 15))
    with pytest.raises(ValueError, match="mask_ratio"):
        model(torch.randn(1, 3, 32, 32), mask_ratio=1.0)


# ---------------------------------------------------------------------------------------------------------------
# Attention backends, outputs, gradient checkpointing
# ---------------------------------------------------------------------------------------------------------------


def test_attention_backends_agree(tmp_path):
    MAEForPreTraining(tiny_config(norm_pix_loss=True)).save_pretrained(tmp_path)
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    results = {}
    for implementation in ("eager", "sdpa", "flex_attention"):
        model = MAEForPreTraining.from_pretrained(tmp_path, attn_implementation=implementation).eval()
        assert model.config._attn_implementation == implementation
        with torch.no_grad():
            results[implementation] = model(images, noise=noise)
    for implementation in ("sdpa", "flex_attention"):
        torch.testing.assert_close(results[implementation].logits, results["eager"].logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(results[implementation].loss, results["eager"].loss, atol=1e-5, rtol=0)


def test_attention_is_bidirectional():
    model = MAEModel(tiny_config()).eval()
    images = torch.randn(1, 3, 32, 32)
    changed = images.clone()
    changed[..., 24:, 24:] += 1.0  # only the last patch changes
    with torch.no_grad():
        first = model(images).last_hidden_state
        second = model(changed).last_hidden_state
    assert not torch.allclose(first[:, 0], second[:, 0])  # the cls token (first position) sees the last patch


def test_hidden_states_and_eager_attention_weights():
    model = MAEModel(tiny_config(attn_implementation="eager")).eval()
    out = model(torch.randn(2, 3, 32, 32), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert out.attentions[0].shape == (2, 4, 17, 17)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, 17))
    sdpa = MAEModel(tiny_config())
    with pytest.raises(ValueError, match="eager"):
        sdpa(torch.randn(1, 3, 32, 32), output_attentions=True)
    as_tuple = model(torch.randn(1, 3, 32, 32), return_dict=False)
    assert isinstance(as_tuple, tuple) and as_tuple[0].shape == (1, 17, 32)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = MAEForPreTraining(tiny_config(norm_pix_loss=True))
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)

    def gradients():
        model.zero_grad()
        model(images, noise=noise).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.activation_checkpointing_enable()
    assert all(block.gradient_checkpointing for block in model.mae.blocks)
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) > 20
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Auto classes, saving, remote code, pipeline
# ---------------------------------------------------------------------------------------------------------------


def test_auto_classes_are_registered(tmp_path):
    config = tiny_config(num_labels=3)
    assert type(AutoModel.from_config(config)) is MAEModel
    assert type(AutoModelForPreTraining.from_config(config)) is MAEForPreTraining
    assert type(AutoModelForImageClassification.from_config(config)) is MAEForImageClassification
    MAEForPreTraining(config).save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "modeling_mae_hf.py", "configuration_mae_hf.py"} <= files
    assert "preprocessor_config.json" in files
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "mae_hf"
    assert set(saved["auto_map"]) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForPreTraining",
        "AutoModelForImageClassification",
    }
    processor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 36} and processor["crop_size"] == {"height": 32, "width": 32}
    assert processor["resample"] == 3 and processor["image_mean"] == [0.485, 0.456, 0.406]


def test_image_processor_is_the_reference_eval_transform(tmp_path):
    MAEForImageClassification(MAEConfig.from_preset("mae-vit-base-patch16", num_hidden_layers=1)).save_pretrained(
        tmp_path
    )
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert processor.size == {"shortest_edge": 256} and processor.crop_size == {"height": 224, "width": 224}
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    assert processor(image, return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 224)


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class HideProject(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mae_hf" or name.startswith("mae_hf."):
                raise ImportError("mae_hf is hidden in this process")

    sys.meta_path.insert(0, HideProject())
    sys.path = [p for p in sys.path if not p.rstrip("/").endswith("modeling")]
    import torch
    from transformers import AutoModel, AutoModelForImageClassification, AutoModelForPreTraining, pipeline

    folder, expected_file = sys.argv[1], sys.argv[2]
    expected = torch.load(expected_file)
    try:
        import mae_hf  # noqa: F401
        raise SystemExit("mae_hf should not be importable here")
    except ImportError:
        pass
    pretrain = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
    assert pretrain.__class__.__module__.startswith("transformers_modules"), pretrain.__class__.__module__
    with torch.no_grad():
        out = pretrain(expected["images"], noise=expected["noise"])
    assert torch.equal(out.logits, expected["logits"]) and torch.equal(out.loss, expected["loss"])
    encoder = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        features = encoder(expected["images"]).last_hidden_state
    assert torch.equal(features, expected["features"])
    classifier = AutoModelForImageClassification.from_pretrained(folder + "/classifier", trust_remote_code=True)
    classify = pipeline("image-classification", model=folder + "/classifier", trust_remote_code=True)
    from PIL import Image
    labels = [p["label"] for p in classify(Image.new("RGB", (40, 40), (200, 10, 10)), top_k=2)]
    assert len(labels) == 2 and set(labels) <= {"cat", "dog", "bird"}, labels
    print(json.dumps({"ok": True, "classifier": type(classifier).__name__}))
    """
)


def test_trust_remote_code_in_a_process_without_the_package(tmp_path):
    torch.manual_seed(0)
    model = MAEForPreTraining(tiny_config(norm_pix_loss=True)).eval()
    model.save_pretrained(tmp_path)
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        out = model(images, noise=noise)
        features = model.mae(images).last_hidden_state
    torch.save(
        {"images": images, "noise": noise, "logits": out.logits, "loss": out.loss, "features": features},
        tmp_path / "expected.pt",
    )
    labels = {0: "cat", 1: "dog", 2: "bird"}
    MAEForImageClassification.from_pretrained(tmp_path, id2label=labels, label2id={v: k for k, v in labels.items()})
    classifier = MAEForImageClassification(tiny_config(id2label=labels, label2id={v: k for k, v in labels.items()}))
    classifier.save_pretrained(tmp_path / "classifier")
    (tmp_path / "check.py").write_text(REMOTE_CODE_SCRIPT)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(tmp_path / "check.py"), str(tmp_path), str(tmp_path / "expected.pt")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"ok": True, "classifier": "MAEForImageClassification"}


def test_pipeline_on_a_saved_classifier_returns_its_label_names(tmp_path):
    labels = {0: "zero", 1: "one", 2: "two", 3: "three"}
    config = tiny_config(id2label=labels, label2id={v: k for k, v in labels.items()})
    model = MAEForImageClassification(config)
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 5.0, 1.0, -1.0]))
    model.save_pretrained(tmp_path)
    classify = pipeline("image-classification", model=str(tmp_path))
    predictions = classify(Image.new("RGB", (50, 40), (10, 120, 200)), top_k=3)
    assert [p["label"] for p in predictions] == ["one", "two", "zero"]
    assert len(classify(Image.new("L", (20, 20)), top_k=10)) == 4
    features = pipeline("image-feature-extraction", model=str(tmp_path))(Image.new("RGB", (32, 32)))
    assert np.asarray(features).shape[-2:] == (17, 32)


def test_head_init_follows_the_head_kind_after_reload(tmp_path):
    """A saved config must not carry one head kind's init to the other (2e-5 fine-tune, 0.01 linear probe)."""
    MAEForImageClassification(tiny_config(num_labels=50)).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()).get("head_init_std") is None
    probe = MAEForImageClassification.from_pretrained(
        tmp_path, linear_probe=True, global_pool=False, num_labels=60, ignore_mismatched_sizes=True
    )
    assert 0.005 < probe.head[1].weight.std() < 0.015
    explicit = MAEForImageClassification(tiny_config(num_labels=50, head_init_std=0.1))
    assert 0.05 < explicit.head.weight.std() < 0.15
