"""Fine-tuning / linear-probing parts without a training run: layer-wise lr decay groups against the reference
formula, mixup / cutmix soft targets through the model's loss, the reference augmentations, the shared loop's
non-finite-loss and signal handling, and the classifier model card."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import load_script
from huggingface_hub import ModelCard
from PIL import Image

from mae_hf import MAEConfig, MAEForImageClassification
from mae_hf.cards import classifier_card_data, render_model_card
from mae_hf.training.checkpoint import TrainingProgress, list_checkpoints
from mae_hf.training.classification import (
    build_finetune_parser,
    build_finetune_transform,
    build_linprobe_transform,
    build_mixup,
)
from mae_hf.training.logging import JsonlLogger, read_jsonl
from mae_hf.training.loop import LoopSettings, NonFiniteLossError, TrainingInterrupted, run_training_loop
from mae_hf.training.optim import param_groups_layer_decay


def _classifier(**overrides) -> MAEForImageClassification:
    torch.manual_seed(0)
    return MAEForImageClassification(MAEConfig.from_preset("mae-vit-tiny-test", num_labels=5, **overrides))


def _reference_param_groups_lrd(model, weight_decay, no_weight_decay_list, layer_decay):
    """facebookresearch/mae util/lr_decay.py ``param_groups_lrd`` (+ ``get_layer_id_for_vit``), verbatim logic,
    on parameter names without this project's ``mae.`` prefix."""
    param_group_names, param_groups = {}, {}
    num_layers = len(model.mae.blocks) + 1
    layer_scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
    for full_name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        n = full_name.removeprefix("mae.")
        if p.ndim == 1 or n in no_weight_decay_list:
            g_decay, this_decay = "no_decay", 0.0
        else:
            g_decay, this_decay = "decay", weight_decay
        if n in ["cls_token", "pos_embed"]:
            layer_id = 0
        elif n.startswith("patch_embed"):
            layer_id = 0
        elif n.startswith("blocks"):
            layer_id = int(n.split(".")[1]) + 1
        else:
            layer_id = num_layers
        group_name = f"layer_{layer_id}_{g_decay}"
        if group_name not in param_group_names:
            this_scale = layer_scales[layer_id]
            param_group_names[group_name] = {"lr_scale": this_scale, "weight_decay": this_decay, "params": []}
            param_groups[group_name] = {"lr_scale": this_scale, "weight_decay": this_decay, "params": []}
        param_group_names[group_name]["params"].append(full_name)
        param_groups[group_name]["params"].append(p)
    return param_group_names


@pytest.mark.parametrize("global_pool", [True, False])
def test_layer_decay_groups_equal_the_reference(global_pool: bool):
    model = _classifier(global_pool=global_pool)
    ours = {g["name"]: g for g in param_groups_layer_decay(model, 0.05, 0.65, model.config.num_hidden_layers)}
    reference = _reference_param_groups_lrd(model, 0.05, {"pos_embed", "cls_token", "dist_token"}, 0.65)
    assert set(ours) == set(reference)
    for name, group in reference.items():
        assert ours[name]["lr_scale"] == pytest.approx(group["lr_scale"])
        assert ours[name]["weight_decay"] == group["weight_decay"]
        assert ours[name]["param_names"] == group["params"]
    # Hand-checked values for depth 2: num_layers = 3, head scale 1, block 0 scale 0.65², embeddings 0.65³.
    assert ours["layer_3_decay"]["lr_scale"] == 1.0 and "head.weight" in ours["layer_3_decay"]["param_names"]
    assert ours["layer_1_decay"]["lr_scale"] == pytest.approx(0.65**2)
    assert ours["layer_0_no_decay"]["lr_scale"] == pytest.approx(0.65**3)
    assert {"mae.cls_token", "mae.pos_embed"} <= set(ours["layer_0_no_decay"]["param_names"])
    assert "mae.patch_embed.projection.weight" in ours["layer_0_decay"]["param_names"] or any(
        n.startswith("mae.patch_embed") for n in ours["layer_0_decay"]["param_names"]
    )


def test_layer_decay_skips_frozen_parameters():
    model = _classifier()
    model.mae.blocks[0].requires_grad_(False)
    groups = param_groups_layer_decay(model, 0.05, 0.75, model.config.num_hidden_layers)
    names = [n for g in groups for n in g["param_names"]]
    assert not any(n.startswith("mae.blocks.0.") for n in names)
    assert len(names) == sum(1 for p in model.parameters() if p.requires_grad)


def _finetune_args(*argv: str) -> argparse.Namespace:
    return build_finetune_parser().parse_args(["--output_dir", "x", "--train_dir", "x", *argv])


def test_mixup_cutmix_soft_targets_and_model_loss():
    args = _finetune_args()
    assert (args.mixup, args.cutmix, args.smoothing) == (0.8, 1.0, 0.1)
    mixup = build_mixup(args, num_classes=5)
    model = _classifier()
    pixels = torch.randn(8, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    for _ in range(4):  # mixup and cutmix are drawn at random per batch
        mixed, targets = mixup(pixels.clone(), labels)
        assert targets.shape == (8, 5) and targets.is_floating_point()
        assert torch.allclose(targets.sum(dim=1), torch.ones(8))
        assert (targets.max(dim=1).values < 1.0).all()  # smoothed and mixed: never one-hot
        loss = model(pixel_values=mixed, labels=targets).loss
        assert torch.isfinite(loss)
        loss.backward()
        expected = torch.sum(-targets * torch.log_softmax(model(pixel_values=mixed).logits, dim=-1), dim=-1).mean()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert build_mixup(_finetune_args("--mixup", "0", "--cutmix", "0"), 5) is None


def test_mixup_loss_survives_an_odd_batch_left_by_a_skipped_image():
    loss_of_batch = load_script("finetune").loss_function(_finetune_args(), num_labels=5)
    model = _classifier()
    batch = {"pixel_values": torch.randn(7, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 3, 4, 0, 1])}
    assert torch.isfinite(loss_of_batch(model, batch))  # timm's Mixup alone asserts an even batch


def test_finetune_transform_is_the_reference():
    text = repr(build_finetune_transform(_finetune_args(), 32))
    assert "RandomResizedCropAndInterpolation(size=(32, 32), scale=(0.08, 1.0)" in text
    assert "bicubic" in text
    assert "RandAugment(n=2" in text and "m=9" in text and "mstd=0.5" in text and "PosterizeIncreasing" in text
    assert "RandomErasing(p=0.25, mode=pixel, count=(1, 1))" in text
    transform = build_finetune_transform(_finetune_args(), 32)
    # Magnitude 10 posterize (0 bits, possible with mstd 0.5) gives a black image instead of Pillow's error.
    for step in transform.transforms:
        for op in getattr(step, "ops", []):
            if op.name == "PosterizeIncreasing":
                assert op.aug_fn(Image.new("RGB", (4, 4), (200, 100, 50)), 0).getextrema() == ((0, 0),) * 3
    image = Image.new("RGB", (20, 24), (10, 200, 30))
    assert transform(image).shape == (3, 32, 32)
    linprobe = build_linprobe_transform(16)
    assert linprobe(image).shape == (3, 16, 16) and "RandomResizedCrop" in repr(linprobe)


class _Data:
    """Batches of a fixed regression problem, for the loop tests."""

    def __init__(self, batches: int = 4) -> None:
        generator = torch.Generator().manual_seed(0)
        self.batches = [{"x": torch.randn(4, 3, generator=generator)} for _ in range(batches)]

    def epoch_loader(self, epoch: int, skip: int):
        return iter(self.batches[skip:])


def _loop_setup(tmp_path: Path, total_steps: int, **settings):
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    loop_settings = LoopSettings(
        output_dir=str(tmp_path),
        total_steps=total_steps,
        schedule_steps_per_epoch=4,
        steps_in_epoch=4,
        base_lr=0.1,
        logging_steps=1,
        disable_tqdm=True,
        **settings,
    )
    return accelerator, model, optimizer, loop_settings


def test_nonfinite_steps_are_skipped_then_the_run_stops(tmp_path: Path):
    accelerator, model, optimizer, settings = _loop_setup(tmp_path, 12, max_nonfinite_steps=3, checkpointing_steps=2)
    data = _Data()
    calls = {"n": 0}
    snapshots = []

    def compute_loss(batch):
        calls["n"] += 1
        snapshots.append(model.weight.detach().clone())
        loss = model(batch["x"]).pow(2).mean()
        # Batch 3 is NaN (skipped, then training goes on); from batch 6 on every loss is infinite.
        return loss * float("nan") if calls["n"] == 3 or calls["n"] >= 6 else loss

    jsonl = JsonlLogger(str(tmp_path / "log.jsonl"))
    progress = TrainingProgress()
    with pytest.raises(NonFiniteLossError, match="last good checkpoint .*checkpoint_4 is intact"):
        run_training_loop(accelerator, model, optimizer, data.epoch_loader, compute_loss, progress, settings, jsonl)
    # Step 3 changed nothing; steps 1, 2, 4, 5 did; steps 6, 7, 8 were skipped and the third one stopped the run.
    assert torch.equal(snapshots[2], snapshots[3]) and not torch.equal(snapshots[3], snapshots[4])
    assert torch.equal(snapshots[5], model.weight.detach())
    assert progress.global_step == 7  # 8 was the stopping step: never counted, never checkpointed
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["checkpoint_2", "checkpoint_4"]
    skipped = [r["step"] for r in read_jsonl(str(tmp_path / "log.jsonl")) if r.get("nonfinite_loss_skipped")]
    assert skipped == [3, 6, 7, 8]


def test_sigterm_finishes_the_step_and_saves_a_checkpoint(tmp_path: Path):
    accelerator, model, optimizer, settings = _loop_setup(tmp_path, 8)
    data = _Data()
    calls = {"n": 0}
    before = {}

    def compute_loss(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            before["weight"] = model.weight.detach().clone()
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step: the step must still complete
        return model(batch["x"]).pow(2).mean()

    previous = signal.getsignal(signal.SIGTERM)
    progress = TrainingProgress()
    with pytest.raises(TrainingInterrupted, match="after step 3") as caught:
        run_training_loop(
            accelerator, model, optimizer, data.epoch_loader, compute_loss, progress, settings, JsonlLogger("", False)
        )
    assert progress.global_step == 3 and not torch.equal(before["weight"], model.weight.detach())
    assert os.path.basename(caught.value.checkpoint) == "checkpoint_3"
    assert list_checkpoints(str(tmp_path)) == [caught.value.checkpoint]
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is restored


def test_classifier_card_parses_with_model_index(tmp_path: Path):
    data = classifier_card_data("mae-digits-ft", base_model="user/mae-digits", top1=0.975, top5=0.999)
    path = tmp_path / "README.md"
    render_model_card(
        "classifier.md",
        data,
        str(path),
        model_id="mae-digits-ft",
        task="fine-tuning",
        data_description="digits",
        labels="0, 1",
        recipe={"layer-wise lr decay": 0.75},
        results={"top1": 0.975, "top5": 0.999, "loss": 0.1, "num_samples": 300},
        best=None,
        eval_curve=[{"step": 1, "epoch": 1.0, "eval_top1": 0.9, "eval_top5": 1.0, "eval_loss": 0.3}],
        loss_curve=[{"step": 1, "epoch": 0.5, "loss": 1.0, "lr": 1e-3}],
    )
    card = ModelCard.load(str(path))
    assert card.data.pipeline_tag == "image-classification" and card.data.library_name == "transformers"
    assert card.data.base_model == "user/mae-digits" and {"mae", "vision", "image-classification"} <= set(
        card.data.tags
    )
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results == {"top-1": 0.975, "top-5": 0.999}
    assert "model-index" in path.read_text() and "AutoModelForImageClassification" in card.text


def test_classifier_from_a_reference_checkpoint_file(tmp_path: Path):
    """--model_name_or_path may be a facebookresearch/mae .pth: converted, then loaded with the dataset's classes."""
    from mae_hf.timm_reference import ReferenceMAE, randomize_
    from mae_hf.training.classification import build_classifier

    reference = randomize_(
        ReferenceMAE(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=16,
                     decoder_depth=1, decoder_num_heads=2),
        seed=3,
    )  # fmt: skip
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": reference.state_dict()}, path)
    model = build_classifier(str(path), ["cat", "dog"], input_size=48, config_overrides={"linear_probe": False})
    assert model.config.id2label == {0: "cat", 1: "dog"} and model.config.image_size == 48
    assert torch.equal(model.mae.blocks[1].attn.qkv.weight, reference.state_dict()["blocks.1.attn.qkv.weight"])
    assert model.mae.pos_embed.shape == (1, 1 + 36, 32)
    assert model(pixel_values=torch.randn(2, 3, 48, 48)).logits.shape == (2, 2)


@pytest.mark.parametrize(
    ("size", "blr", "layer_decay", "drop_path", "epochs"),
    [
        ("base_patch16", 5e-4, 0.65, 0.1, 100),
        ("large_patch16", 1e-3, 0.75, 0.2, 50),
        ("huge_patch14", 1e-3, 0.75, 0.3, 50),
    ],
)
def test_reference_classification_recipes(size: str, blr: float, layer_decay: float, drop_path: float, epochs: int):
    from mae_hf.training.args import parse_args_with_recipe
    from mae_hf.training.classification import build_linprobe_parser

    configs = Path(__file__).resolve().parents[1] / "configs"
    ft = parse_args_with_recipe(build_finetune_parser(), ["--config", str(configs / f"finetune_vit_{size}.yaml")])
    assert (ft.blr, ft.layer_decay, ft.drop_path, ft.num_train_epochs, ft.warmup_epochs) == (
        blr, layer_decay, drop_path, epochs, 5
    )  # fmt: skip
    assert (ft.mixup, ft.cutmix, ft.smoothing, ft.reprob, ft.auto_augment) == (
        0.8,
        1.0,
        0.1,
        0.25,
        "rand-m9-mstd0.5-inc1",
    )
    assert ft.global_pool and ft.per_device_train_batch_size * ft.gradient_accumulation_steps * 8 == 1024
    lp = parse_args_with_recipe(build_linprobe_parser(), ["--config", str(configs / f"linprobe_vit_{size}.yaml")])
    assert (lp.blr, lp.weight_decay, lp.num_train_epochs, lp.warmup_epochs, lp.global_pool) == (0.1, 0.0, 90, 10, False)
    assert lp.per_device_train_batch_size * lp.gradient_accumulation_steps * 8 == 16384
    for name in ("finetune_tiny_cpu", "finetune_demo"):
        parse_args_with_recipe(build_finetune_parser(), ["--config", str(configs / f"{name}.yaml")])
    for name in ("linprobe_tiny_cpu", "linprobe_demo"):
        parse_args_with_recipe(build_linprobe_parser(), ["--config", str(configs / f"{name}.yaml")])
