"""The fast path: the compiled model computes the same loss, predictions and gradients as the plain fp32 path, the
plain fp32 path equals the reference, and the benchmark that measures it runs and reports what it claims."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import REPO_ROOT, offline_env

from mae_hf import MAEConfig, MAEForPreTraining
from mae_hf.convert import mae_to_reference_state_dict
from mae_hf.modeling_mae_hf import gather_tokens, masking_indices
from mae_hf.timm_reference import ReferenceMAE
from mae_hf.training.checkpoint import TrainingProgress, list_checkpoints
from mae_hf.training.logging import JsonlLogger, read_jsonl
from mae_hf.training.loop import LoopSettings, NonFiniteLossError, StepFlags, run_training_loop


def small_config() -> MAEConfig:
    return MAEConfig(
        image_size=16,
        patch_size=4,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=4,
        norm_pix_loss=True,
    )


def test_compiled_model_matches_the_plain_fp32_path():
    torch.manual_seed(0)
    model = MAEForPreTraining(small_config())
    images, noise = torch.randn(4, 3, 16, 16), torch.rand(4, 16)

    plain = model(images, noise=noise)
    plain.loss.backward()
    plain_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    compiled = torch.compile(model, fullgraph=True)  # fullgraph: masking and gathers compile without breaks
    fast = compiled(images, noise=noise)
    fast.loss.backward()
    assert torch.equal(fast.mask, plain.mask) and torch.equal(fast.ids_restore, plain.ids_restore)
    torch.testing.assert_close(fast.loss, plain.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.logits, plain.logits, atol=1e-5, rtol=0)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)


def test_embedding_only_the_kept_patches_gives_the_reference_tokens_bit_for_bit():
    torch.manual_seed(0)
    model = MAEForPreTraining(small_config()).mae
    images, noise = torch.randn(4, 3, 16, 16), torch.rand(4, 16)
    ids_keep, _, _ = masking_indices(4, 16, 0.75, noise)
    every_patch = model.patch_embed(images)  # the reference: embed all 16 patches, then drop 12
    assert torch.equal(model.patch_embed(images, ids_keep), gather_tokens(every_patch, ids_keep))


def test_plain_fp32_forward_equals_the_reference_bit_for_bit():
    torch.manual_seed(0)
    config = small_config()
    ours = MAEForPreTraining(config).eval()
    reference = ReferenceMAE(
        img_size=16,
        patch_size=4,
        embed_dim=64,
        depth=2,
        num_heads=4,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=4,
        norm_pix_loss=True,
    ).eval()
    reference.load_state_dict(mae_to_reference_state_dict(ours.state_dict()))
    images, noise = torch.randn(4, 3, 16, 16), torch.rand(4, 16)
    with torch.no_grad():
        reference_loss, reference_pred, reference_mask = reference(images, 0.75, noise)
        out = ours(images, noise=noise)
    assert torch.equal(out.mask, reference_mask)
    assert torch.equal(out.logits, reference_pred)
    assert torch.equal(out.loss, reference_loss)


@pytest.mark.parametrize("task", ["pretrain", "finetune"])
def test_benchmark_runs_every_implementation_and_reports_ratios(tmp_path, task):
    output = tmp_path / "benchmark.json"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), "--task", task]
    command += ["--batch_size", "4", "--steps", "1", "--rounds", "2", "--warmup", "1", "--output", str(output)]
    run = subprocess.run(command, env=offline_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(output.read_text())
    names = [result["name"] for result in report["results"]]
    expected = 3 if task == "pretrain" else 2  # ours, ViTMAE, reference on timm / ours, timm ViT
    assert len(names) == expected and names[0].startswith("mae_hf")
    for result in report["results"]:
        assert len(result["step_ms_per_round"]) == 2
        assert sorted(result["step_ms_per_round"])[0] <= result["step_ms"] <= sorted(result["step_ms_per_round"])[1]
        assert result["images_per_second"] == pytest.approx(4 / (result["step_ms"] / 1000), rel=1e-6)
        assert result["loss"] == result["loss"] and result["loss"] > 0  # finite, positive
    best_anchor = max(r["images_per_second"] for r in report["results"] if not r["name"].startswith("mae_hf"))
    assert report["speedup_vs_best_anchor"] == pytest.approx(report["results"][0]["images_per_second"] / best_anchor)
    assert report["gflop_per_image"] > 0 and report["matmul_tflops"] > 0
    if task == "pretrain":
        vitmae = next(r for r in report["results"] if r["name"] == "transformers ViTMAE (sdpa)")
        assert report["step_time_vs_vitmae_sdpa"] == pytest.approx(report["results"][0]["step_ms"] / vitmae["step_ms"])
    assert "| implementation |" in run.stdout



@pytest.mark.parametrize("decode", ["PIL", "device"])
def test_benchmark_times_pretraining_end_to_end_from_jpeg_files(tmp_path, decode):
    output, data_dir = tmp_path / "benchmark.json", tmp_path / "jpegs"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), "--only", "mae_hf (sdpa)"]
    command += ["--batch_size", "4", "--steps", "1", "--rounds", "2", "--warmup", "1", "--output", str(output)]
    command += ["--data_dir", str(data_dir), "--make_jpegs", "12", "--workers", "1"]
    command += ["--decode_on_device"] if decode == "device" else []
    run = subprocess.run(command, env=offline_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(list(data_dir.glob("*.jpg"))) == 12
    report = json.loads(output.read_text())
    model_only, end_to_end = report["results"]
    assert model_only["name"] == "mae_hf (sdpa)" == report["end_to_end_vs"]
    assert end_to_end["name"] == f"mae_hf end to end from files (1 workers, {decode} decode)"
    assert end_to_end["loss"] > 0 and len(end_to_end["step_ms_per_round"]) == 2
    fraction = end_to_end["images_per_second"] / model_only["images_per_second"]
    assert report["end_to_end_fraction_of_model_only"] == pytest.approx(fraction)
    assert "% of the model-only step" in run.stdout

# ---------------------------------------------------------------------------------------------------------------
# The training step does not wait for the device
# ---------------------------------------------------------------------------------------------------------------

HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")  # each waits for the device


def _mae_loop(tmp_path: Path, total_steps: int, fused: bool = True, **settings):
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = MAEForPreTraining(small_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), fused=fused)
    model, optimizer = accelerator.prepare(model, optimizer)
    defaults = dict(logging_steps=4, disable_tqdm=True)
    loop_settings = LoopSettings(
        output_dir=str(tmp_path),
        total_steps=total_steps,
        schedule_steps_per_epoch=100,
        steps_in_epoch=100,
        base_lr=1e-3,
        **{**defaults, **settings},
    )
    generator = torch.Generator().manual_seed(0)
    batches = [{"pixel_values": torch.randn(4, 3, 16, 16, generator=generator)} for _ in range(8)]
    return accelerator, model, optimizer, loop_settings, lambda epoch, skip: iter(batches[skip:])


def test_the_step_reads_nothing_from_the_device_between_logging_steps(tmp_path, monkeypatch):
    accelerator, model, optimizer, settings, loader = _mae_loop(tmp_path, 8, clip_grad=1.0)
    assert StepFlags(accelerator, optimizer).skips_on_device  # fused AdamW: the skip decision stays on the device
    step = {"n": 0}
    reads: list[tuple[int, str]] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def recording(self, *args, _original=original, _name=name, **kwargs):
            reads.append((step["n"], _name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, recording)

    def compute_loss(batch):
        step["n"] += 1
        return model(pixel_values=batch["pixel_values"]).loss

    run_training_loop(
        accelerator, model, optimizer, loader, compute_loss, TrainingProgress(), settings, JsonlLogger("", False)
    )
    monkeypatch.undo()
    assert step["n"] == 8 and reads, "the loop must read the loss at logging steps"
    assert {n for n, _ in reads} <= {4, 8}, f"host reads outside logging steps 4 and 8: {reads}"


@pytest.mark.parametrize("logging_steps", [1, 4])
def test_fused_adamw_skips_nonfinite_steps_on_the_device_then_stops(tmp_path, logging_steps):
    accelerator, model, optimizer, settings, loader = _mae_loop(
        tmp_path, 8, logging_steps=logging_steps, max_nonfinite_steps=3, checkpointing_steps=2
    )
    calls = {"n": 0}
    snapshots = []

    def compute_loss(batch):
        calls["n"] += 1
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        loss = model(pixel_values=batch["pixel_values"]).loss
        # Step 3 is NaN (skipped, then training goes on); from step 5 on every loss is infinite.
        return loss * float("nan") if calls["n"] == 3 or calls["n"] >= 5 else loss

    progress = TrainingProgress()
    jsonl = JsonlLogger(str(tmp_path / "log.jsonl"))
    with pytest.raises(NonFiniteLossError, match="last good checkpoint .*checkpoint_4 is intact"):
        run_training_loop(accelerator, model, optimizer, loader, compute_loss, progress, settings, jsonl)
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert same(snapshots[2], snapshots[3]) and not same(snapshots[3], snapshots[4])  # step 3 changed nothing
    assert same(snapshots[4], model.state_dict())  # nor did the non-finite steps 5, 6, 7 ...
    assert optimizer.optimizer.state[model.mae.cls_token]["step"] == 3  # AdamW counted steps 1, 2 and 4 only
    skipped = [r["step"] for r in read_jsonl(str(tmp_path / "log.jsonl")) if r.get("nonfinite_loss_skipped")]
    # Read every step: the third non-finite step in a row (7) stops the run. Read at logging steps (4, 8): the
    # streak is found at step 8, the run stops there; no checkpoint was written during it either way.
    assert skipped == ([3, 5, 6, 7] if logging_steps == 1 else [3, 5, 6, 7, 8])
    assert progress.global_step == (6 if logging_steps == 1 else 7)
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["checkpoint_2", "checkpoint_4"]
