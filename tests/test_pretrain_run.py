"""End-to-end pre-training runs on CPU with the tiny model and the generated image folder: outputs, logs,
reconstruction grid, exact resume in a new process, streaming, two processes (gloo), loading the saved folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, load_pretrain_script, offline_env, tiny_pretrain_argv
from PIL import Image
from safetensors.torch import load_file

from mae_hf.training.logging import read_jsonl
from mae_hf.training.visualize import grid_shape

PYTHON = sys.executable
TINY_STEPS = 15  # 48 images / batch 16 = 3 steps per epoch, 5 epochs
# the full run's checkpoint and monitor schedule, which its resumed copy must share
FULL_RUN_MONITORS = ("--checkpointing_steps", "4", "--visualize_every", "5", "--knn_every", "5", "--knn_k", "5")


@pytest.fixture(scope="module")
def full_run(image_folder: Path, datasets_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted in-process run with every monitor on; checkpoints every 4 steps (4 is mid-epoch)."""
    output = tmp_path_factory.mktemp("full_run")
    argv = tiny_pretrain_argv(image_folder, output, datasets_cache, *FULL_RUN_MONITORS)
    results = load_pretrain_script().main(argv)
    assert results["global_step"] == TINY_STEPS
    return output


def test_output_folder_and_logs(full_run: Path):
    for name in (
        "config.json",
        "model.safetensors",
        "modeling_mae_hf.py",
        "configuration_mae_hf.py",
        "preprocessor_config.json",
        "README.md",
        "log.jsonl",
        "train_results.json",
        "reconstruction.png",
    ):
        assert (full_run / name).is_file(), name
    config = json.loads((full_run / "config.json").read_text())
    assert config["auto_map"]["AutoModelForPreTraining"] == "modeling_mae_hf.MAEForPreTraining"
    assert config["norm_pix_loss"] is True

    records = read_jsonl(str(full_run / "log.jsonl"))
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [5, 10, 15]  # logging_steps 5, each step once
    for record in train:
        assert {"epoch", "lr", "images_per_sec", "data_time", "step_time"} <= set(record)
        assert record["data_time"] <= record["step_time"]
    assert train[-1]["epoch"] == pytest.approx(5.0)
    knn = [r["knn_top1"] for r in records if "knn_top1" in r]
    assert len(knn) == 3 and all(0.0 <= value <= 1.0 for value in knn)

    results = json.loads((full_run / "train_results.json").read_text())
    assert results["global_step"] == TINY_STEPS and results["final_loss"] == pytest.approx(train[-1]["loss"])
    assert results["train_samples_per_second"] > 0 and results["effective_batch_size"] == 16

    card = (full_run / "README.md").read_text()
    assert "mae-vit-tiny-test" in card and "| 15 |" in card and "kNN" in card and "reconstruction.png" in card

    events = list((full_run / "runs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard events"
    # Checkpoints every 4 steps, all kept (no limit): 4, 8, 12; each a full accelerate state + counters.
    names = sorted(p.name for p in (full_run / "checkpoints").iterdir())
    assert names == ["checkpoint_12", "checkpoint_4", "checkpoint_8"]
    state = json.loads((full_run / "checkpoints" / "checkpoint_4" / "training_state.json").read_text())
    assert state == {"global_step": 4, "epoch": 1, "batches_into_epoch": 1}
    assert (full_run / "checkpoints" / "checkpoint_4" / "optimizer.bin").is_file()


def test_reconstruction_grid_written_with_the_right_size(full_run: Path):
    height, width = grid_shape(4, 32)  # num_visualize_images 4 in the tiny recipe, 32 px
    with Image.open(full_run / "reconstruction.png") as image:
        assert image.size == (width, height)
    history = sorted(p.name for p in (full_run / "reconstructions").iterdir())
    assert history == ["step_0000005.png", "step_0000010.png", "step_0000015.png"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(next((full_run / "runs").rglob("events.out.tfevents.*")).parent))
    accumulator.Reload()
    assert "reconstruction" in accumulator.Tags()["images"]
    assert "train/loss" in accumulator.Tags()["scalars"] and "knn/top1" in accumulator.Tags()["scalars"]


def test_resume_in_new_process_reproduces_uninterrupted_weights(
    full_run: Path, image_folder: Path, datasets_cache: Path, tmp_path: Path
):
    # Resume from the mid-epoch checkpoint at step 4 (epoch 1, 1 batch in) with 'latest' in a fresh process.
    output = tmp_path / "resumed"
    (output / "checkpoints").mkdir(parents=True)
    shutil.copytree(full_run / "checkpoints" / "checkpoint_4", output / "checkpoints" / "checkpoint_4")
    argv = tiny_pretrain_argv(
        image_folder,
        output,
        datasets_cache,
        *FULL_RUN_MONITORS,
        "--resume_from_checkpoint",
        "latest",
    )
    completed = subprocess.run(
        [PYTHON, str(REPO_ROOT / "scripts" / "pretrain.py"), *argv],
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Resumed from" in completed.stdout + completed.stderr
    expected, resumed = load_file(full_run / "model.safetensors"), load_file(output / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    # Saving again after resuming works (no "checkpoint already exists") and the log continues the run.
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == [
        "checkpoint_12",
        "checkpoint_4",
        "checkpoint_8",
    ]
    steps = [r["step"] for r in read_jsonl(str(output / "log.jsonl")) if "loss" in r]
    assert steps == [5, 10, 15]


def test_streaming_dataset_trains(image_folder: Path, datasets_cache: Path, tmp_path: Path):
    output = tmp_path / "streaming"
    argv = tiny_pretrain_argv(
        image_folder,
        output,
        datasets_cache,
        "--streaming",
        "--max_train_steps",
        "5",
        "--num_examples_per_epoch",
        "48",
        "--shuffle_buffer_size",
        "16",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
    )
    results = load_pretrain_script().main(argv)
    assert results["global_step"] == 5
    records = [r for r in read_jsonl(str(output / "log.jsonl")) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[-1]["epoch"] == pytest.approx(5 / 3)  # 48 images / batch 16 = 3 steps per epoch
    assert records[1]["lr"] == pytest.approx(1e-3 / 3)  # warm-up of 1 epoch = 3 steps
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert (output / "model.safetensors").is_file()


def test_two_processes_gloo(image_folder: Path, datasets_cache: Path, tmp_path: Path):
    """2 processes × batch 4 × accumulation 2 = effective 16: 48 images give 3 optimizer steps per epoch; one
    checkpoint (with both processes' RNG), one log line per step, lr = blr × 16 / 256."""
    output = tmp_path / "ddp"
    argv = [
        "--model_preset", "mae-vit-tiny-test", "--norm_pix_loss",
        "--train_dir", str(image_folder / "train"), "--validation_dir", str(image_folder / "validation"),
        "--output_dir", str(output), "--cache_dir", str(datasets_cache),
        "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
        "--blr", "1.5e-4", "--warmup_epochs", "1", "--num_train_epochs", "2",
        "--checkpointing_steps", "epoch", "--checkpoints_total_limit", "1",
        "--logging_steps", "1", "--disable_tqdm", "--num_visualize_images", "2",
    ]  # fmt: skip
    completed = subprocess.run(
        [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(REPO_ROOT / "scripts" / "pretrain.py")]
        + argv,
        env=offline_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.count("MAE pre-training:") == 1  # printed by the main process only
    results = json.loads((output / "train_results.json").read_text())
    assert results["num_processes"] == 2 and results["effective_batch_size"] == 16
    assert results["global_step"] == 6  # 2 epochs × 3 steps
    assert results["learning_rate"] == pytest.approx(1.5e-4 * 16 / 256)
    steps = [r["step"] for r in read_jsonl(str(output / "log.jsonl")) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # logged once
    checkpoints = list((output / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["checkpoint_6"]  # one checkpoint (limit 1), written once
    assert sorted(p.name for p in checkpoints[0].glob("random_states_*.pkl")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]


def test_output_loads_in_fresh_process_with_auto_class_and_remote_code(full_run: Path):
    script = f"""
import torch, transformers
from transformers import AutoModelForPreTraining
remote = AutoModelForPreTraining.from_pretrained({str(full_run)!r}, trust_remote_code=True)
assert "mae_hf" not in type(remote).__module__.split(".")[0], type(remote).__module__
import mae_hf
local = AutoModelForPreTraining.from_pretrained({str(full_run)!r})
assert type(local) is mae_hf.MAEForPreTraining
for (name, a), b in zip(local.state_dict().items(), remote.state_dict().values()):
    assert torch.equal(a, b), name
out = local(pixel_values=torch.randn(2, 3, 32, 32))
assert out.logits.shape == (2, 16, 8 * 8 * 3) and torch.isfinite(out.loss)
print("ok", type(remote).__module__)
"""
    completed = subprocess.run(
        [PYTHON, "-c", script], env=offline_env(), capture_output=True, text=True, timeout=300, cwd=str(full_run.parent)
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.startswith("ok transformers_modules")


def test_visualize_script_makes_the_same_grid(full_run: Path, image_folder: Path, tmp_path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("mae_visualize_script", REPO_ROOT / "scripts" / "visualize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    images = sorted((image_folder / "validation" / "class0").iterdir())[:3]  # RGB, gray, palette+transparency
    output = tmp_path / "grid.png"
    module.main([str(full_run), *map(str, images), "--output", str(output)])
    height, width = grid_shape(3, 32)
    with Image.open(output) as grid:
        assert grid.size == (width, height)


def test_bad_option_gives_one_clear_line(tmp_path: Path):
    completed = subprocess.run(
        [PYTHON, str(REPO_ROOT / "scripts" / "pretrain.py"), "--output_dir", str(tmp_path), "--streaming",
         "--train_dir", str(tmp_path)],
        env=offline_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 2
    assert "--max_train_steps" in completed.stderr and "Traceback" not in completed.stderr


def test_make_digits_dataset(tmp_path: Path):
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        from make_digits_dataset import write_digits
    finally:
        sys.path.pop(0)
    counts = write_digits(str(tmp_path), size=16)
    assert counts == {"train": 1497, "validation": 300}
    train = list((tmp_path / "train").rglob("*.png"))
    assert len(train) == 1497 and sorted(p.name for p in (tmp_path / "train").iterdir()) == list("0123456789")
    with Image.open(train[0]) as image:
        assert image.size == (16, 16) and image.mode == "RGB"
    again = tmp_path / "again"
    write_digits(str(again), size=16)
    assert sorted(p.name for p in (again / "validation").rglob("*.png")) == sorted(
        p.name for p in (tmp_path / "validation").rglob("*.png")
    )  # deterministic split


def test_bf16_without_validation_split(image_folder: Path, datasets_cache: Path, tmp_path: Path):
    """bf16 autocast on CPU; no validation split: the grid uses training images, kNN uses the --knn_* folders."""
    output = tmp_path / "bf16"
    argv = [
        "--config", str(REPO_ROOT / "configs" / "pretrain_tiny_cpu.yaml"),
        "--train_dir", str(image_folder / "train"), "--output_dir", str(output), "--cache_dir", str(datasets_cache),
        "--mixed_precision", "bf16", "--max_train_steps", "3", "--knn_every", "3", "--knn_k", "5",
        "--knn_train_dir", str(image_folder / "train"), "--knn_validation_dir", str(image_folder / "validation"),
        "--report_to", "none", "--disable_tqdm",
    ]  # fmt: skip
    results = load_pretrain_script().main(argv)
    assert results["global_step"] == 3 and 0.0 <= results["knn_top1"] <= 1.0
    assert "| mixed precision | bf16 |" in (output / "README.md").read_text()
    with Image.open(output / "reconstruction.png") as image:
        assert image.size == grid_shape(4, 32)[::-1]
