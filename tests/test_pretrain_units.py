"""Unit tests of the shared training package (no training runs): schedule, weight decay, lr scaling, recipes,
options, RGB conversion, transforms, data order and sharding, checkpoints, kNN, reconstruction grid."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from datasets import Dataset, Features, Value
from PIL import Image
from torchvision.transforms import v2

from mae_hf import MAEConfig, MAEForPreTraining
from mae_hf.training.args import OptionError, build_pretrain_parser, parse_args_with_recipe, validate_pretrain_args
from mae_hf.training.checkpoint import TrainingProgress, list_checkpoints, resolve_checkpoint, should_checkpoint
from mae_hf.training.data import (
    EpochDataLoaders,
    build_pretrain_transform,
    normalize_images,
    steps_per_epoch,
    streaming_steps_per_epoch,
    to_rgb,
    total_training_steps,
)
from mae_hf.training.knn import knn_top1
from mae_hf.training.optim import (
    cosine_lr_at,
    lr_at_step,
    param_groups_weight_decay,
    scaled_learning_rate,
    set_learning_rate,
)
from mae_hf.training.visualize import grid_shape, reconstruction_grid

CONFIGS = REPO_ROOT / "configs"

# ---------------------------------------------------------------------------------------------------------------
# Optimisation
# ---------------------------------------------------------------------------------------------------------------


def test_reference_schedule_values():
    # The reference's check: base 2.4e-3, warm-up 40, 800 epochs.
    assert cosine_lr_at(0, 2.4e-3, 0.0, 40, 800) == 0.0
    assert cosine_lr_at(20, 2.4e-3, 0.0, 40, 800) == pytest.approx(1.2e-3)
    assert cosine_lr_at(40, 2.4e-3, 0.0, 40, 800) == pytest.approx(2.4e-3)  # warm-up end = base lr
    assert cosine_lr_at(420, 2.4e-3, 0.0, 40, 800) == pytest.approx(1.2e-3)
    assert cosine_lr_at(800, 2.4e-3, 0.0, 40, 800) == pytest.approx(0.0, abs=1e-15)  # end = min_lr
    assert cosine_lr_at(800, 2.4e-3, 1e-6, 40, 800) == pytest.approx(1e-6)


def test_lr_per_iteration_from_global_step():
    steps, total = 10, 50  # 10 steps per epoch, 5 epochs, 1 warm-up epoch
    lrs = [lr_at_step(s, steps, 1e-3, 1e-5, 1, total) for s in range(total + 1)]
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(5e-4)  # linear inside the first epoch, per iteration
    assert lrs[10] == pytest.approx(1e-3)  # warm-up end
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:]))  # then strictly decreasing
    assert lrs[-1] == pytest.approx(1e-5)  # end of schedule = min_lr
    assert lrs[-2] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 39 / 40)))


def test_set_learning_rate_honours_lr_scale():
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(2)]
    optimizer = torch.optim.AdamW([{"params": [params[0]], "lr_scale": 0.5}, {"params": [params[1]]}], lr=1.0)
    set_learning_rate(optimizer, 2e-3)
    assert [group["lr"] for group in optimizer.param_groups] == [1e-3, 2e-3]


def test_weight_decay_groups_as_reference_vit_base():
    with torch.device("meta"):
        model = MAEForPreTraining(MAEConfig.from_preset("mae-vit-base-patch16"))
    no_decay, decay = param_groups_weight_decay(model, 0.05)
    assert (len(decay["params"]), len(no_decay["params"])) == (85, 167)  # observed on the reference
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    not_decayed = {id(p) for p in no_decay["params"]}
    named = dict(model.named_parameters())
    for name in ("mae.cls_token", "decoder.mask_token", "mae.patch_embed.proj.weight", "mae.blocks.0.attn.qkv.weight"):
        assert id(named[name]) in decayed, name  # the reference decays the tokens and the patch embedding too
    for name in ("mae.patch_embed.proj.bias", "mae.blocks.0.norm1.weight", "mae.norm.weight"):
        assert id(named[name]) in not_decayed, name
    for name, param in named.items():
        if not param.requires_grad:  # the fixed sin-cos tables are not optimised at all
            assert id(param) not in decayed | not_decayed and "pos_embed" in name
        elif name.endswith(".bias") or param.ndim == 1:
            assert id(param) in not_decayed, name
        else:
            assert id(param) in decayed, name
    frozen = [name for name, param in named.items() if not param.requires_grad]
    assert sorted(frozen) == ["decoder.pos_embed", "mae.pos_embed"]


def test_lr_scaling_with_effective_batch():
    # effective batch = per device x accumulation x processes
    assert scaled_learning_rate(1.5e-4, 64 * 8 * 8) == pytest.approx(2.4e-3)
    assert scaled_learning_rate(1.5e-4, 16 * 2 * 2) == pytest.approx(1.5e-4 * 64 / 256)
    assert scaled_learning_rate(1.5e-4, 4096, learning_rate=1e-3) == 1e-3


def test_steps_per_epoch_with_accumulation():
    assert steps_per_epoch(6, 2) == 3
    assert steps_per_epoch(7, 2) == 3  # a trailing partial accumulation cycle is not run
    with pytest.raises(OptionError, match="gradient_accumulation_steps"):
        steps_per_epoch(1, 2)
    assert total_training_steps(2, 3, None) == 6
    assert total_training_steps(2, 3, 4) == 4
    assert total_training_steps(2, None, 9) == 9


# ---------------------------------------------------------------------------------------------------------------
# Options and recipes
# ---------------------------------------------------------------------------------------------------------------


def _parse(*argv: str):
    return parse_args_with_recipe(build_pretrain_parser(), list(argv))


@pytest.mark.parametrize(
    ("recipe", "preset"),
    [
        ("pretrain_vit_base_patch16.yaml", "mae-vit-base-patch16"),
        ("pretrain_vit_large_patch16.yaml", "mae-vit-large-patch16"),
        ("pretrain_vit_huge_patch14.yaml", "mae-vit-huge-patch14"),
    ],
)
def test_reference_recipes(recipe, preset):
    args = _parse("--config", str(CONFIGS / recipe))
    assert args.model_preset == preset
    assert args.norm_pix_loss is True and args.mask_ratio == 0.75
    assert (args.blr, args.weight_decay, args.adam_beta1, args.adam_beta2) == (1.5e-4, 0.05, 0.9, 0.95)
    assert (args.warmup_epochs, args.num_train_epochs, args.min_lr) == (40, 800, 0.0)
    assert args.learning_rate is None
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * 8 == 4096  # on 8 GPUs


def test_recipe_plus_command_line_overrides(tmp_path):
    args = _parse(
        "--config",
        str(CONFIGS / "pretrain_vit_base_patch16.yaml"),
        "--blr",
        "1e-4",
        "--gradient_accumulation_steps",
        "2",
        "--no-norm_pix_loss",
        "--model_config_overrides",
        "hidden_size=384,num_attention_heads=6",
        "--checkpointing_steps",
        "100",
        "--output_dir",
        str(tmp_path),
    )
    assert args.blr == 1e-4 and args.gradient_accumulation_steps == 2 and args.norm_pix_loss is False
    assert args.model_config_overrides == {"hidden_size": 384, "num_attention_heads": 6}
    assert args.checkpointing_steps == 100 and args.num_train_epochs == 800  # untouched recipe values stay
    demo = _parse("--config", str(CONFIGS / "pretrain_demo.yaml"))
    assert demo.model_config_overrides["patch_size"] == 4 and demo.checkpointing_steps == "epoch"


def test_unknown_recipe_key_names_it(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("learning_rte: 0.1\n")
    with pytest.raises(OptionError, match="learning_rte"):
        _parse("--config", str(recipe))
    recipe.write_text("model_preset: mae-vit-gigantic\nblr: 1e-3\n")  # YAML reads 1e-3 as a string: still a float
    args = _parse("--config", str(recipe), "--output_dir", str(tmp_path), "--train_dir", str(tmp_path))
    assert args.blr == 1e-3
    with pytest.raises(OptionError, match="--model_preset"):
        validate_pretrain_args(args)


def test_help_documents_every_option():
    parser = build_pretrain_parser()
    text = parser.format_help()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.dest
            assert f"--{action.dest}" in text, action.dest


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--train_dir", "{d}"], "--output_dir"),
        (["--output_dir", "{d}"], "--train_dir"),
        (["--output_dir", "{d}", "--train_dir", "{d}/missing"], "--train_dir"),
        (["--output_dir", "{d}", "--train_dir", "{d}", "--streaming"], "--max_train_steps"),
        (["--output_dir", "{d}", "--train_dir", "{d}", "--mask_ratio", "1.0"], "--mask_ratio"),
        (["--output_dir", "{d}", "--train_dir", "{d}", "--per_device_train_batch_size", "0"], "--per_device_"),
        (["--output_dir", "{d}", "--train_dir", "{d}", "--learning_rate", "-1"], "--learning_rate"),
        (["--output_dir", "{d}", "--train_dir", "{d}", "--resume_from_checkpoint", "{d}/x"], "--resume_from"),
        (["--output_dir", "{d}", "--train_dir", "{d}", "--report_to", "comet"], "--report_to"),
    ],
)
def test_bad_options_name_the_option(tmp_path, argv, option):
    args = _parse(*[item.format(d=tmp_path) for item in argv])
    with pytest.raises(OptionError, match=option):
        validate_pretrain_args(args)


def test_bad_checkpointing_steps_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit):
        _parse("--checkpointing_steps", "sometimes")
    assert "checkpointing_steps" in capsys.readouterr().err


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for name in ("single_gpu", "multi_gpu", "fsdp", "deepspeed_zero2", "multi_node"):
        config = load_config_from_file(str(CONFIGS / "accelerate" / f"{name}.yaml"))
        kinds[name] = (str(config.distributed_type), config.num_machines)
    assert kinds["fsdp"][0].endswith("FSDP") and kinds["deepspeed_zero2"][0].endswith("DEEPSPEED")
    assert kinds["multi_node"][1] == 8 and kinds["multi_gpu"][0].endswith("MULTI_GPU")


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def test_to_rgb_handles_every_mode():
    gray = np.full((4, 4), 200, np.uint8)
    cases = {
        "L": Image.fromarray(gray),
        "1": Image.fromarray(gray > 100),
        "I;16": Image.fromarray(np.full((4, 4), 65535, np.uint16)),
        "I": Image.fromarray(np.full((4, 4), 32768, np.int32)),
        "F": Image.fromarray(np.full((4, 4), 0.5, np.float32)),
        "RGBA": Image.new("RGBA", (4, 4), (10, 20, 30, 0)),
        "LA": Image.new("LA", (4, 4), (0, 255)),
        "CMYK": Image.new("CMYK", (4, 4), (0, 0, 0, 0)),
        "YCbCr": Image.new("YCbCr", (4, 4), (128, 128, 128)),
    }
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    cases["P+transparency"] = palette
    expected = {
        "L": 200,
        "1": 255,
        "I;16": 255,  # 16-bit full scale -> 8-bit full scale (PIL alone would clip, not rescale)
        "I": 128,
        "F": 128,
        "RGBA": 255,  # fully transparent -> white background
        "LA": 0,
        "CMYK": 255,
        "YCbCr": 128,
        "P+transparency": 255,
    }
    for name, image in cases.items():
        rgb = to_rgb(image)
        assert rgb.mode == "RGB", name
        assert abs(int(np.asarray(rgb)[0, 0, 0]) - expected[name]) <= 1, name


def test_uint8_transport_then_normalisation_equals_the_float_transform():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    torch.manual_seed(3)
    as_float = build_pretrain_transform(32)(image)
    torch.manual_seed(3)
    as_uint8 = build_pretrain_transform(32, normalize=False)(image)
    assert as_uint8.dtype == torch.uint8
    assert torch.equal(normalize_images(as_uint8[None])[0], as_float)  # same crop, same numbers
    assert normalize_images(as_float) is as_float


def test_pretrain_transform_is_the_reference():
    transform = build_pretrain_transform(32)
    crop = next(t for t in transform.transforms if isinstance(t, v2.RandomResizedCrop))
    assert (
        crop.scale == (0.2, 1.0) and crop.interpolation == v2.InterpolationMode.BICUBIC and tuple(crop.size) == (32, 32)
    )
    assert any(isinstance(t, v2.RandomHorizontalFlip) for t in transform.transforms)
    norm = next(t for t in transform.transforms if isinstance(t, v2.Normalize))
    assert tuple(norm.mean) == (0.485, 0.456, 0.406) and tuple(norm.std) == (0.229, 0.224, 0.225)
    out = transform(Image.new("RGB", (50, 40), (124, 116, 104)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and out.abs().max() < 0.05


def _indexed_dataset(n: int) -> Dataset:
    return Dataset.from_dict({"index": list(range(n))}, features=Features({"index": Value("int64")}))


def _collate_indices(examples):
    return {"pixel_values": torch.tensor([example["index"] for example in examples])}


def test_map_style_order_depends_on_seed_and_epoch_and_shards_are_disjoint():
    dataset = _indexed_dataset(40)

    def order(rank: int, epoch: int, skip: int = 0, seed: int = 0) -> list[int]:
        loaders = EpochDataLoaders(dataset, 4, 2, rank, seed, collate_fn=_collate_indices)
        assert len(loaders) == 5  # 40 / 2 processes / batch 4
        return [i for b in loaders.epoch_loader(epoch, skip_batches=skip) for i in b["pixel_values"].tolist()]

    rank0, rank1 = order(0, 0), order(1, 0)
    assert len(rank0) == len(rank1) == 20 and not set(rank0) & set(rank1)
    assert order(0, 0) == rank0  # reproducible
    assert order(0, 1) != rank0 and order(0, 0, seed=1) != rank0  # a function of (seed, epoch)
    assert order(0, 0, skip=2) == rank0[8:]  # resuming skips batches without changing the order


def test_streaming_shards_are_disjoint_across_processes():
    dataset = _indexed_dataset(24).to_iterable_dataset(num_shards=4)
    seen = []
    for rank in range(2):
        loaders = EpochDataLoaders(dataset, 2, 2, rank, seed=0, shuffle_buffer_size=8, collate_fn=_collate_indices)
        seen.append([i for b in loaders.epoch_loader(0) for i in b["pixel_values"].tolist()])
    assert len(seen[0]) == len(seen[1]) == 12
    assert sorted(seen[0] + seen[1]) == list(range(24))  # every sample once, no duplicates
    assert streaming_steps_per_epoch(dataset, 48, 16) == 3
    assert streaming_steps_per_epoch(dataset, None, 16) == 1


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints, kNN, reconstruction grid
# ---------------------------------------------------------------------------------------------------------------


def test_latest_checkpoint_and_schedule(tmp_path: Path):
    assert resolve_checkpoint("latest", str(tmp_path)) is None  # nothing yet: start fresh
    for step in (3, 12, 7):
        folder = tmp_path / "checkpoints" / f"checkpoint_{step}"
        folder.mkdir(parents=True)
        (folder / "training_state.json").write_text(f'{{"global_step": {step}}}')
    (tmp_path / "checkpoints" / "checkpoint_99").mkdir()  # incomplete (no counters): ignored
    assert [Path(p).name for p in list_checkpoints(str(tmp_path))] == ["checkpoint_3", "checkpoint_7", "checkpoint_12"]
    assert resolve_checkpoint("latest", str(tmp_path)).endswith("checkpoint_12")
    with pytest.raises(OptionError, match="resume_from_checkpoint"):
        resolve_checkpoint(str(tmp_path / "checkpoints" / "checkpoint_99"), str(tmp_path))
    assert should_checkpoint(5, 10, False) and not should_checkpoint(5, 11, False)
    assert should_checkpoint("epoch", 11, True) and not should_checkpoint("epoch", 10, False)
    assert not should_checkpoint(None, 10, True)
    assert TrainingProgress().global_step == 0


def test_knn_top1():
    generator = torch.Generator().manual_seed(0)
    centers = torch.nn.functional.normalize(torch.randn(3, 16, generator=generator), dim=-1)
    labels = torch.arange(3).repeat_interleave(30)
    features = torch.nn.functional.normalize(centers[labels] + 0.05 * torch.randn(90, 16, generator=generator), dim=-1)
    assert knn_top1(features[::2], labels[::2], features[1::2], labels[1::2], k=20) == 1.0
    shuffled = labels[torch.randperm(90, generator=generator)]
    assert knn_top1(features[::2], shuffled[::2], features[1::2], shuffled[1::2], k=20) < 0.7


def test_reconstruction_grid_size_and_pixel_space():
    torch.manual_seed(0)
    model = MAEForPreTraining(MAEConfig.from_preset("mae-vit-tiny-test", norm_pix_loss=True))
    images = torch.randn(3, 3, 32, 32)
    state = torch.get_rng_state()
    grid = reconstruction_grid(model, images, seed=0)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG (training masks) is untouched
    assert tuple(grid.shape) == (3, *grid_shape(3, 32))
    assert grid.min() >= 0 and grid.max() <= 1
    assert torch.equal(grid, reconstruction_grid(model, images, seed=0))  # same mask for every grid of a run


def test_jsonl_log_continues_a_resumed_run(tmp_path: Path):
    from mae_hf.training.logging import JsonlLogger, read_jsonl

    path = str(tmp_path / "log.jsonl")
    logger = JsonlLogger(path)
    for step in (5, 10, 15):
        logger.log({"step": step, "loss": torch.tensor(1.0 / step, dtype=torch.float64)})  # tensors become numbers
    JsonlLogger(path, resume_step=10).log({"step": 15, "loss": float("nan")})  # resumed at 10: 15 is redone
    assert [(r["step"], r["loss"]) for r in read_jsonl(path)] == [(5, 0.2), (10, 0.1), (15, "nan")]
    JsonlLogger(path, enabled=False).log({"step": 99})  # other processes write nothing
    assert len(read_jsonl(path)) == 3
    JsonlLogger(path)  # a fresh run starts a fresh file
    assert read_jsonl(path) == []
