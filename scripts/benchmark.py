#!/usr/bin/env python
"""Training-step throughput of this project's MAE against transformers' ViTMAE and the reference on timm blocks.

One optimizer step = forward + backward + fused AdamW (betas 0.9/0.95) on random images, timed after warm-up, every
implementation in the same process with the same batch and precision. Reports images/s, step time, peak GPU
memory and, on GPU, model FLOPs utilisation against a bf16 8192³ matmul measured in the same run.

    python scripts/benchmark.py                                    # CPU, small config, fp32
    python scripts/benchmark.py --model vit-base-patch16 --batch_size 256 --precision bf16 --compile   # GPU
    python scripts/benchmark.py --task finetune --model vit-base-patch16 --batch_size 256 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mae_hf import MAEConfig, MAEForImageClassification, MAEForPreTraining
from mae_hf.convert import mae_to_reference_state_dict, vitmae_from_mae
from mae_hf.timm_reference import ReferenceMAE

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
    "vit-base-patch16": "mae-vit-base-patch16",
    "vit-large-patch16": "mae-vit-large-patch16",
    "vit-huge-patch14": "mae-vit-huge-patch14",
}


@dataclass
class Result:
    name: str
    images_per_second: float
    step_ms: float
    peak_memory_gib: float | None
    mfu: float | None
    loss: float


def build_config(name: str) -> MAEConfig:
    spec = MODELS[name]
    if isinstance(spec, str):
        return MAEConfig.from_preset(spec, norm_pix_loss=True)
    return MAEConfig(**spec, norm_pix_loss=True)


def pretraining_flops_per_image(config: MAEConfig, mask_ratio: float) -> float:
    """Analytic FLOPs of one training step per image (backward = 2 x forward), matrix products only."""
    patches = config.num_patches
    visible = 1 + int(patches * (1 - mask_ratio))
    decoded = 1 + patches

    def block(tokens: int, width: int, hidden: int) -> float:
        linear = 2 * tokens * (width * 3 * width + width * width + 2 * width * hidden)
        attention = 2 * 2 * tokens * tokens * width
        return linear + attention

    patch_dim = config.patch_size**2 * config.num_channels
    forward = 2 * patches * patch_dim * config.hidden_size
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


def time_training_step(
    name: str,
    model: nn.Module,
    loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    args: argparse.Namespace,
    device: torch.device,
    flops_per_image: float,
    peak_flops: float | None,
) -> Result:
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    # Fused AdamW for every implementation, as the method in the performance notes prescribes.
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), fused=True)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step() -> torch.Tensor:
        with autocast:
            loss = loss_fn(model, images)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    throughput = args.batch_size / seconds
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    mfu = throughput * flops_per_image / peak_flops if peak_flops else None
    model.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Result(name, throughput, seconds * 1000, peak, mfu, float(loss))


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
        candidates["mae_hf (sdpa, compiled)"] = (torch.compile(ours), hf_loss)
        candidates["transformers ViTMAE (sdpa, compiled)"] = (torch.compile(vitmae), hf_loss)
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
        candidates["mae_hf classifier (sdpa, compiled)"] = (torch.compile(ours), ours_loss)
    return candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="cpu-small", help="architecture to time")
    parser.add_argument("--task", choices=["pretrain", "finetune"], default="pretrain", help="which training step")
    parser.add_argument("--batch_size", type=int, default=32, help="images per step")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per implementation")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matrix products for fp32 on GPU")
    parser.add_argument("--only", nargs="*", help="names (substrings) of the implementations to time")
    parser.add_argument("--output", help="write the results as JSON to this file")
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
    results = []
    for name, (model, loss_fn) in candidates.items():
        if args.only and not any(part in name for part in args.only):
            continue
        results.append(time_training_step(name, model, loss_fn, args, device, flops, peak))
        print(f"{name:40s} {results[-1].images_per_second:10.1f} img/s", flush=True)

    project = [r for r in results if r.name.startswith("mae_hf")]
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
        "gflop_per_image": flops / 1e9,
        "matmul_tflops": peak / 1e12,
        "results": [asdict(r) for r in results],
    }
    if best_project and best_anchor:
        report["speedup_vs_best_anchor"] = best_project.images_per_second / best_anchor.images_per_second
        report["best_anchor"] = best_anchor.name
        report["best_project"] = best_project.name

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
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
