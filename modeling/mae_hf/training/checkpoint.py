"""Resumable training state with Accelerate: ``save_state``/``load_state`` (model, optimizer, scaler, RNG of every
process) plus a small ``training_state.json`` with the counters (global step, epoch, batches into the epoch)."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass

from accelerate import Accelerator

from .args import OptionError

CHECKPOINT_PREFIX = "checkpoint_"
STATE_FILE = "training_state.json"


@dataclass
class TrainingProgress:
    """Where training stands. ``batches_into_epoch`` = data batches of ``epoch`` already consumed (data position)."""

    global_step: int = 0
    epoch: int = 0
    batches_into_epoch: int = 0


def checkpoints_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoints (with their counters file) under ``output_dir/checkpoints``, oldest first."""
    root = checkpoints_dir(output_dir)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", name)
        path = os.path.join(root, name)
        if match and os.path.isfile(os.path.join(path, STATE_FILE)):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """A checkpoint folder to resume from: ``latest`` (None when there is none yet, so a job can be re-queued with
    the same command) or an explicit folder."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    if not os.path.isfile(os.path.join(resume_from_checkpoint, STATE_FILE)):
        raise OptionError(
            f"--resume_from_checkpoint: {resume_from_checkpoint} has no {STATE_FILE}; pass a folder written by "
            "--checkpointing_steps, or 'latest'."
        )
    return resume_from_checkpoint


def save_checkpoint(
    accelerator: Accelerator, output_dir: str, progress: TrainingProgress, total_limit: int | None = None
) -> str:
    """Save the full state to ``output_dir/checkpoints/checkpoint_{step}``; keep the newest ``total_limit``.
    Every process must call it (each writes its own RNG state)."""
    path = os.path.join(checkpoints_dir(output_dir), f"{CHECKPOINT_PREFIX}{progress.global_step}")
    accelerator.save_state(path)
    if accelerator.is_main_process:
        # Written last: a checkpoint without it (interrupted save) is ignored by ``latest``.
        with open(os.path.join(path, STATE_FILE), "w", encoding="utf-8") as handle:
            json.dump(asdict(progress), handle)
        if total_limit:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def load_checkpoint(accelerator: Accelerator, path: str) -> TrainingProgress:
    """Restore model, optimizer, scaler and RNG states from ``path`` and return the saved counters."""
    accelerator.load_state(path)
    with open(os.path.join(path, STATE_FILE), encoding="utf-8") as handle:
        return TrainingProgress(**json.load(handle))


def should_checkpoint(checkpointing_steps: int | str | None, global_step: int, end_of_epoch: bool) -> bool:
    """``checkpointing_steps`` is N (every N optimizer steps) or 'epoch' (at each epoch end)."""
    if checkpointing_steps is None:
        return False
    if checkpointing_steps == "epoch":
        return end_of_epoch
    return global_step % int(checkpointing_steps) == 0


__all__ = [
    "TrainingProgress",
    "checkpoints_dir",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
    "should_checkpoint",
]
