"""The training loop shared by pre-training, fine-tuning and linear probing.

One optimizer step = ``gradient_accumulation_steps`` batches under ``accelerator.accumulate``: the lr comes from the
global step (per-group ``lr_scale`` applied), then forward (the script's ``compute_loss``), backward, optional
clipping, optimizer step. Around it: epoch/step counters (the data position, for bit-exact resume), a tqdm bar,
``log.jsonl`` + tracker logging, checkpoints, and two safety nets:

* a non-finite loss skips its optimizer step (no update, gradients zeroed) and is counted; after
  ``max_nonfinite_steps`` consecutive skipped steps the run stops with ``NonFiniteLossError`` and no checkpoint of the
  bad state is written, so the last good checkpoint stays intact;
* SIGTERM / SIGINT finish the current step, save a checkpoint and raise ``TrainingInterrupted``.

Every decision that must be the same on all processes (skip a step, stop on a signal) is agreed with one
all-reduce per batch, so a NaN on one rank or a signal delivered to one rank cannot make the processes diverge.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed

from .args import OptionError
from .checkpoint import (
    TrainingProgress,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    should_checkpoint,
)
from .logging import JsonlLogger, StepTimer, postfix, progress_bar
from .optim import lr_at_step, set_learning_rate


class NonFiniteLossError(RuntimeError):
    """Too many consecutive optimizer steps with a non-finite loss."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM / SIGINT arrived; a checkpoint of the state after the last finished step was saved."""

    def __init__(self, message: str, checkpoint: str) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class LoopSettings:
    """What the loop needs from the options, independent of the task."""

    output_dir: str
    total_steps: int
    schedule_steps_per_epoch: int  # optimizer steps in one epoch of the lr schedule
    steps_in_epoch: int | None  # optimizer steps per data epoch; None for a stream (epochs end when it runs out)
    base_lr: float
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    gradient_accumulation_steps: int = 1
    clip_grad: float | None = None
    logging_steps: int = 10
    checkpointing_steps: int | str | None = None
    checkpoints_total_limit: int | None = None
    max_nonfinite_steps: int = 5
    disable_tqdm: bool = False
    desc: str = "train"

    @classmethod
    def from_args(cls, args: argparse.Namespace, **values: Any) -> LoopSettings:
        """The options every training script shares, plus ``values`` (step counts, base lr, ...) it computed."""
        shared = dict(
            output_dir=args.output_dir,
            min_lr=args.min_lr,
            warmup_epochs=args.warmup_epochs,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            clip_grad=args.clip_grad,
            logging_steps=args.logging_steps,
            checkpointing_steps=args.checkpointing_steps,
            checkpoints_total_limit=args.checkpoints_total_limit,
            max_nonfinite_steps=args.max_nonfinite_steps,
            disable_tqdm=args.disable_tqdm,
        )
        return cls(**{**shared, **values})


@dataclass
class LoopResult:
    last_loss: float = float("nan")
    last_lr: float = 0.0
    steps_this_run: int = 0
    nonfinite_steps: int = 0
    train_runtime_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def add_loop_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of the shared loop (every training script)."""
    group = parser.add_argument_group("training loop")
    group.add_argument(
        "--max_nonfinite_steps",
        type=int,
        default=5,
        help="Stop after this many consecutive optimizer steps with a non-finite loss (each one is skipped).",
    )
    group.add_argument(
        "--torch_compile",
        action="store_true",
        help="Fast path: torch.compile the model after accelerator.prepare (masking and gathers compile without "
        "graph breaks); the first steps are slower while it compiles.",
    )
    group.add_argument(
        "--no_fused_adamw",
        dest="fused_adamw",
        action="store_false",
        help="Use the per-parameter AdamW loop instead of the fused kernel (the default).",
    )
    group.add_argument(
        "--allow_tf32",
        action="store_true",
        help="On NVIDIA GPUs, let fp32 matrix products use TF32 (faster, ~1e-3 relative precision).",
    )
    return parser


def check_loop_arguments(args: argparse.Namespace) -> None:
    if args.max_nonfinite_steps <= 0:
        raise ValueError(f"--max_nonfinite_steps must be a positive integer, got {args.max_nonfinite_steps}.")


def parse_training_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    validate: Callable[[argparse.Namespace], None],
) -> argparse.Namespace:
    """Add the loop and Hub options, parse (defaults < recipe < command line) and check every option with
    ``validate`` before any data or model is loaded; a bad one ends with a single ``error:`` line."""
    from ..hub import add_hub_arguments, check_hub_arguments
    from .args import parse_args_with_recipe

    add_loop_arguments(parser)
    add_hub_arguments(parser)
    args = parse_args_with_recipe(parser, argv)
    try:
        validate(args)
        check_loop_arguments(args)
        check_hub_arguments(args)  # before training, not after
    except (OptionError, ValueError) as error:
        parser.error(str(error))
    return args


def build_accelerator(args: argparse.Namespace) -> Accelerator:
    """The run's ``Accelerator`` (processes, mixed precision, gradient accumulation, trackers under
    ``OUTPUT_DIR/runs``), with the reference's seeding (seed + rank) and the output folder created."""
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "runs")
        ),
    )
    set_seed(args.seed + accelerator.process_index)
    os.makedirs(args.output_dir, exist_ok=True)
    return accelerator


def start_run(
    accelerator: Accelerator, args: argparse.Namespace, **tracker_values: Any
) -> tuple[TrainingProgress, str | None, JsonlLogger]:
    """Resume (``--resume_from_checkpoint``: model, optimizer, scaler, RNG and counters), start the trackers with
    the options plus ``tracker_values``, and open ``log.jsonl`` (cut back to the resumed step)."""
    progress = TrainingProgress()
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
    if checkpoint:
        progress = load_checkpoint(accelerator, checkpoint)
        accelerator.print(f"Resumed from {checkpoint} at step {progress.global_step} (epoch {progress.epoch}).")
    # TensorBoard's hparams take scalars only
    config = {key: v if isinstance(v, int | float | str | bool) else str(v) for key, v in vars(args).items()}
    accelerator.init_trackers(args.project_name, config={**config, **tracker_values})
    log_path = os.path.join(args.output_dir, "log.jsonl")
    jsonl = JsonlLogger(log_path, accelerator.is_main_process, progress.global_step if checkpoint else None)
    return progress, checkpoint, jsonl


def run_script(main: Callable[[], Any]) -> None:
    """A training script's entry point: a bad option is one line (exit 2); a run stopped by non-finite losses
    (exit 1) or by SIGTERM / SIGINT (exit 130, checkpoint saved) says why, without a traceback."""
    try:
        main()
    except OptionError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except (NonFiniteLossError, TrainingInterrupted) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(130 if isinstance(error, TrainingInterrupted) else 1)


def apply_precision_flags(args: argparse.Namespace) -> None:
    """``--allow_tf32``: TF32 for fp32 matrix products and convolutions (a no-op without CUDA)."""
    if getattr(args, "allow_tf32", False):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile`` the prepared model when asked (``accelerator.unwrap_model`` still finds the module)."""
    return torch.compile(model) if enabled else model


class _StopSignals:
    """Record SIGTERM / SIGINT instead of dying mid-step; the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_training_loop(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch_loader: Callable[[int, int], Iterator[dict[str, torch.Tensor]]],
    compute_loss: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    progress: TrainingProgress,
    settings: LoopSettings,
    jsonl: JsonlLogger,
    after_step: Callable[[int, bool], None] | None = None,
) -> LoopResult:
    """Train until ``settings.total_steps`` optimizer steps. ``epoch_loader(epoch, skip_batches)`` yields the
    batches of an epoch from a data position; ``compute_loss(batch)`` returns the scalar loss of a batch already on
    the device; ``after_step(global_step, end_of_epoch)`` runs after every optimizer step (monitoring, evaluation)
    on every process. ``progress`` is updated in place."""
    result = LoopResult()
    model.train()
    bar = progress_bar(
        settings.total_steps,
        progress.global_step,
        accelerator.is_main_process and not settings.disable_tqdm,
        desc=settings.desc,
    )
    timer = StepTimer()
    interval_loss = torch.zeros((), device=accelerator.device)
    interval_batches = 0
    consecutive_nonfinite = 0
    cycle_nonfinite = False  # a non-finite batch in the current accumulation cycle: its optimizer step is skipped
    lr = 0.0
    train_start = time.perf_counter()
    with _StopSignals() as signals:
        while progress.global_step < settings.total_steps:
            loader = epoch_loader(progress.epoch, progress.batches_into_epoch)
            timer.restart_clock()
            end_of_epoch = False
            for batch in loader:
                timer.data_ready()
                batch = {key: value.to(accelerator.device, non_blocking=True) for key, value in batch.items()}
                with accelerator.accumulate(model):
                    # The lr is a function of the global step only (reference: per iteration).
                    lr = lr_at_step(
                        progress.global_step,
                        settings.schedule_steps_per_epoch,
                        settings.base_lr,
                        settings.min_lr,
                        settings.warmup_epochs,
                        settings.total_steps,
                    )
                    set_learning_rate(optimizer, lr)
                    loss = compute_loss(batch)
                    # One all-reduce agrees on "some rank saw a non-finite loss" and "some rank got a signal".
                    flags = torch.tensor(
                        [float(not torch.isfinite(loss.detach()).item()), float(signals.received is not None)],
                        device=accelerator.device,
                    )
                    if accelerator.num_processes > 1:
                        flags = accelerator.reduce(flags, reduction="sum")
                    if flags[0] > 0:
                        cycle_nonfinite = True
                    if not cycle_nonfinite:
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and settings.clip_grad:
                            accelerator.clip_grad_norm_(model.parameters(), settings.clip_grad)
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                if not cycle_nonfinite:
                    interval_loss += loss.detach().float()
                    interval_batches += 1
                progress.batches_into_epoch += 1
                timer.compute_done(next(iter(batch.values())).shape[0] * accelerator.num_processes)
                if not accelerator.sync_gradients:
                    continue

                # --- One optimizer step done (or skipped) ---------------------------------------------------------
                if cycle_nonfinite:
                    result.nonfinite_steps += 1
                    consecutive_nonfinite += 1
                    jsonl.log({"step": progress.global_step + 1, "nonfinite_loss_skipped": True})
                    accelerator.print(
                        f"Non-finite loss at step {progress.global_step + 1}: optimizer step skipped "
                        f"({consecutive_nonfinite} in a row)."
                    )
                    if consecutive_nonfinite >= settings.max_nonfinite_steps:
                        bar.close()
                        found = list_checkpoints(settings.output_dir)
                        where = f"the last good checkpoint {found[-1]} is intact" if found else "no checkpoint yet"
                        raise NonFiniteLossError(
                            f"Stopped: {consecutive_nonfinite} consecutive optimizer steps with a non-finite loss "
                            f"(up to step {progress.global_step + 1}); no checkpoint of this state was written and "
                            f"{where}. Lower --blr/--learning_rate, use bf16 instead of fp16, or set --clip_grad, "
                            "then resume with --resume_from_checkpoint latest."
                        )
                else:
                    consecutive_nonfinite = 0
                cycle_nonfinite = False
                progress.global_step += 1
                result.steps_this_run += 1
                timer.steps += 1
                bar.update(1)
                end_of_epoch = settings.steps_in_epoch is not None and (
                    progress.batches_into_epoch >= settings.steps_in_epoch * settings.gradient_accumulation_steps
                )
                if end_of_epoch:
                    progress.epoch += 1
                    progress.batches_into_epoch = 0
                finished = progress.global_step >= settings.total_steps
                if progress.global_step % settings.logging_steps == 0 or finished:
                    loss_value = accelerator.reduce(interval_loss / max(interval_batches, 1), reduction="mean").item()
                    result.last_loss = loss_value if interval_batches else float("nan")
                    speed = timer.summary()
                    record = {
                        "step": progress.global_step,
                        "epoch": progress.global_step / settings.schedule_steps_per_epoch,
                        "loss": result.last_loss,
                        "lr": lr,
                        **speed,
                    }
                    jsonl.log(record)
                    accelerator.log(
                        {"train/loss": result.last_loss, "train/lr": lr, **{f"perf/{k}": v for k, v in speed.items()}},
                        step=progress.global_step,
                    )
                    bar.set_postfix(postfix(result.last_loss, lr, speed["images_per_sec"]))
                    interval_loss.zero_()
                    interval_batches = 0
                    timer.reset()
                if after_step is not None:
                    after_step(progress.global_step, end_of_epoch)
                    model.train()
                if flags[1] > 0:  # a stop signal: save the state after this finished step and leave
                    bar.close()
                    path = save_checkpoint(accelerator, settings.output_dir, progress, settings.checkpoints_total_limit)
                    raise TrainingInterrupted(
                        f"Stopped by a signal after step {progress.global_step}; checkpoint saved to {path}. "
                        "Resume with --resume_from_checkpoint latest.",
                        path,
                    )
                # No scheduled checkpoint right after a skipped step: the newest checkpoint stays a good one.
                if consecutive_nonfinite == 0 and should_checkpoint(
                    settings.checkpointing_steps, progress.global_step, end_of_epoch
                ):
                    save_checkpoint(accelerator, settings.output_dir, progress, settings.checkpoints_total_limit)
                timer.restart_clock()
                if finished or end_of_epoch:
                    break
            else:  # the loader ran out (a stream, or a partial accumulation cycle): next epoch
                if not end_of_epoch:
                    progress.epoch += 1
                    progress.batches_into_epoch = 0
    bar.close()
    result.last_lr = lr
    result.train_runtime_s = time.perf_counter() - train_start
    return result


__all__ = [
    "LoopResult",
    "LoopSettings",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "add_loop_arguments",
    "check_loop_arguments",
    "maybe_compile",
    "apply_precision_flags",
    "run_script",
    "parse_training_args",
    "build_accelerator",
    "start_run",
    "run_training_loop",
]
