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
With fused AdamW (the default) the step never waits for the device: the skip happens on the device and the host
reads the flags, and the loss, at logging and checkpoint steps only (``StepFlags``).
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


class StepFlags:
    """Per optimizer step, on the device: did any process see a non-finite loss in the step's batches, did any get
    a stop signal. One all-reduce of two numbers per batch agrees on them across processes, so a NaN or a signal on
    one rank cannot make the processes diverge.

    The host reads them only at decision points (logging, checkpoint and last steps) when the optimizer can skip an
    update on the device: fused Adam/AdamW take ``found_inf`` as under a GradScaler. The training step then has no
    host-device synchronisation. Other optimizers (LARS, the AdamW loop, fp16 with a GradScaler) are read every step
    and their update is skipped on the host. A single process reads its stop signal on the host every step; several
    processes act on one at the next decision point, where all of them read the agreed flag."""

    MAX_UNREAD = 100

    def __init__(self, accelerator: Accelerator, optimizer: torch.optim.Optimizer) -> None:
        self.accelerator = accelerator
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer under Accelerate's wrapper
        self.skips_on_device = (
            bool(getattr(self.optimizer, "_step_supports_amp_scaling", False)) and accelerator.scaler is None
        )
        self.cycle: torch.Tensor | None = None  # flags of the current accumulation cycle
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, flags) not read yet

    def add_batch(self, loss: torch.Tensor, signal_received: bool) -> None:
        flags = torch.stack([(~torch.isfinite(loss.detach())).float(), torch.zeros_like(loss, dtype=torch.float)])
        if self.accelerator.num_processes > 1:
            flags[1] = float(signal_received)  # a device-side fill: no synchronisation
            flags = self.accelerator.reduce(flags, reduction="sum")
        self.cycle = flags if self.cycle is None else torch.maximum(self.cycle, flags)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Step unless the cycle had a non-finite loss (decided on the device when the optimizer allows it)."""
        if self.skips_on_device:
            self.optimizer.found_inf = self.cycle[0]
            optimizer.step()
            self.optimizer.found_inf = None
        elif self.cycle[0].item() == 0:
            optimizer.step()

    def due(self, decision_point: bool) -> bool:
        """Whether to read the flags after this step: at a decision point, every step when the optimizer cannot skip
        on the device, and at the latest every ``MAX_UNREAD`` steps (a long logging interval)."""
        return decision_point or not self.skips_on_device or len(self.pending) >= self.MAX_UNREAD

    def end_step(self, step: int) -> None:
        self.pending.append((step, self.cycle))
        self.cycle = None

    def read(self) -> list[tuple[int, bool, bool]]:
        """(step, non-finite, stop signal) of every step since the last read."""
        if not self.pending:
            return []
        values = torch.stack([flags for _, flags in self.pending]).tolist()
        steps = [step for step, _ in self.pending]
        self.pending = []
        return [(step, bad > 0, stop > 0) for step, (bad, stop) in zip(steps, values)]


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
    flags = StepFlags(accelerator, optimizer)
    interval_loss = torch.zeros((), device=accelerator.device)
    interval_batches = torch.zeros((), device=accelerator.device)
    consecutive_nonfinite = 0
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
                    flags.add_batch(loss, signals.received is not None)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        if settings.clip_grad:
                            accelerator.clip_grad_norm_(model.parameters(), settings.clip_grad)
                        flags.optimizer_step(optimizer)  # skipped when a loss of the cycle was not finite
                    optimizer.zero_grad(set_to_none=True)
                # Summed on the device: a non-finite loss does not count (the log shows the trained batches' loss).
                finite = torch.isfinite(loss.detach())
                interval_loss += torch.where(finite, loss.detach().float(), 0.0)
                interval_batches += finite.float()
                progress.batches_into_epoch += 1
                timer.compute_done(next(iter(batch.values())).shape[0] * accelerator.num_processes)
                if not accelerator.sync_gradients:
                    continue

                # --- One optimizer step done (or skipped) ---------------------------------------------------------
                step = progress.global_step + 1
                flags.end_step(step)
                end_of_epoch = settings.steps_in_epoch is not None and (
                    progress.batches_into_epoch >= settings.steps_in_epoch * settings.gradient_accumulation_steps
                )
                finished = step >= settings.total_steps
                logging_step = step % settings.logging_steps == 0 or finished
                checkpoint_step = should_checkpoint(settings.checkpointing_steps, step, end_of_epoch)
                stop_signal = accelerator.num_processes == 1 and signals.received is not None
                if flags.due(logging_step or checkpoint_step or stop_signal):
                    for flagged_step, nonfinite, stop in flags.read():
                        stop_signal = stop_signal or stop
                        if not nonfinite:
                            consecutive_nonfinite = 0
                            continue
                        result.nonfinite_steps += 1
                        consecutive_nonfinite += 1
                        jsonl.log({"step": flagged_step, "nonfinite_loss_skipped": True})
                        accelerator.print(
                            f"Non-finite loss at step {flagged_step}: optimizer step skipped "
                            f"({consecutive_nonfinite} in a row)."
                        )
                    if consecutive_nonfinite >= settings.max_nonfinite_steps:
                        bar.close()
                        found = list_checkpoints(settings.output_dir)
                        where = f"the last good checkpoint {found[-1]} is intact" if found else "no checkpoint yet"
                        raise NonFiniteLossError(
                            f"Stopped: {consecutive_nonfinite} consecutive optimizer steps with a non-finite loss "
                            f"(up to step {step}); no checkpoint of this state was written and "
                            f"{where}. Lower --blr/--learning_rate, use bf16 instead of fp16, or set --clip_grad, "
                            "then resume with --resume_from_checkpoint latest."
                        )
                progress.global_step = step
                result.steps_this_run += 1
                timer.steps += 1
                bar.update(1)
                if end_of_epoch:
                    progress.epoch += 1
                    progress.batches_into_epoch = 0
                if logging_step:
                    batches = accelerator.reduce(interval_batches, reduction="sum").item()
                    loss_sum = accelerator.reduce(interval_loss, reduction="sum").item()
                    result.last_loss = loss_sum / batches if batches else float("nan")
                    speed = timer.summary()
                    record = {"step": step, "epoch": step / settings.schedule_steps_per_epoch, "loss": result.last_loss}
                    jsonl.log({**record, "lr": lr, **speed})
                    accelerator.log(
                        {"train/loss": result.last_loss, "train/lr": lr, **{f"perf/{k}": v for k, v in speed.items()}},
                        step=step,
                    )
                    bar.set_postfix(postfix(result.last_loss, lr, speed["images_per_sec"]))
                    interval_loss.zero_()
                    interval_batches.zero_()
                    timer.reset()
                if after_step is not None:
                    after_step(step, end_of_epoch)
                    model.train()
                if stop_signal:  # save the state after this finished step and leave
                    bar.close()
                    path = save_checkpoint(accelerator, settings.output_dir, progress, settings.checkpoints_total_limit)
                    raise TrainingInterrupted(
                        f"Stopped by a signal after step {step}; checkpoint saved to {path}. "
                        "Resume with --resume_from_checkpoint latest.",
                        path,
                    )
                # No scheduled checkpoint right after a skipped step: the newest checkpoint stays a good one.
                if consecutive_nonfinite == 0 and checkpoint_step:
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
    "StepFlags",
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
