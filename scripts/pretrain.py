#!/usr/bin/env python
"""Pre-train a Masked Autoencoder (MAE) with 🤗 Accelerate on images read with 🤗 datasets.

    accelerate launch scripts/pretrain.py --config configs/pretrain_vit_base_patch16.yaml --train_dir imgs/train
    python scripts/pretrain.py --config configs/pretrain_tiny_cpu.yaml --train_dir d/train --output_dir out

The recipe is the reference's (facebookresearch/mae): AdamW (0.9, 0.95), wd 0.05 without biases/norms, lr =
blr × effective batch / 256 with per-iteration warm-up and half-cycle cosine, RandomResizedCrop(0.2-1) + flip.
Reusable parts live in ``mae_hf.training`` (the loop, shared with fine-tuning and linear probing, in
``mae_hf.training.loop``); this file reads top to bottom. ``--help`` lists options.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from mae_hf import MAEConfig, MAEForPreTraining, MAEModel
from mae_hf.cards import pretrain_card_data, render_model_card, sample_curve
from mae_hf.hub import push_folder_from_args
from mae_hf.training.args import OptionError, build_pretrain_parser, validate_pretrain_args
from mae_hf.training.data import (
    build_eval_loader,
    build_eval_transform,
    build_pretrain_data,
    detect_image_column,
    detect_label_column,
    load_image_datasets,
    load_image_datasets_from_args,
    normalize_images,
    prepare_split,
    steps_per_epoch,
    streaming_steps_per_epoch,
    total_training_steps,
)
from mae_hf.training.device_decode import DeviceDecodingLoader
from mae_hf.training.knn import extract_features, knn_top1
from mae_hf.training.logging import read_jsonl
from mae_hf.training.loop import (
    LoopSettings,
    apply_precision_flags,
    build_accelerator,
    maybe_compile,
    parse_training_args,
    run_script,
    run_training_loop,
    start_run,
)
from mae_hf.training.optim import build_adamw, param_groups_weight_decay, scaled_learning_rate
from mae_hf.training.visualize import log_image_to_trackers, save_reconstruction_grid

CONFIG_FIELDS = {field.name for field in dataclasses.fields(MAEConfig)}


def build_model(args) -> MAEForPreTraining:
    """A fresh ``--model_preset`` (or ``--model_name_or_path``) with the config overrides and MAE objective."""
    overrides = dict(args.model_config_overrides or {})
    unknown = sorted(set(overrides) - CONFIG_FIELDS)
    if unknown:
        raise OptionError(f"--model_config_overrides: unknown MAEConfig field(s) {unknown}.")
    if args.mask_ratio is not None:
        overrides["mask_ratio"] = args.mask_ratio
    if args.norm_pix_loss is not None:
        overrides["norm_pix_loss"] = args.norm_pix_loss
    try:
        if args.model_name_or_path:
            return MAEForPreTraining.from_pretrained(args.model_name_or_path, **overrides)
        return MAEForPreTraining(MAEConfig.from_preset(args.model_preset, **overrides))
    except ValueError as error:
        raise OptionError(f"--model_config_overrides / --model_preset: {error}") from error


def labelled_eval_split(args, directory: str | None, split: str, input_size: int, max_samples: int | None):
    """A labelled split with the eval transform for the kNN monitor (a folder, else the training data's split)."""
    if directory:
        data = load_image_datasets(train_dir=directory, cache_dir=args.cache_dir)["train"]
    else:
        splits = load_image_datasets_from_args(args)
        if split not in splits:
            raise OptionError(f"--knn_every: no {split} split for the kNN monitor; pass --knn_{split}_dir.")
        data = splits[split]
    label_column = detect_label_column(data, args.label_column_name)
    if label_column is None:
        raise OptionError("--knn_every needs labels: pass --label_column_name or class sub-folders.")
    image_column = detect_image_column(data, args.image_column_name)
    return prepare_split(data, build_eval_transform(input_size), image_column, label_column, max_samples)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_training_args(build_pretrain_parser(), argv, validate_pretrain_args)

    # --- Accelerate: processes, mixed precision, gradient accumulation, trackers ------------------------------------
    accelerator = build_accelerator(args)

    # --- Model and data --------------------------------------------------------------------------------------------
    model = build_model(args)
    config = model.config
    input_size = args.input_size or config.image_size
    if input_size != config.image_size:
        raise OptionError(
            f"--input_size {input_size} differs from the model's image_size {config.image_size}; "
            f"add image_size={input_size} to --model_config_overrides."
        )
    with accelerator.main_process_first():  # the main process builds the datasets cache, the others reuse it
        loaders, preview = build_pretrain_data(args, input_size, accelerator.num_processes, accelerator.process_index)
    batches_per_epoch = None if args.streaming else len(loaders)
    steps_in_epoch = None if args.streaming else steps_per_epoch(batches_per_epoch, args.gradient_accumulation_steps)
    total_steps = total_training_steps(args.num_train_epochs, steps_in_epoch, args.max_train_steps)
    effective_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
    # A stream has no length: --num_examples_per_epoch (or the dataset info) says how many steps make an epoch.
    schedule_steps_per_epoch = steps_in_epoch or streaming_steps_per_epoch(
        loaders.dataset, args.num_examples_per_epoch, effective_batch
    )
    base_lr = scaled_learning_rate(args.blr, effective_batch, args.learning_rate)

    # --- Optimiser: AdamW over the reference's weight-decay groups (frozen pos embeds are left out) -------------------
    optimizer = build_adamw(
        param_groups_weight_decay(model, args.weight_decay),
        lr=base_lr,
        betas=(args.adam_beta1, args.adam_beta2),
        fused=args.fused_adamw,
    )
    model, optimizer = accelerator.prepare(model, optimizer)

    # --- Resume (model, optimizer, scaler, RNG, counters, data position), trackers, log.jsonl ----------------------
    progress, checkpoint, jsonl = start_run(
        accelerator, args, effective_batch_size=effective_batch, learning_rate_used=base_lr, total_steps=total_steps
    )
    log_path = jsonl.path
    # Grids and kNN run the unwrapped model on the main process alone, which needs the full weights there:
    # not under FSDP (sharded parameters), where scripts/visualize.py draws the grid from the saved folder.
    can_monitor = accelerator.is_main_process and accelerator.distributed_type != DistributedType.FSDP
    visual_images = None
    if can_monitor:
        if len(preview) > 0:
            # Evenly spaced over the split: image folders are sorted by class, so this shows several classes.
            count = min(args.num_visualize_images, len(preview))
            picks = sorted({round(i * (len(preview) - 1) / max(count - 1, 1)) for i in range(count)})
            visual_images = torch.stack([preview[i]["pixel_values"] for i in picks])
    knn_loaders = None
    if args.knn_every and can_monitor:
        memory = labelled_eval_split(args, args.knn_train_dir, "train", input_size, args.knn_max_train_samples)
        queries = labelled_eval_split(args, args.knn_validation_dir, "validation", input_size, args.max_eval_samples)
        batch = max(args.per_device_train_batch_size, 64)
        knn_loaders = (build_eval_loader(memory, batch), build_eval_loader(queries, batch))

    def visualize(step: int) -> None:
        if visual_images is None:
            return
        path = os.path.join(args.output_dir, "reconstruction.png")
        grid = save_reconstruction_grid(accelerator.unwrap_model(model), visual_images, path, seed=args.seed)
        history = os.path.join(args.output_dir, "reconstructions")
        os.makedirs(history, exist_ok=True)
        save_reconstruction_grid(
            accelerator.unwrap_model(model), visual_images, f"{history}/step_{step:07d}.png", args.seed
        )
        log_image_to_trackers(accelerator, "reconstruction", grid, step)

    def monitor_knn(step: int) -> float:
        encoder: MAEModel = accelerator.unwrap_model(model).mae
        with accelerator.autocast():  # features in the training precision; the vote itself in fp32
            memory = extract_features(encoder, knn_loaders[0], accelerator.device)
            queries = extract_features(encoder, knn_loaders[1], accelerator.device)
        top1 = knn_top1(*memory, *queries, k=args.knn_k, temperature=args.knn_temperature)
        jsonl.log({"step": step, "epoch": step / schedule_steps_per_epoch, "knn_top1": top1})
        accelerator.log({"knn/top1": top1}, step=step)
        return top1

    accelerator.print(
        f"MAE pre-training: {sum(p.numel() for p in model.parameters()):,} parameters, {accelerator.num_processes} "
        f"process(es), effective batch {effective_batch}, lr {base_lr:.3e}, {total_steps} optimizer steps"
        + (f" ({steps_in_epoch} per epoch)" if steps_in_epoch else "")
    )

    # --- Training loop (shared with fine-tuning and linear probing: mae_hf.training.loop) ---------------------------
    apply_precision_flags(args)
    model = maybe_compile(model, args.torch_compile)
    last_knn = None

    def after_step(step: int, end_of_epoch: bool) -> None:
        nonlocal last_knn
        if can_monitor and args.visualize_every and step % args.visualize_every == 0:
            visualize(step)
        if knn_loaders is not None and step % args.knn_every == 0:
            last_knn = monitor_knn(step)

    def epoch_loader(epoch: int, skip: int):
        loader = loaders.epoch_loader(epoch, skip_batches=skip)
        if args.decode_on_device:  # JPEGs decoded and cropped on the device, one batch ahead of the step
            return DeviceDecodingLoader(loader, accelerator.device, input_size, args.strict_data, loaders.unreadable)
        return loader

    settings = LoopSettings.from_args(
        args,
        total_steps=total_steps,
        schedule_steps_per_epoch=schedule_steps_per_epoch,
        steps_in_epoch=steps_in_epoch,
        base_lr=base_lr,
    )
    loop = run_training_loop(
        accelerator,
        model,
        optimizer,
        epoch_loader,
        lambda batch: model(pixel_values=normalize_images(batch["pixel_values"])).loss,
        progress,
        settings,
        jsonl,
        after_step,
    )
    last_loss, steps_this_run, train_runtime = loop.last_loss, loop.steps_this_run, loop.train_runtime_s

    # --- Outputs: model folder (config, weights, code, processor), grid, kNN, results, model card -----------------
    accelerator.wait_for_everyone()
    if can_monitor:
        visualize(progress.global_step)
        if knn_loaders is not None and (last_knn is None or progress.global_step % args.knn_every):
            last_knn = monitor_knn(progress.global_step)
    state_dict = accelerator.get_state_dict(model)  # a collective under FSDP / DeepSpeed: every process calls it
    unwrapped: MAEForPreTraining = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(
        args.output_dir,
        is_main_process=accelerator.is_main_process,
        save_function=accelerator.save,
        state_dict=state_dict,
    )
    results = {
        "final_loss": last_loss,
        "global_step": progress.global_step,
        "epoch": progress.global_step / schedule_steps_per_epoch,
        "train_runtime_s": train_runtime,
        "train_samples_per_second": steps_this_run * effective_batch / max(train_runtime, 1e-9),
        "effective_batch_size": effective_batch,
        "learning_rate": base_lr,
        "num_processes": accelerator.num_processes,
        "knn_top1": last_knn,
        "nonfinite_steps_skipped": loop.nonfinite_steps,
        "num_parameters": sum(p.numel() for p in unwrapped.parameters()),
        **loaders.unreadable_summary(),  # training images this process skipped as unreadable
    }
    if accelerator.is_main_process:
        if not math.isfinite(last_loss):  # resumed from the final checkpoint: nothing trained in this session
            logged = [r["loss"] for r in read_jsonl(log_path) if "loss" in r] if os.path.exists(log_path) else []
            results["final_loss"] = logged[-1] if logged else None
        if results["unreadable_images"]:
            jsonl.log({"step": progress.global_step, **loaders.unreadable_summary()})
        with open(os.path.join(args.output_dir, "train_results.json"), "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
        write_model_card(args, unwrapped.config, results, log_path, effective_batch, total_steps, accelerator)
        accelerator.print(f"Model, log.jsonl, reconstruction.png and TensorBoard runs/ written to {args.output_dir}")
        push_folder_from_args(args, args.output_dir)
    accelerator.end_training()
    return results


def write_model_card(
    args,
    config: MAEConfig,
    results: dict,
    log_path: str,
    effective_batch: int,
    total_steps: int,
    accelerator: Accelerator,
) -> None:
    records = read_jsonl(log_path) if os.path.exists(log_path) else []
    data = args.dataset_name or args.train_dir
    size = f"{config.image_size}px, patch {config.patch_size}"
    architecture = {
        "model": args.model_name_or_path or args.model_preset,
        "image size / patch": size,
        "encoder (width × depth, heads)": (
            f"{config.hidden_size} × {config.num_hidden_layers}, {config.num_attention_heads}"
        ),
        "decoder (width × depth, heads)": (
            f"{config.decoder_hidden_size} × {config.decoder_num_hidden_layers}, {config.decoder_num_attention_heads}"
        ),
        "mask ratio": config.mask_ratio,
        "norm-pix loss": config.norm_pix_loss,
        "parameters (encoder + decoder)": f"{results['num_parameters']:,}",
    }
    recipe = {
        "effective batch (per device × accumulation × processes)": (
            f"{effective_batch} ({args.per_device_train_batch_size} × {args.gradient_accumulation_steps} × "
            f"{accelerator.num_processes})"
        ),
        "learning rate": f"{results['learning_rate']:.3e}"
        + ("" if args.learning_rate is not None else f" (blr {args.blr} × {effective_batch} / 256)"),
        "optimizer": f"AdamW, betas ({args.adam_beta1}, {args.adam_beta2}), weight decay {args.weight_decay}",
        "schedule": f"{args.warmup_epochs} warm-up epochs, half-cycle cosine to {args.min_lr}",
        "epochs / steps": f"{args.num_train_epochs} / {total_steps}",
        "mixed precision": accelerator.mixed_precision,
        "gradient clipping": args.clip_grad,
        "seed": args.seed,
    }
    final_loss = results["final_loss"] if results["final_loss"] is not None else float("nan")
    render_model_card(
        "pretrain.md",
        pretrain_card_data(args.dataset_name),
        os.path.join(args.output_dir, "README.md"),
        model_id=os.path.basename(os.path.abspath(args.output_dir)),
        architecture=architecture,
        data_description=(
            f"`{data}`"
            + (f" (config `{args.dataset_config_name}`)" if args.dataset_config_name else "")
            + f", split `{args.train_split}`"
            + (" (streamed)" if args.streaming else "")
        ),
        input_size=config.image_size,
        recipe=recipe,
        total_steps=results["global_step"],
        epochs=f"{results['epoch']:.2f}",
        train_runtime=f"{results['train_runtime_s']:.0f} s (this session)",
        final_loss=f"{final_loss:.4f}" if math.isfinite(final_loss) else "n/a",
        knn_top1=None if results["knn_top1"] is None else f"{results['knn_top1']:.4f}",
        knn_k=args.knn_k,
        loss_curve=sample_curve(records),
        has_reconstruction=os.path.exists(os.path.join(args.output_dir, "reconstruction.png")),
    )


if __name__ == "__main__":
    run_script(main)
