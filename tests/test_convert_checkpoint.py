"""scripts/convert_checkpoint.py and mae_hf.checkpoints: reference checkpoints of every kind, safe unpickling,
transformers ViTMAE folders (Hub/v4 and v5 layouts) in both directions."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

from mae_hf import MAEConfig, MAEForImageClassification, MAEForPreTraining, MAEModel
from mae_hf.checkpoints import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    convert_to_folder,
    detect_reference_kind,
    infer_reference_config,
    load_checkpoint_file,
    load_reference_model,
)
from mae_hf.convert import mae_to_vitmae_state_dict, reference_to_mae_state_dict
from mae_hf.timm_reference import ReferenceMAE, ReferenceViT, randomize_

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "convert_checkpoint.py"
sys.path.insert(0, str(SCRIPT.parent))
import convert_checkpoint  # noqa: E402

ARCHITECTURE_FIELDS = (
    "image_size",
    "patch_size",
    "num_channels",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "qkv_bias",
    "layer_norm_eps",
    "decoder_hidden_size",
    "decoder_num_hidden_layers",
    "decoder_num_attention_heads",
    "decoder_intermediate_size",
)
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)
TINY_DECODER = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def _convert(*argv: str) -> None:
    assert convert_checkpoint.main([str(a) for a in argv]) == 0


def _save_reference(path: pathlib.Path, state_dict, **entries) -> pathlib.Path:
    torch.save({"model": state_dict, "epoch": 399, **entries}, path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# ViT-B/16 in the reference layout: pre-training (norm-pix on and off) and classifiers (global pool and cls token)
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_pretrain_file(tmp_path_factory):
    """A full reference ViT-B/16 MAE checkpoint (every key and shape), with the reference's pickled ``args``."""
    reference = randomize_(ReferenceMAE(), seed=11).eval()
    state = reference.state_dict()
    assert len(state) == 254 and state["decoder_pred.weight"].shape == (768, 512)
    args = argparse.Namespace(model="mae_vit_base_patch16", norm_pix_loss=True, mask_ratio=0.75, input_size=224)
    path = _save_reference(tmp_path_factory.mktemp("base") / "checkpoint-399.pth", state, args=args)
    return reference, path


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_base_pretraining_checkpoint_converts_with_reference_outputs(base_pretrain_file, tmp_path, norm_pix_loss):
    reference, path = base_pretrain_file
    reference.norm_pix_loss = norm_pix_loss
    # on: read from the checkpoint's args; off: the explicit flag overrides them
    _convert(path, tmp_path / "out", *([] if norm_pix_loss else ["--no_norm_pix_loss"]))
    converted = MAEForPreTraining.from_pretrained(tmp_path / "out").eval()
    assert converted.config.norm_pix_loss is norm_pix_loss
    preset = MAEConfig.from_preset("mae-vit-base-patch16")
    for name in ARCHITECTURE_FIELDS:
        assert getattr(converted.config, name) == getattr(preset, name), name
    direct = MAEForPreTraining(MAEConfig.from_preset("mae-vit-base-patch16", norm_pix_loss=norm_pix_loss))
    direct.load_state_dict(reference_to_mae_state_dict(reference.state_dict()), strict=True)
    generator = torch.Generator().manual_seed(0)
    images, noise = torch.randn(2, 3, 224, 224, generator=generator), torch.rand(2, 196, generator=generator)
    with torch.no_grad():
        ref_loss, ref_pred, ref_mask = reference(images, 0.75, noise)
        ours = converted(images, noise=noise)
        expected = direct.eval()(images, noise=noise)
    assert torch.equal(ours.mask, ref_mask)
    for got in (ours, expected):
        torch.testing.assert_close(got.logits, ref_pred, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.loss, ref_loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.loss, expected.loss, atol=1e-5, rtol=0)


@pytest.mark.parametrize("global_pool", [True, False])
def test_base_classifier_checkpoints_convert_with_reference_logits(tmp_path, global_pool):
    reference = randomize_(ReferenceViT(num_classes=10, global_pool=global_pool), seed=12).eval()
    state = reference.state_dict()
    assert ("fc_norm.weight" in state) is global_pool and ("norm.weight" in state) is not global_pool
    _convert(_save_reference(tmp_path / "finetuned.pth", state), tmp_path / "out")
    converted = MAEForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert converted.config.global_pool is global_pool and converted.config.num_labels == 10
    direct = MAEForImageClassification(
        MAEConfig.from_preset("mae-vit-base-patch16", num_labels=10, global_pool=global_pool)
    )
    direct.load_state_dict(reference_to_mae_state_dict(state), strict=True)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(images)
        torch.testing.assert_close(converted(images).logits, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(direct.eval()(images).logits, expected, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# The other kinds, detection and inference on small models
# ----------------------------------------------------------------------------------------------------------------


def test_encoder_only_checkpoint_becomes_the_encoder(tmp_path):
    reference = randomize_(ReferenceMAE(**TINY, **TINY_DECODER), seed=13).eval()
    encoder_state = {k: v for k, v in reference.state_dict().items() if not k.startswith(("decoder_", "mask_token"))}
    assert detect_reference_kind(encoder_state) == "pretrain-encoder"
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save(encoder_state, path)  # a bare state dict, as some released files are
    _convert(path, tmp_path / "out")
    encoder = MAEModel.from_pretrained(tmp_path / "out").eval()
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        latent, mask, _ = reference.forward_encoder(images, 0.75, noise)
        ours = encoder(images, mask_ratio=0.75, noise=noise)
    torch.testing.assert_close(ours.last_hidden_state, latent, atol=1e-5, rtol=0)
    assert torch.equal(ours.mask, mask)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["MAEModel"] and "AutoModel" in config["auto_map"]


def test_linear_probe_checkpoint_keeps_its_batchnorm_head(tmp_path):
    reference = randomize_(ReferenceViT(**TINY, num_classes=5, global_pool=False), seed=14)
    reference.head = nn.Sequential(nn.BatchNorm1d(32, affine=False, eps=1e-6), reference.head)
    with torch.no_grad():
        reference.head[0].running_mean.uniform_(-1, 1)
        reference.head[0].running_var.uniform_(0.5, 2.0)
    reference.eval()
    state = reference.state_dict()
    assert detect_reference_kind(state) == "linear-probe"
    _convert(_save_reference(tmp_path / "linprobe.pth", state), tmp_path / "out")
    converted = MAEForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert converted.config.linear_probe and not converted.config.global_pool and converted.config.num_labels == 5
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(converted(images).logits, reference(images), atol=1e-5, rtol=0)


def test_architecture_is_inferred_from_shapes_and_heads_from_presets():
    state = ReferenceMAE(**TINY, **TINY_DECODER).state_dict()
    config = infer_reference_config(state)
    expected = MAEConfig.from_preset("mae-vit-tiny-test")
    for name in (
        "image_size",
        "patch_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "decoder_hidden_size",
        "decoder_num_hidden_layers",
        "decoder_num_attention_heads",
        "decoder_intermediate_size",
    ):
        assert getattr(config, name) == getattr(expected, name), name
    # a width no preset has: the head count must be given
    odd = ReferenceMAE(img_size=48, patch_size=16, embed_dim=48, depth=1, num_heads=3, **TINY_DECODER).state_dict()
    with pytest.raises(CheckpointFormatError, match="--num_attention_heads"):
        infer_reference_config(odd)
    config = infer_reference_config(odd, num_attention_heads=3)
    assert (config.image_size, config.patch_size, config.num_attention_heads, config.num_patches) == (48, 16, 3, 9)


def test_non_mae_state_dict_is_refused_with_the_missing_key(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointFormatError, match="'cls_token' is missing"):
        load_reference_model(path)


# ----------------------------------------------------------------------------------------------------------------
# Safe loading
# ----------------------------------------------------------------------------------------------------------------


class _CreatesMarkerOnLoad:
    """Unpickling this calls ``open(marker, "w")``: code execution, which the loader must never allow."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    state = ReferenceMAE(**TINY, **TINY_DECODER).state_dict()
    torch.save({"model": state, "payload": _CreatesMarkerOnLoad(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match="--trust_pickle"):
        load_checkpoint_file(path)
    assert not marker.exists()
    # through the command line: one clear line, exit status 2, no output folder, still nothing ran
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(path), str(tmp_path / "out")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("convert_checkpoint.py: error: Refused to load") and "--trust_pickle" in last_line
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_reference_args_namespace_loads_safely_and_other_objects_need_trust(tmp_path):
    state = ReferenceMAE(**TINY, **TINY_DECODER).state_dict()
    path = _save_reference(tmp_path / "ok.pth", state, args=argparse.Namespace(norm_pix_loss=False, lr=None))
    loaded = load_checkpoint_file(path)
    assert loaded.args == {"norm_pix_loss": False, "lr": None} and set(loaded.state_dict) == set(state)
    assert sorted(loaded.extra_keys) == ["args", "epoch"]
    # a benign object outside the allow-list is still refused unless the user vouches for the file
    odd = _save_reference(tmp_path / "odd.pth", state, args=argparse.Namespace(output_dir=pathlib.PurePosixPath("x")))
    with pytest.raises(UnsafeCheckpointError, match="PurePosixPath"):
        load_checkpoint_file(odd)
    assert load_checkpoint_file(odd, trust_pickle=True).args["output_dir"] == pathlib.PurePosixPath("x")


def test_ddp_prefix_and_safetensors_sources(tmp_path):
    state = randomize_(ReferenceMAE(**TINY, **TINY_DECODER), seed=15).state_dict()
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "ref.safetensors")
    for source in ("ddp.pth", "ref.safetensors"):
        model, kind = load_reference_model(tmp_path / source, norm_pix_loss=False)
        assert kind == "pretrain" and not model.config.norm_pix_loss
        ours = model.state_dict()
        for key, value in reference_to_mae_state_dict(state).items():
            assert torch.equal(ours[key], value), key


# ----------------------------------------------------------------------------------------------------------------
# transformers ViTMAE folders <-> this project
# ----------------------------------------------------------------------------------------------------------------

_TO_HUB_V4 = {
    "attention.q_proj.": "attention.attention.query.",
    "attention.k_proj.": "attention.attention.key.",
    "attention.v_proj.": "attention.attention.value.",
    "attention.o_proj.": "attention.output.dense.",
    "mlp.fc1.": "intermediate.dense.",
    "mlp.fc2.": "output.dense.",
}


def _tiny_vitmae_config() -> ViTMAEConfig:
    return ViTMAEConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        norm_pix_loss=True,
        layer_norm_eps=1e-6,
    )


def _write_hub_v4_folder(model, folder: pathlib.Path) -> None:
    """The layout of the ``facebook/vit-mae-*`` Hub repositories (transformers 4 names)."""
    folder.mkdir()
    state = {}
    for key, value in model.state_dict().items():
        key = re.sub(r"^(vit\.)?layers\.", r"\1encoder.layer.", key)  # the decoder keeps "decoder_layers."
        for new, old in _TO_HUB_V4.items():
            key = key.replace(new, old)
        state[key] = value.contiguous()
    assert any("attention.attention.query" in key for key in state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    model.config.save_pretrained(folder)


@pytest.mark.parametrize("layout", ["hub_v4", "v5_save_pretrained"])
def test_vitmae_pretraining_folder_converts_both_layouts(tmp_path, layout):
    theirs = randomize_(ViTMAEForPreTraining(_tiny_vitmae_config()), seed=16).eval()
    source = tmp_path / "vitmae"
    if layout == "hub_v4":
        _write_hub_v4_folder(theirs, source)
    else:
        theirs.save_pretrained(source)
    _convert(source, tmp_path / "ours")
    ours = MAEForPreTraining.from_pretrained(tmp_path / "ours").eval()
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        expected, got = theirs(images, noise=noise), ours(images, noise=noise)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=0)


def test_vitmae_encoder_folder_converts(tmp_path):
    config = _tiny_vitmae_config()
    theirs = randomize_(ViTMAEModel(config), seed=17).eval()
    _write_hub_v4_folder(theirs, tmp_path / "vitmae")
    _convert(tmp_path / "vitmae", tmp_path / "ours")
    ours = MAEModel.from_pretrained(tmp_path / "ours").eval()
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        expected = theirs(images, noise=noise).last_hidden_state
        got = ours(images, mask_ratio=config.mask_ratio, noise=noise).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_project_to_vitmae_and_back_is_exact(tmp_path):
    ours = randomize_(MAEForPreTraining(MAEConfig.from_preset("mae-vit-tiny-test", norm_pix_loss=True)), seed=18)
    ours.save_pretrained(tmp_path / "ours")
    _convert(tmp_path / "ours", tmp_path / "vitmae", "--to", "vitmae")
    assert not (tmp_path / "vitmae" / "modeling_mae_hf.py").exists()
    config = json.loads((tmp_path / "vitmae" / "config.json").read_text())
    assert config["model_type"] == "vit_mae" and "auto_map" not in config
    # plain transformers, no remote code: every weight is found
    theirs, info = ViTMAEForPreTraining.from_pretrained(tmp_path / "vitmae", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    expected_vitmae = mae_to_vitmae_state_dict(ours.state_dict())
    assert all(torch.equal(theirs.state_dict()[k], v) for k, v in expected_vitmae.items())
    _convert(tmp_path / "vitmae", tmp_path / "back")
    back = MAEForPreTraining.from_pretrained(tmp_path / "back")
    assert back.state_dict().keys() == ours.state_dict().keys()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ours.state_dict().items())
    assert back.config.norm_pix_loss and back.config.layer_norm_eps == ours.config.layer_norm_eps


def test_classifier_to_vitmae_is_refused_with_a_clear_error(tmp_path, capsys):
    MAEForImageClassification(MAEConfig.from_preset("mae-vit-tiny-test", num_labels=3)).save_pretrained(tmp_path / "c")
    assert convert_checkpoint.main([str(tmp_path / "c"), str(tmp_path / "out"), "--to", "vitmae"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # earlier lines: the progress bar of the save above
    assert error.startswith("convert_checkpoint.py: error:") and "no transformers ViTMAE counterpart" in error
    assert not (tmp_path / "out").exists()


def test_converted_folder_is_safetensors_only_with_code_processor_and_card(tmp_path):
    from huggingface_hub import ModelCard

    state = randomize_(ReferenceMAE(**TINY, **TINY_DECODER), seed=19).state_dict()
    result = convert_to_folder(_save_reference(tmp_path / "mae_visualize_vit_tiny.pth", state), tmp_path / "out")
    assert result.kind == "pretrain" and any("file name" in note for note in result.notes)
    files = set(os.listdir(tmp_path / "out"))
    assert files == {
        "config.json",
        "model.safetensors",
        "configuration_mae_hf.py",
        "modeling_mae_hf.py",
        "preprocessor_config.json",
        "README.md",
    }
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["norm_pix_loss"] is False  # 'visualize' files are pixel-target models
    assert config["auto_map"]["AutoModelForPreTraining"] == "modeling_mae_hf.MAEForPreTraining"
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.library_name == "transformers" and card.data.tags[0] == "mae"
    assert card.data.license == "cc-by-nc-4.0"  # the license of the facebookresearch/mae weights
    assert "trust_remote_code=True" in card.text
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_to_folder(tmp_path / "mae_visualize_vit_tiny.pth", tmp_path / "out")
