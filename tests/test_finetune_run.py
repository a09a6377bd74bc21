"""Fine-tuning, linear probing, evaluation and inference end to end on CPU with the tiny model and the generated
3-class image folder: a different input size, pipeline labels from the dataset, a frozen encoder under linear
probing, evaluation by hand and over two processes (each image counted once), kNN, feature extraction."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_script, offline_env
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from mae_hf import MAEForImageClassification
from mae_hf.training.data import build_eval_transform, to_rgb
from mae_hf.training.logging import read_jsonl

PYTHON = sys.executable
CLASSES = ["class0", "class1", "class2"]


def _data_argv(image_folder: Path, cache: Path, output: Path) -> list[str]:
    return [
        "--train_dir", str(image_folder / "train"), "--validation_dir", str(image_folder / "validation"),
        "--cache_dir", str(cache), "--output_dir", str(output), "--disable_tqdm", "--report_to", "none",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "5", "--logging_steps", "1",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finetuned(tiny_mae_folder: Path, image_folder: Path, datasets_cache: Path, tmp_path_factory) -> Path:
    """The reference fine-tuning recipe for 2 epochs (12 steps) at 48 px from a 32 px pre-training folder."""
    output = tmp_path_factory.mktemp("finetuned")
    argv = _data_argv(image_folder, datasets_cache, output) + [
        "--model_name_or_path", str(tiny_mae_folder), "--input_size", "48",
        "--num_train_epochs", "2", "--warmup_epochs", "1", "--blr", "1e-3", "--checkpointing_steps", "epoch",
    ]  # fmt: skip
    results = load_script("finetune").main(argv)
    assert results["global_step"] == 12 and results["input_size"] == 48
    return output


def test_finetune_at_another_input_size_outputs(finetuned: Path, tiny_mae_folder: Path):
    config = json.loads((finetuned / "config.json").read_text())
    assert config["image_size"] == 48 and config["global_pool"] and not config["linear_probe"]
    assert config["id2label"] == {str(i): name for i, name in enumerate(CLASSES)}
    weights = load_file(finetuned / "model.safetensors")
    assert weights["mae.pos_embed"].shape == (1, 1 + 6 * 6, 32)  # 48 / 8 = 6 × 6 patches + cls
    assert not any(key.startswith("decoder.") for key in weights)
    processor = json.loads((finetuned / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 48, "width": 48}
    evaluations = [r for r in read_jsonl(str(finetuned / "log.jsonl")) if "eval_top1" in r]
    assert [r["step"] for r in evaluations] == [6, 12]  # every epoch
    assert all(r["eval_num_samples"] == 12 for r in evaluations)
    assert (finetuned / "best_model" / "model.safetensors").is_file()
    assert (finetuned / "checkpoints" / "checkpoint_12").is_dir()
    card = ModelCard.load(str(finetuned / "README.md"))
    assert card.data.pipeline_tag == "image-classification"
    assert {r.metric_name for r in card.data.eval_results} == {"top-1", "top-5"}


def test_pipeline_and_auto_classes_return_dataset_labels(finetuned: Path, image_folder: Path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    image = image_folder / "validation" / "class1" / "000.png"
    classifier = pipeline("image-classification", model=str(finetuned), trust_remote_code=True)
    predictions = classifier(str(image), top_k=2)
    assert len(predictions) == 2 and {p["label"] for p in predictions} <= set(CLASSES)
    assert len(classifier(str(image), top_k=3)) == 3
    processor = AutoImageProcessor.from_pretrained(str(finetuned))
    model = AutoModelForImageClassification.from_pretrained(str(finetuned), trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(**processor(Image.open(image).convert("RGB"), return_tensors="pt")).logits
    assert logits.shape == (1, 3)
    assert model.config.id2label[int(logits.argmax())] == predictions[0]["label"]


def test_evaluate_script_matches_a_hand_computation(finetuned: Path, image_folder: Path, tmp_path: Path):
    output = tmp_path / "eval.json"
    validation = image_folder / "validation"
    results = load_script("evaluate").main(
        ["--model_name_or_path", str(finetuned), "--data_dir", str(validation), "--batch_size", "5",
         "--output_file", str(output)]
    )  # fmt: skip
    assert json.loads(output.read_text()) == results
    # By hand: every image through the eval transform and the model, top-k by sorting the logits with numpy.
    model = MAEForImageClassification.from_pretrained(str(finetuned)).eval()
    transform = build_eval_transform(48)
    hits1 = hits2 = 0
    losses = []
    files = sorted(p for p in validation.rglob("*") if p.is_file())
    for path in files:
        label = CLASSES.index(path.parent.name)
        with torch.no_grad():
            logits = model(pixel_values=transform(to_rgb(Image.open(path)))[None]).logits[0].double().numpy()
        order = np.argsort(-logits)
        hits1 += int(order[0] == label)
        hits2 += int(label in order[:2])
        losses.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[label])
    assert results["num_samples"] == len(files) == 12
    assert results["top1"] == pytest.approx(hits1 / 12)
    assert results["top5"] == 1.0  # 3 classes: the top-5 holds every class
    assert results["loss"] == pytest.approx(float(np.mean(losses)), rel=1e-4)
    assert hits2 >= hits1


def test_evaluate_over_two_processes_counts_each_image_once(finetuned: Path, image_folder: Path, tmp_path: Path):
    single = tmp_path / "single.json"
    double = tmp_path / "double.json"
    common = ["--model_name_or_path", str(finetuned), "--data_dir", str(image_folder / "validation")]
    load_script("evaluate").main(common + ["--batch_size", "5", "--output_file", str(single)])
    # 12 images over 2 processes in batches of 5: shards of 6 → batches 5 + 1 each; the padding is dropped.
    completed = subprocess.run(
        [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(REPO_ROOT / "scripts" / "evaluate.py")]
        + common
        + ["--batch_size", "5", "--output_file", str(double)],
        env=offline_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert two["num_processes"] == 2 and two["num_samples"] == one["num_samples"] == 12
    assert two["top1"] == pytest.approx(one["top1"]) and two["loss"] == pytest.approx(one["loss"], rel=1e-4)


def test_linear_probe_changes_only_the_head(tiny_mae_folder: Path, image_folder: Path, datasets_cache: Path, tmp_path):
    linprobe = load_script("linprobe")
    output = tmp_path / "linprobe"
    argv = _data_argv(image_folder, datasets_cache, output) + [
        "--model_name_or_path", str(tiny_mae_folder), "--num_train_epochs", "2", "--warmup_epochs", "1",
    ]  # fmt: skip
    results = linprobe.main(argv)
    assert results["global_step"] == 12 and results["eval"]["num_samples"] == 12
    config = json.loads((output / "config.json").read_text())
    assert config["linear_probe"] and not config["global_pool"]  # cls token by default
    source = load_file(tiny_mae_folder / "model.safetensors")
    probed = load_file(output / "model.safetensors")
    encoder = [key for key in probed if key.startswith("mae.")]
    assert "mae.norm.weight" in encoder and "mae.blocks.0.attn.qkv.weight" in encoder
    for key in encoder:
        if key != "mae.pos_embed":  # the fixed sin-cos table of pre-training is the initial learned table here
            assert torch.equal(probed[key], source[key]), key
    assert torch.equal(probed["mae.pos_embed"], source["mae.pos_embed"])
    batch_norm_statistics = {"head.0.running_mean", "head.0.running_var", "head.0.num_batches_tracked"}
    assert set(probed) - set(encoder) == {"head.1.weight", "head.1.bias"} | batch_norm_statistics
    # The optimiser holds the head's parameters only, and a step changes nothing else.
    from mae_hf.training.classification import build_classifier, build_linprobe_parser

    args = build_linprobe_parser().parse_args(argv)
    model = build_classifier(str(tiny_mae_folder), CLASSES, config_overrides=linprobe.config_overrides(args))
    assert model.head[1].weight.std().item() == pytest.approx(0.01, rel=0.2)  # reference init, not 2e-5
    linprobe.freeze_encoder(model, args)
    optimizer = linprobe.build_optimizer(model, args, 0.1)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(model.head[1].weight), id(model.head[1].bias)}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model(pixel_values=torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"head.1.weight", "head.1.bias"}


def test_knn_evaluation_and_feature_extraction_of_an_encoder(tiny_mae_folder: Path, image_folder: Path, tmp_path):
    output = tmp_path / "knn.json"
    results = load_script("evaluate").main(
        ["--knn", "--model_name_or_path", str(tiny_mae_folder), "--knn_train_dir", str(image_folder / "train"),
         "--data_dir", str(image_folder / "validation"), "--knn_k", "5", "--output_file", str(output)]
    )  # fmt: skip
    assert 0.0 <= results["knn_top1"] <= 1.0 and results["num_samples"] == 12
    from transformers import pipeline

    extractor = pipeline("image-feature-extraction", model=str(tiny_mae_folder), trust_remote_code=True)
    features = extractor(str(image_folder / "validation" / "class0" / "000.png"), return_tensors=True)
    assert features.shape[-1] == 32


def test_finetune_resume_reproduces_the_uninterrupted_run(
    finetuned: Path, tiny_mae_folder: Path, image_folder: Path, datasets_cache: Path, tmp_path: Path
):
    """The shared loop's resume (model, optimizer, RNG of augmentations and mixup, data position) is exact."""
    output = tmp_path / "resumed"
    argv = _data_argv(image_folder, datasets_cache, output) + [
        "--model_name_or_path", str(tiny_mae_folder), "--input_size", "48",
        "--num_train_epochs", "2", "--warmup_epochs", "1", "--blr", "1e-3",
        "--resume_from_checkpoint", str(finetuned / "checkpoints" / "checkpoint_6"),
    ]  # fmt: skip
    results = load_script("finetune").main(argv)
    assert results["global_step"] == 12
    resumed, uninterrupted = load_file(output / "model.safetensors"), load_file(finetuned / "model.safetensors")
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in uninterrupted)


def test_push_to_hub_options_are_checked_before_training(tmp_path: Path, capsys):
    for script in ("finetune", "linprobe", "pretrain"):
        with pytest.raises(SystemExit):
            load_script(script).main(
                ["--output_dir", str(tmp_path), "--train_dir", str(tmp_path), "--model_preset", "mae-vit-tiny-test",
                 "--push_to_hub"]
            )  # fmt: skip
        assert "--hub_model_id" in capsys.readouterr().err
        assert not (tmp_path / "log.jsonl").exists()


def test_help_documents_every_option():
    from mae_hf.training.classification import build_finetune_parser, build_linprobe_parser

    for parser in (build_finetune_parser(), build_linprobe_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, action.dest
                assert all(option in text for option in action.option_strings), action.dest
