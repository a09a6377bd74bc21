"""The run shared by fine-tuning and linear probing: Accelerate setup, data, resume, the shared loop
(``mae_hf.training.loop``), evaluation every ``--eval_every_epochs`` with the best model kept, and the outputs
(a model folder that works with ``pipeline``, JSON results, model card, optional Hub push).

The scripts only say what differs: how the model is adjusted (frozen encoder or not), the optimiser, the training
transform and the loss of a batch (mixup or not)."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator

from ..cards import classifier_card_data, render_model_card, sample_curve
from ..hub import push_folder_from_args
from ..modeling_mae_hf import MAEForImageClassification
from .classification import (
    ClassificationSplits,
    build_classifier,
    build_sharded_eval_loader,
    build_train_loaders,
    eval_split,
    evaluate_classifier,
    load_classification_splits,
    validate_classification_args,
)
from .data import steps_per_epoch, total_training_steps
from .logging import read_jsonl
from .loop import (
    LoopSettings,
    apply_precision_flags,
    build_accelerator,
    maybe_compile,
    parse_training_args,
    run_training_loop,
    start_run,
)
from .optim import scaled_learning_rate

BEST_MODEL_DIR = "best_model"


@dataclass
class ClassifierTask:
    """What a classification script contributes to the shared run."""

    name: str  # "fine-tuning" / "linear probing": progress bar, logs, model card
    config_overrides: Callable[[argparse.Namespace], dict[str, Any]]
    prepare_model: Callable[[MAEForImageClassification, argparse.Namespace], None]
    build_optimizer: Callable[[MAEForImageClassification, argparse.Namespace, float], torch.optim.Optimizer]
    train_transform: Callable[[argparse.Namespace, int], Callable]
    # (args, num_labels) -> (model, batch) -> loss; built after the model so it can hold e.g. a Mixup object.
    loss_function: Callable[[argparse.Namespace, int], Callable[[torch.nn.Module, dict[str, torch.Tensor]], Any]]
    recipe_description: Callable[[argparse.Namespace], dict[str, Any]] = field(default=lambda args: {})


def classifier_main(parser: argparse.ArgumentParser, task: ClassifierTask, argv: Sequence[str] | None) -> dict:
    """Parse (recipe < command line), validate every option before any data or model is loaded, then train."""
    return run_classifier_training(parse_training_args(parser, argv, validate_classification_args), task)


def run_classifier_training(args: argparse.Namespace, task: ClassifierTask) -> dict[str, Any]:
    """Train, evaluate and save a classifier as described by ``args`` and ``task``; returns the results."""
    accelerator = build_accelerator(args)

    # --- Data and model: classes from the dataset, position embeddings interpolated to --input_size -------------
    with accelerator.main_process_first():  # the main process builds the datasets cache, the others reuse it
        splits: ClassificationSplits = load_classification_splits(args)
    overrides = {**(args.model_config_overrides or {}), **task.config_overrides(args)}
    model = build_classifier(
        args.model_name_or_path,
        splits.names,
        args.input_size,
        model_preset=args.model_preset,
        random_init=args.random_init,
        config_overrides=overrides,
    )
    input_size = model.config.image_size
    task.prepare_model(model, args)
    loaders = build_train_loaders(
        args, splits, task.train_transform(args, input_size), accelerator.num_processes, accelerator.process_index
    )
    validation = eval_split(splits, "validation", input_size, args.max_eval_samples, strict=args.strict_data)
    steps_in_epoch = steps_per_epoch(len(loaders), args.gradient_accumulation_steps)
    total_steps = total_training_steps(args.num_train_epochs, steps_in_epoch, args.max_train_steps)
    effective_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
    base_lr = scaled_learning_rate(args.blr, effective_batch, args.learning_rate)

    optimizer = task.build_optimizer(model, args, base_lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    eval_loader = None
    if validation is not None:
        eval_loader = build_sharded_eval_loader(
            accelerator, validation, args.per_device_eval_batch_size, args.dataloader_num_workers
        )

    progress, checkpoint, jsonl = start_run(
        accelerator, args, effective_batch_size=effective_batch, learning_rate_used=base_lr, total_steps=total_steps
    )
    log_path = jsonl.path
    best_dir = os.path.join(args.output_dir, BEST_MODEL_DIR)
    best = _read_best(best_dir) if checkpoint else None
    last_eval: dict[str, Any] | None = None

    def run_evaluation(step: int) -> None:
        nonlocal best, last_eval
        if eval_loader is None:
            return
        metrics = evaluate_classifier(accelerator, model, eval_loader)
        epoch = step / steps_in_epoch
        last_eval = {"step": step, "epoch": epoch, **metrics}
        jsonl.log({"step": step, "epoch": epoch, **{f"eval_{key}": value for key, value in metrics.items()}})
        accelerator.log({f"eval/{key}": value for key, value in metrics.items()}, step=step)
        accelerator.print(
            f"epoch {epoch:.1f}: top-1 {metrics['top1']:.4f}, top-5 {metrics['top5']:.4f}, loss {metrics['loss']:.4f}"
        )
        if args.save_best_model and (best is None or metrics["top1"] > best["top1"]):
            best = dict(last_eval)
            _save_model_folder(accelerator, model, best_dir)
            if accelerator.is_main_process:
                with open(os.path.join(best_dir, "eval_results.json"), "w", encoding="utf-8") as handle:
                    json.dump(best, handle, indent=2)

    def after_step(step: int, end_of_epoch: bool) -> None:
        finished = step >= total_steps
        if (end_of_epoch and progress.epoch % args.eval_every_epochs == 0) or finished:
            run_evaluation(step)

    accelerator.print(
        f"MAE {task.name}: {sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable parameters, "
        f"{len(splits.names)} classes, input {input_size}px, {accelerator.num_processes} process(es), effective "
        f"batch {effective_batch}, lr {base_lr:.3e}, {total_steps} optimizer steps ({steps_in_epoch} per epoch)"
    )
    apply_precision_flags(args)
    model = maybe_compile(model, args.torch_compile)
    loss_of_batch = task.loss_function(args, len(splits.names))
    settings = LoopSettings.from_args(
        args,
        total_steps=total_steps,
        schedule_steps_per_epoch=steps_in_epoch,
        steps_in_epoch=steps_in_epoch,
        base_lr=base_lr,
        desc=task.name,
    )
    loop = run_training_loop(
        accelerator,
        model,
        optimizer,
        lambda epoch, skip: loaders.epoch_loader(epoch, skip_batches=skip),
        lambda batch: loss_of_batch(model, batch),
        progress,
        settings,
        jsonl,
        after_step,
    )
    if last_eval is None and eval_loader is not None:  # resumed at the end: evaluate the final weights once
        run_evaluation(progress.global_step)

    # --- Outputs: the final model folder (pipeline-ready), results, model card, Hub -----------------------------
    _save_model_folder(accelerator, model, args.output_dir)
    unwrapped: MAEForImageClassification = accelerator.unwrap_model(model)
    results = {
        "task": task.name,
        "eval": last_eval,
        "best_eval": best,
        "final_loss": loop.last_loss if math.isfinite(loop.last_loss) else None,
        "global_step": progress.global_step,
        "epoch": progress.global_step / steps_in_epoch,
        "train_runtime_s": loop.train_runtime_s,
        "effective_batch_size": effective_batch,
        "learning_rate": base_lr,
        "num_processes": accelerator.num_processes,
        "nonfinite_steps_skipped": loop.nonfinite_steps,
        "num_labels": len(splits.names),
        "input_size": input_size,
    }
    if accelerator.is_main_process:
        with open(os.path.join(args.output_dir, "all_results.json"), "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
        if last_eval is not None:
            with open(os.path.join(args.output_dir, "eval_results.json"), "w", encoding="utf-8") as handle:
                json.dump(last_eval, handle, indent=2)
        _write_classifier_card(args, task, unwrapped, results, log_path, effective_batch, total_steps, accelerator)
        push_folder_from_args(args, args.output_dir)
        accelerator.print(f"Classifier, log.jsonl, eval_results.json and runs/ written to {args.output_dir}")
    accelerator.end_training()
    return results


def _read_best(best_dir: str) -> dict[str, Any] | None:
    path = os.path.join(best_dir, "eval_results.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _save_model_folder(accelerator: Accelerator, model: torch.nn.Module, folder: str) -> None:
    """``save_pretrained`` (config with id2label, weights, code, image processor) from every process (collective
    state dict under FSDP / DeepSpeed); the image processor is rewritten so it matches the model's input size."""
    state_dict = accelerator.get_state_dict(model)
    unwrapped: MAEForImageClassification = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        processor = os.path.join(folder, "preprocessor_config.json")
        if os.path.exists(processor):
            os.remove(processor)
    unwrapped.save_pretrained(
        folder, is_main_process=accelerator.is_main_process, save_function=accelerator.save, state_dict=state_dict
    )
    accelerator.wait_for_everyone()


def _write_classifier_card(
    args: argparse.Namespace,
    task: ClassifierTask,
    model: MAEForImageClassification,
    results: dict[str, Any],
    log_path: str,
    effective_batch: int,
    total_steps: int,
    accelerator: Accelerator,
) -> None:
    config = model.config
    records = read_jsonl(log_path) if os.path.exists(log_path) else []
    dataset = args.dataset_name or args.train_dir
    recipe = {
        "task": task.name,
        "starting point": args.model_name_or_path or args.model_preset,
        "random initialisation": bool(args.random_init or not args.model_name_or_path),
        "pooling": "global average pool + fc_norm" if config.global_pool else "cls token",
        "input size / patch": f"{config.image_size}px / {config.patch_size}",
        "effective batch (per device × accumulation × processes)": (
            f"{effective_batch} ({args.per_device_train_batch_size} × {args.gradient_accumulation_steps} × "
            f"{accelerator.num_processes})"
        ),
        "learning rate": f"{results['learning_rate']:.3e}"
        + ("" if args.learning_rate is not None else f" (blr {args.blr} × {effective_batch} / 256)"),
        **task.recipe_description(args),
        "schedule": f"{args.warmup_epochs} warm-up epochs, half-cycle cosine to {args.min_lr}",
        "epochs / steps": f"{args.num_train_epochs} / {total_steps}",
        "mixed precision": accelerator.mixed_precision,
        "seed": args.seed,
    }
    metrics = results["best_eval"] or results["eval"]
    render_model_card(
        "classifier.md",
        classifier_card_data(
            model_name=os.path.basename(os.path.abspath(args.output_dir)),
            dataset_name=args.dataset_name,
            base_model=args.model_name_or_path if not args.random_init else None,
            top1=None if results["eval"] is None else results["eval"]["top1"],
            top5=None if results["eval"] is None else results["eval"]["top5"],
            dataset_label=os.path.basename(os.path.normpath(dataset)) if dataset else "images",
            # weights derived from facebookresearch/mae checkpoints keep their CC BY-NC 4.0 license
            license="cc-by-nc-4.0" if str(args.model_name_or_path).endswith((".pth", ".pt", ".bin")) else "apache-2.0",
        ),
        os.path.join(args.output_dir, "README.md"),
        model_id=os.path.basename(os.path.abspath(args.output_dir)),
        task=task.name,
        data_description=f"`{dataset}`, split `{args.train_split}` (train) / `{args.validation_split}` (evaluation)",
        labels=", ".join(config.id2label[i] for i in range(config.num_labels)),
        recipe=recipe,
        results=results["eval"],
        best=metrics if results["best_eval"] else None,
        eval_curve=[r for r in records if "eval_top1" in r][-10:],
        loss_curve=sample_curve(records),
    )
    if os.path.isdir(os.path.join(args.output_dir, BEST_MODEL_DIR)) and accelerator.is_main_process:
        # The best model folder gets the same card, so it is also self-describing when pushed on its own.
        shutil.copy(os.path.join(args.output_dir, "README.md"), os.path.join(args.output_dir, BEST_MODEL_DIR))


__all__ = ["BEST_MODEL_DIR", "ClassifierTask", "run_classifier_training"]
