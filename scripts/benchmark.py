#!/usr/bin/env python
"""Training-step throughput of this project's MAE against transformers' ViTMAE and the reference on timm blocks.

One optimizer step = forward + backward + fused AdamW (betas 0.9/0.95) on random images, timed after warm-up, every
implementation in the same process with the same batch and precision. Reports images/s, step time, peak GPU
memory and, on GPU, model FLOPs utilisation against a bf16 8192³ matmul measured in the same run.

    python scripts/benchmark.py                                    # CPU, small config, fp32
    python scripts/benchmark.py --model vit-base-patch16 --batch_size 256 --precision bf16 --compile   # GPU
    python scripts/benchmark.py --task finetune --model vit-base-patch16 --batch_size 256 --precision bf16

``--data_dir`` adds pre-training end to end from the image files of a folder, through the project's data pipeline
(🤗 datasets image folder, ``--workers`` data-loader processes, uint8 batches normalised on the device, or
``--decode_on_device``: JPEG decode and crop in the step), with its throughput as a fraction of the model-only step
of the same run. ``--make_jpegs N`` first writes N photo-like 500x375 JPEGs (ImageNet's typical size) there:

    python scripts/benchmark.py --model vit-base-patch16 --batch_size 256 --precision bf16 --compile \
        --only compiled --data_dir /tmp/jpegs --make_jpegs 8192 --workers 16 [--decode_on_device]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from multiprocessing import Pool

import numpy as np
import torch
from PIL import Image
from torch import nn

from mae_hf import MAEConfig, MAEForImageClassification, MAEForPreTraining
from mae_hf.convert import mae_to_reference_state_dict, vitmae_from_mae
from mae_hf.timm_reference import ReferenceMAE
from mae_hf.training.args import build_pretrain_parser
from mae_hf.training.data import build_pretrain_data, normalize_images
from mae_hf.training.device_decode import DeviceDecodingLoader

MODELS = {
    # small enough for a 2-core CPU, large enough that matrix products dominate
    "cpu-small": dict(
        image_size=64,
        patch_size=8,
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=3,
        decoder_hidden_size=128,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4,
    ),
    # the test preset: so small that per-operation overhead, not arithmetic, sets the step time
    "cpu-tiny": "mae-vit-tiny-test",
    "vit-base-patch16": "mae-vit-base-patch16",
    "vit-large-patch16": "mae-vit-large-patch16",
    "vit-huge-patch14": "mae-vit-huge-patch14",
}


@dataclass
class Result:
    name: str
    images_per_second: float
    step_ms: float
    step_ms_per_round: list[float]
    peak_memory_gib: float | None
    mfu: float | None
    loss: float


def build_config(name: str) -> MAEConfig:
    spec = MODELS[name]
    if isinstance(spec, str):
        return MAEConfig.from_preset(spec, norm_pix_loss=True)
    return MAEConfig(**spec, norm_pix_loss=True)


def pretraining_flops_per_image(config: MAEConfig, mask_ratio: float) -> float:
    """Analytic FLOPs of one training step per image (backward = 2 x forward), matrix products only, counting the
    work MAE needs: the patch embedding of the visible patches (as this project does; the reference embeds all)."""
    patches = config.num_patches
    visible = 1 + int(patches * (1 - mask_ratio))
    decoded = 1 + patches

    def block(tokens: int, width: int, hidden: int) -> float:
        linear = 2 * tokens * (width * 3 * width + width * width + 2 * width * hidden)
        attention = 2 * 2 * tokens * tokens * width
        return linear + attention

    patch_dim = config.patch_size**2 * config.num_channels
    forward = 2 * (visible - 1) * patch_dim * config.hidden_size
    forward += config.num_hidden_layers * block(visible, config.hidden_size, config.intermediate_size)
    forward += 2 * visible * config.hidden_size * config.decoder_hidden_size
    forward += config.decoder_num_hidden_layers * block(
        decoded, config.decoder_hidden_size, config.decoder_intermediate_size
    )
    forward += 2 * decoded * config.decoder_hidden_size * patch_dim
    return 3 * forward


def finetune_flops_per_image(config: MAEConfig) -> float:
    tokens = 1 + config.num_patches
    width, hidden = config.hidden_size, config.intermediate_size
    per_block = 2 * tokens * (4 * width * width + 2 * width * hidden) + 4 * tokens * tokens * width
    forward = 2 * config.num_patches * config.patch_size**2 * config.num_channels * width
    return 3 * (forward + config.num_hidden_layers * per_block)


def matmul_peak_flops(device: torch.device) -> float:
    """Measured peak of a large matrix product: bf16 8192³ on GPU, fp32 2048³ on CPU."""
    size, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    repeats = 20 if device.type == "cuda" else 3
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """One implementation's training step on ``device``: fused AdamW (betas 0.9/0.95) for every implementation, as
    the method in the performance notes prescribes, the same images, optional bf16 autocast."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
        images: torch.Tensor,
        precision: str,
    ) -> None:
        self.device = images.device
        self.model = model.to(self.device).train()
        self.loss_fn = loss_fn
        self.images = images
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), fused=True)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        self.loss = torch.zeros(())

    def step(self, images: torch.Tensor | None = None) -> None:
        with self.autocast:
            loss = self.loss_fn(self.model, self.images if images is None else images)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss = loss.detach()

    def time_steps(self, steps: int) -> float:
        """Seconds per step over ``steps`` steps."""
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        return (time.perf_counter() - start) / steps

    def release(self) -> None:
        self.model.to("cpu")
        del self.optimizer
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def time_candidates(
    candidates: dict[str, tuple[nn.Module, Callable]],
    args: argparse.Namespace,
    device: torch.device,
    flops_per_image: float,
    peak_flops: float,
) -> list[Result]:
    """Median seconds per step over ``args.rounds`` rounds of ``args.steps`` steps, after ``args.warmup`` steps.

    On CPU the implementations take turns round by round (all stay in memory), so a machine whose speed drifts
    affects them alike and the ratios hold. On GPU each runs alone on the device, so its peak memory is its own."""
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    peaks: dict[str, float | None] = dict.fromkeys(candidates)
    timers: dict[str, StepTimer] = {}
    for name, (model, loss_fn) in candidates.items():
        timer = StepTimer(model, loss_fn, images, args.precision)
        for _ in range(args.warmup):
            timer.step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            seconds[name] = [timer.time_steps(args.steps) for _ in range(args.rounds)]
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2**30
            timers[name] = timer
            timer.release()
            print(f"{name:42s} {args.batch_size / statistics.median(seconds[name]):10.1f} img/s", flush=True)
        else:
            timers[name] = timer
    if device.type != "cuda":
        for round_index in range(args.rounds):
            for name, timer in timers.items():
                seconds[name].append(timer.time_steps(args.steps))
            print(f"round {round_index + 1}/{args.rounds}", flush=True)
    results = []
    for name, per_round in seconds.items():
        median = statistics.median(per_round)
        throughput = args.batch_size / median
        mfu = throughput * flops_per_image / peak_flops if peak_flops else None
        rounds_ms = [round(1000 * value, 2) for value in per_round]
        results.append(Result(name, throughput, 1000 * median, rounds_ms, peaks[name], mfu, float(timers[name].loss)))
    return results


def pretraining_candidates(config: MAEConfig, args: argparse.Namespace) -> dict[str, tuple[nn.Module, Callable]]:
    torch.manual_seed(0)
    ours = MAEForPreTraining(config)
    reference = ReferenceMAE(
        img_size=config.image_size,
        patch_size=config.patch_size,
        embed_dim=config.hidden_size,
        depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        decoder_embed_dim=config.decoder_hidden_size,
        decoder_depth=config.decoder_num_hidden_layers,
        decoder_num_heads=config.decoder_num_attention_heads,
        norm_pix_loss=True,
    )
    reference.load_state_dict(mae_to_reference_state_dict(ours.state_dict()))
    vitmae = vitmae_from_mae(ours)
    vitmae.set_attn_implementation("sdpa")

    def hf_loss(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=images).loss

    def reference_loss(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return model(images, 0.75)[0]

    candidates = {
        "mae_hf (sdpa)": (ours, hf_loss),
        "transformers ViTMAE (sdpa)": (vitmae, hf_loss),
        "reference on timm blocks": (reference, reference_loss),
    }
    if args.compile:
        # Copies: each implementation has its own weights and optimizer, whichever turn it takes.
        candidates["mae_hf (sdpa, compiled)"] = (torch.compile(copy.deepcopy(ours)), hf_loss)
        candidates["transformers ViTMAE (sdpa, compiled)"] = (torch.compile(copy.deepcopy(vitmae)), hf_loss)
    return candidates


def finetune_candidates(config: MAEConfig, args: argparse.Namespace) -> dict[str, tuple[nn.Module, Callable]]:
    import timm

    torch.manual_seed(0)
    labels = torch.randint(0, 1000, (args.batch_size,))
    ours = MAEForImageClassification(MAEConfig(**{**config.to_dict(), "num_labels": 1000, "drop_path_rate": 0.1}))
    timm_vit = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        img_size=config.image_size,
        patch_size=config.patch_size,
        embed_dim=config.hidden_size,
        depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        global_pool="avg",
        fc_norm=True,
        drop_path_rate=0.1,
    )

    def ours_loss(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=images, labels=labels.to(images.device)).loss

    def timm_loss(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(images).float(), labels.to(images.device))

    candidates = {"mae_hf classifier (sdpa)": (ours, ours_loss), "timm ViT (fused attention)": (timm_vit, timm_loss)}
    if args.compile:
        candidates["mae_hf classifier (sdpa, compiled)"] = (torch.compile(copy.deepcopy(ours)), ours_loss)
    return candidates


def write_synthetic_jpeg(path: str, seed: int, size: tuple[int, int] = (500, 375)) -> None:
    """A photo-like JPEG (smooth colour gradients, an object, sensor noise; quality 90): it decodes like a photo."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    period = rng.uniform(30, 120, 3)
    pixels = np.stack([127 + 100 * np.sin(x / period[c] + y / (2 * period[c]) + phase[c]) for c in range(3)], -1)
    cx, cy, radius = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(30, 120)
    pixels[(x - cx) ** 2 + (y - cy) ** 2 < radius**2] = rng.uniform(0, 255, 3)
    pixels = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def make_jpeg_folder(folder: str, count: int) -> None:
    """``count`` synthetic JPEGs in ``folder`` (kept if already there), written by all cores."""
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, f"{index:06d}.jpg") for index in range(count)]
    missing = [(path, index) for index, path in enumerate(paths) if not os.path.exists(path)]
    with Pool() as pool:
        pool.starmap(write_synthetic_jpeg, missing, chunksize=64)


def time_end_to_end(
    config: MAEConfig, args: argparse.Namespace, device: torch.device, flops_per_image: float, peak_flops: float
) -> Result:
    """Pre-training from the files of ``args.data_dir``, as ``scripts/pretrain.py`` reads them: the same loaders
    and the same on-device steps, with this project's model (compiled under ``--compile``). Steps are timed only
    after ``--warmup`` steps (worker start-up, compilation); one epoch must cover warm-up and timed steps."""
    with tempfile.TemporaryDirectory() as output_dir:
        argv = ["--train_dir", args.data_dir, "--output_dir", output_dir, "--seed", "0"]
        argv += ["--per_device_train_batch_size", str(args.batch_size), "--dataloader_num_workers", str(args.workers)]
        argv += ["--decode_on_device"] if args.decode_on_device else []
        data_args = build_pretrain_parser().parse_args(argv)
        loaders, _ = build_pretrain_data(data_args, config.image_size, num_processes=1, process_index=0)
    needed = args.warmup + args.steps * args.rounds
    if len(loaders) < needed:
        raise SystemExit(f"--data_dir has {len(loaders)} batches of {args.batch_size}; {needed} are needed "
                         f"(--make_jpegs {needed * args.batch_size}).")
    torch.manual_seed(0)
    model = MAEForPreTraining(config)
    model = torch.compile(model) if args.compile else model
    no_images = torch.empty(0, device=device)  # each step gets its batch
    timer = StepTimer(model, lambda m, images: m(pixel_values=images).loss, no_images, args.precision)

    loader = loaders.epoch_loader(0)
    if args.decode_on_device:
        loader = DeviceDecodingLoader(loader, device, config.image_size)
    batches: Iterator[dict] = iter(loader)

    def pixels(batch: dict) -> torch.Tensor:
        return batch["pixel_values"].to(device, non_blocking=True)

    for _ in range(args.warmup):
        timer.step(normalize_images(pixels(next(batches))))
    per_round = []
    for _ in range(args.rounds):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            timer.step(normalize_images(pixels(next(batches))))
        synchronize(device)
        per_round.append((time.perf_counter() - start) / args.steps)
    median = statistics.median(per_round)
    throughput = args.batch_size / median
    decoder = "device" if args.decode_on_device else "PIL"
    name = f"mae_hf end to end from files ({args.workers} workers, {decoder} decode)"
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    mfu = throughput * flops_per_image / peak_flops if peak_flops else None
    timer.release()
    rounds_ms = [round(1000 * value, 2) for value in per_round]
    return Result(name, throughput, 1000 * median, rounds_ms, peak, mfu, float(timer.loss))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="cpu-small", help="architecture to time")
    parser.add_argument("--task", choices=["pretrain", "finetune"], default="pretrain", help="which training step")
    parser.add_argument("--batch_size", type=int, default=32, help="images per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round and implementation")
    parser.add_argument(
        "--rounds", type=int, default=5, help="timed rounds; the median round counts (on CPU they alternate)"
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matrix products for fp32 on GPU")
    parser.add_argument("--only", nargs="*", help="names (substrings) of the implementations to time")
    parser.add_argument("--output", help="write the results as JSON to this file")
    parser.add_argument("--data_dir", help="also time pre-training end to end from the images in this folder")
    parser.add_argument("--make_jpegs", type=int, default=0, help="first write this many synthetic JPEGs there")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="data-loader processes")
    parser.add_argument(
        "--decode_on_device", action="store_true", help="end to end: decode and crop JPEGs in the step"
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    config = build_config(args.model)
    args.image_size = config.image_size
    if args.task == "pretrain":
        flops, candidates = pretraining_flops_per_image(config, 0.75), pretraining_candidates(config, args)
    else:
        flops, candidates = finetune_flops_per_image(config), finetune_candidates(config, args)
    peak = matmul_peak_flops(device)
    if args.only:
        candidates = {n: c for n, c in candidates.items() if any(part in n for part in args.only)}
    # End to end is compared with the same model's step on random data in the same run.
    model_only_name = "mae_hf (sdpa, compiled)" if args.compile else "mae_hf (sdpa)"
    if args.data_dir and model_only_name not in candidates:
        parser.error(f"--data_dir needs {model_only_name!r} among the timed implementations; widen --only")
    results = time_candidates(candidates, args, device, flops, peak)
    if args.data_dir:
        if args.task != "pretrain":
            parser.error("--data_dir times pre-training; drop --task finetune")
        if args.make_jpegs:
            make_jpeg_folder(args.data_dir, args.make_jpegs)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        end_to_end = time_end_to_end(config, args, device, flops, peak)
        model_only = next(r for r in results if r.name == model_only_name)
        results.append(end_to_end)

    project = [r for r in results if r.name.startswith("mae_hf") and "end to end" not in r.name]
    anchors = [r for r in results if not r.name.startswith("mae_hf")]
    best_project = max(project, key=lambda r: r.images_per_second) if project else None
    best_anchor = max(anchors, key=lambda r: r.images_per_second) if anchors else None
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    report = {
        "device": device_name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "task": args.task,
        "model": args.model,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "gflop_per_image": flops / 1e9,
        "matmul_tflops": peak / 1e12,
        "results": [asdict(r) for r in results],
    }
    if args.data_dir:
        report["end_to_end_fraction_of_model_only"] = end_to_end.images_per_second / model_only.images_per_second
        report["end_to_end_vs"] = model_only.name
    if best_project and best_anchor:
        report["speedup_vs_best_anchor"] = best_project.images_per_second / best_anchor.images_per_second
        report["best_anchor"] = best_anchor.name
        report["best_project"] = best_project.name
    # The CPU acceptance figure: the fast path's step time over transformers' ViTMAEForPreTraining as shipped (sdpa).
    vitmae = next((r for r in results if r.name == "transformers ViTMAE (sdpa)"), None)
    if best_project and vitmae:
        report["step_time_vs_vitmae_sdpa"] = best_project.step_ms / vitmae.step_ms

    print(f"\n{args.task} {args.model}, batch {args.batch_size}, {args.precision}, {device_name}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{flops / 1e9:.1f} GFLOP/image/step, matmul peak {peak / 1e12:.2f} TFLOP/s")
    anchor_name = best_anchor.name if best_anchor else "-"
    print(f"| implementation | img/s | step ms | peak GiB | MFU | ratio to {anchor_name} |")
    print("|---|---|---|---|---|---|")
    for r in results:
        ratio = r.images_per_second / best_anchor.images_per_second if best_anchor else math.nan
        memory = f"{r.peak_memory_gib:.1f}" if r.peak_memory_gib is not None else "-"
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None and device.type == "cuda" else "-"
        print(f"| {r.name} | {r.images_per_second:.1f} | {r.step_ms:.1f} | {memory} | {mfu} | {ratio:.2f}× |")
    if "step_time_vs_vitmae_sdpa" in report:
        ratio = report["step_time_vs_vitmae_sdpa"]
        print(f"step time of {best_project.name} / transformers ViTMAE (sdpa): {ratio:.3f}")
    if args.data_dir:
        fraction = report["end_to_end_fraction_of_model_only"]
        print(f"end to end from files: {100 * fraction:.1f} % of the model-only step of {model_only.name}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
