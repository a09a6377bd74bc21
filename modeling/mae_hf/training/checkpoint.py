"""Resumable training state with Accelerate: ``save_state``/``load_state`` (model, optimizer, scaler, RNG of every
process) plus a small ``training_state.json`` with the counters (global step, epoch, batches into the epoch).

Checkpoints are atomic: the state is written to ``checkpoint_<step>.tmp`` and renamed to ``checkpoint_<step>`` only
once complete, so a run killed at any point (SIGKILL, power loss of the process) never leaves a half-written folder
that ``latest`` would pick. Old checkpoints are rotated out only after the new one is in place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from dataclasses import asdict, dataclass

from accelerate import Accelerator

from .args import OptionError

CHECKPOINT_PREFIX = "checkpoint_"
STATE_FILE = "training_state.json"
STAGING_SUFFIX = ".tmp"  # a save in progress (or interrupted): never resumed from
REPLACED_SUFFIX = ".old"  # a checkpoint of the same step being replaced by a new save
TEST_KILL_ENV = "MAE_HF_TEST_KILL_AT"


def kill_point(name: str) -> None:
    """Fault-injection hook for the reliability tests: SIGKILL this process when ``$MAE_HF_TEST_KILL_AT`` equals
    ``name`` (e.g. ``checkpoint_write:4``, ``batch:7``). Does nothing unless that variable is set."""
    if os.environ.get(TEST_KILL_ENV) == name:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


@dataclass
class TrainingProgress:
    """Where training stands. ``batches_into_epoch`` = data batches of ``epoch`` already consumed (data position)."""

    global_step: int = 0
    epoch: int = 0
    batches_into_epoch: int = 0


def checkpoints_dir(output_dir: str) -> str:
    """``output_dir/checkpoints``."""
    return os.path.join(output_dir, "checkpoints")


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest first: ``checkpoint_<step>`` folders (renamed
    into place only when complete) holding the counters file; staging folders of interrupted saves are ignored."""
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
    name = os.path.basename(os.path.normpath(resume_from_checkpoint))
    if name.endswith((STAGING_SUFFIX, REPLACED_SUFFIX)):
        raise OptionError(
            f"--resume_from_checkpoint: {resume_from_checkpoint} is an interrupted or replaced save, not a complete "
            "checkpoint; pass a checkpoint_<step> folder or 'latest'."
        )
    if not os.path.isfile(os.path.join(resume_from_checkpoint, STATE_FILE)):
        raise OptionError(
            f"--resume_from_checkpoint: {resume_from_checkpoint} has no {STATE_FILE}; pass a folder written by "
            "--checkpointing_steps, or 'latest'."
        )
    return resume_from_checkpoint


def save_checkpoint(
    accelerator: Accelerator, output_dir: str, progress: TrainingProgress, total_limit: int | None = None
) -> str:
    """Save the full state to ``output_dir/checkpoints/checkpoint_{step}`` atomically and keep the newest
    ``total_limit`` complete checkpoints. Every process must call it (each writes its own RNG state)."""
    root = checkpoints_dir(output_dir)
    final = os.path.join(root, f"{CHECKPOINT_PREFIX}{progress.global_step}")
    staging = final + STAGING_SUFFIX
    if accelerator.is_main_process and os.path.isdir(staging):
        shutil.rmtree(staging)  # an interrupted save of this same step: start clean (no stale per-rank files)
    accelerator.wait_for_everyone()
    accelerator.save_state(staging)
    kill_point(f"checkpoint_write:{progress.global_step}")
    if accelerator.is_main_process:
        with open(os.path.join(staging, STATE_FILE), "w", encoding="utf-8") as handle:
            json.dump(asdict(progress), handle)
            handle.flush()
            os.fsync(handle.fileno())
    accelerator.wait_for_everyone()  # every rank's files are in the staging folder before it is published
    if accelerator.is_main_process:
        _publish(staging, final)
        _rotate(root, output_dir, keep=final, total_limit=total_limit)
    accelerator.wait_for_everyone()
    return final


def _publish(staging: str, final: str) -> None:
    """Rename the complete staging folder into place (a rename is atomic on one filesystem)."""
    if os.path.isdir(final):  # the same step saved again (e.g. after resuming from it): move the old one aside
        replaced = final + REPLACED_SUFFIX
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(final, replaced)
    os.replace(staging, final)
    _fsync_dir(os.path.dirname(final))


def _fsync_dir(path: str) -> None:
    """Make a rename durable on POSIX filesystems (no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _rotate(root: str, output_dir: str, keep: str, total_limit: int | None) -> None:
    """Remove leftovers of interrupted saves, then complete checkpoints beyond the newest ``total_limit``; the
    checkpoint just written (``keep``) is never removed, so a limit can never delete the only good checkpoint."""
    for name in os.listdir(root):
        if re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+({re.escape(STAGING_SUFFIX)}|{re.escape(REPLACED_SUFFIX)})", name):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    if not total_limit:
        return
    complete = list_checkpoints(output_dir)
    survivors = set(complete[-total_limit:]) | {keep}
    for path in complete:
        if path not in survivors:
            shutil.rmtree(path, ignore_errors=True)


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
    "STAGING_SUFFIX",
    "TEST_KILL_ENV",
    "TrainingProgress",
    "checkpoints_dir",
    "kill_point",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
    "should_checkpoint",
]
