"""Kill-and-resume: a pre-training run killed with SIGKILL (mid-epoch, in the middle of a gradient-accumulation
cycle, while a checkpoint is being written) resumes from its last complete checkpoint with
``--resume_from_checkpoint latest`` and ends with weights bit-identical to an uninterrupted run. Also the atomic
checkpoint rules (staging folders ignored, rotation never deletes the newest complete checkpoint)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, offline_env, tiny_pretrain_argv
from safetensors.torch import load_file

from mae_hf.training.checkpoint import (
    STAGING_SUFFIX,
    TEST_KILL_ENV,
    TrainingProgress,
    _rotate,
    list_checkpoints,
    resolve_checkpoint,
)

# 48 images, batch 8, accumulation 2: 6 batches = 3 optimizer steps per epoch; 6 steps = 2 epochs. Checkpoints
# every 2 steps (step 2 is mid-epoch 0, step 4 mid-epoch 1), only the newest kept.
RUN_OPTIONS = (
    "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2", "--max_train_steps", "6",
    "--checkpointing_steps", "2", "--checkpoints_total_limit", "1", "--logging_steps", "1",
    "--report_to", "none", "--dataloader_num_workers", "0", "--seed", "3",
)  # fmt: skip


def run_pretrain(image_folder: Path, output: Path, cache: Path, kill_at: str | None = None, *extra: str):
    """scripts/pretrain.py in a fresh single-threaded process (bit-exact runs need the same thread count)."""
    env = offline_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop(TEST_KILL_ENV, None)
    if kill_at:
        env[TEST_KILL_ENV] = kill_at
    argv = tiny_pretrain_argv(image_folder, output, cache, *RUN_OPTIONS, *extra)
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "pretrain.py"), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def reference_weights(image_folder: Path, datasets_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    output = tmp_path_factory.mktemp("uninterrupted")
    completed = run_pretrain(image_folder, output, datasets_cache)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads((output / "train_results.json").read_text())["global_step"] == 6
    return load_file(output / "model.safetensors")


def _steps_logged(output: Path) -> list[int]:
    lines = (output / "log.jsonl").read_text().splitlines() if (output / "log.jsonl").exists() else []
    return [record["step"] for record in map(json.loads, lines) if "loss" in record]


@pytest.mark.parametrize(
    ("kill_at", "latest_step", "expected_progress"),
    [
        # Killed before the 11th batch: 5 steps done, in the middle of epoch 1; resumes from step 4.
        ("batch:11", 4, {"global_step": 4, "epoch": 1, "batches_into_epoch": 2}),
        # Killed before the 10th batch: 4 steps and one micro-batch of the 5th step's accumulation cycle done.
        ("batch:10", 4, {"global_step": 4, "epoch": 1, "batches_into_epoch": 2}),
        # Killed while checkpoint_4 is being written: checkpoint_2 (mid-epoch 0) stays the newest, still loadable,
        # and was not rotated out by --checkpoints_total_limit 1.
        ("checkpoint_write:4", 2, {"global_step": 2, "epoch": 0, "batches_into_epoch": 4}),
    ],
    ids=["mid_epoch", "during_accumulation", "during_checkpoint_write"],
)
def test_sigkill_then_resume_is_bit_identical(
    kill_at: str,
    latest_step: int,
    expected_progress: dict,
    reference_weights: dict[str, torch.Tensor],
    image_folder: Path,
    datasets_cache: Path,
    tmp_path: Path,
):
    output = tmp_path / "run"
    killed = run_pretrain(image_folder, output, datasets_cache, kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (output / "model.safetensors").exists()  # really killed before the end

    latest = resolve_checkpoint("latest", str(output))
    assert latest is not None and Path(latest).name == f"checkpoint_{latest_step}"
    assert json.loads((Path(latest) / "training_state.json").read_text()) == expected_progress
    leftovers = sorted(p.name for p in (output / "checkpoints").iterdir())
    if kill_at.startswith("checkpoint_write"):
        assert leftovers == ["checkpoint_2", f"checkpoint_4{STAGING_SUFFIX}"]  # half-written save, not published
    else:
        assert leftovers == ["checkpoint_4"]

    resumed = run_pretrain(image_folder, output, datasets_cache, None, "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {latest}" in resumed.stdout + resumed.stderr
    weights = load_file(output / "model.safetensors")
    assert weights.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        assert torch.equal(tensor, weights[name]), name
    # The interrupted save was cleaned by the next save; the limit kept only the newest complete checkpoint.
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["checkpoint_6"]
    assert _steps_logged(output)[-1] == 6


def _fake_checkpoint(root: Path, name: str, complete: bool = True) -> Path:
    folder = root / "checkpoints" / name
    folder.mkdir(parents=True)
    if complete:
        (folder / "training_state.json").write_text(json.dumps(TrainingProgress().__dict__))
    return folder


def test_latest_ignores_staging_and_incomplete_folders(tmp_path: Path):
    _fake_checkpoint(tmp_path, "checkpoint_3")
    _fake_checkpoint(tmp_path, "checkpoint_9" + STAGING_SUFFIX)  # complete files, but never renamed into place
    _fake_checkpoint(tmp_path, "checkpoint_12", complete=False)  # a pre-atomic interrupted save
    assert resolve_checkpoint("latest", str(tmp_path)) == str(tmp_path / "checkpoints" / "checkpoint_3")
    from mae_hf.training.args import OptionError

    with pytest.raises(OptionError, match="--resume_from_checkpoint"):
        resolve_checkpoint(str(tmp_path / "checkpoints" / ("checkpoint_9" + STAGING_SUFFIX)), str(tmp_path))


def test_rotation_never_deletes_the_checkpoint_just_written(tmp_path: Path):
    for step in (2, 4, 8):
        _fake_checkpoint(tmp_path, f"checkpoint_{step}")
    _fake_checkpoint(tmp_path, "checkpoint_5" + STAGING_SUFFIX)
    # checkpoint_4 was just written (e.g. a run restarted in a folder holding a later, foreign checkpoint_8).
    just_written = str(tmp_path / "checkpoints" / "checkpoint_4")
    _rotate(str(tmp_path / "checkpoints"), str(tmp_path), keep=just_written, total_limit=1)
    assert [Path(p).name for p in list_checkpoints(str(tmp_path))] == ["checkpoint_4", "checkpoint_8"]
    assert not (tmp_path / "checkpoints" / ("checkpoint_5" + STAGING_SUFFIX)).exists()
