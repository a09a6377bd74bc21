#!/usr/bin/env python
"""The demo's results table: linear probe and fine-tune from MAE and from a random encoder, per seed, with the
acceptance bars checked, plus ``pipeline`` predictions of the fine-tuned model on a few validation images.

    python scripts/demo_report.py demo_output     # reads demo_output/downstream/seed*/*/all_results.json

Writes ``results.md`` and ``results.json`` into the demo folder (next to ``mae-digits/reconstruction.png``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
from typing import Any

RUNS = {
    "linprobe-mae": "Linear probe, MAE encoder",
    "linprobe-random": "Linear probe, random encoder",
    "finetune-mae": "Fine-tune from MAE",
    "finetune-random": "Fine-tune from random init",
}


def collect(output_dir: str) -> dict[str, dict[int, dict[str, Any]]]:
    """``{run: {seed: final evaluation}}`` from every finished downstream run."""
    found: dict[str, dict[int, dict[str, Any]]] = {run: {} for run in RUNS}
    for path in sorted(glob.glob(os.path.join(output_dir, "downstream", "seed*", "*", "all_results.json"))):
        run = os.path.basename(os.path.dirname(path))
        seed = int(os.path.basename(os.path.dirname(os.path.dirname(path))).removeprefix("seed"))
        with open(path, encoding="utf-8") as handle:
            results = json.load(handle)
        if run in found and results.get("eval"):
            found[run][seed] = {**results["eval"], "train_runtime_s": results["train_runtime_s"]}
    return found


def check_bars(
    runs: dict[str, dict[int, dict[str, Any]]],
    finetune_min: float,
    finetune_margin: float,
    linprobe_min: float,
    linprobe_margin: float,
    linprobe_seed_margin: float,
) -> dict[str, dict[str, Any]]:
    """The acceptance bars on mean top-1 over the seeds run by both arms (and per seed for the linear probe)."""

    def top1(run: str, seeds: list[int]) -> list[float]:
        return [runs[run][seed]["top1"] for seed in seeds]

    bars = {}
    for kind, minimum, margin in (
        ("finetune", finetune_min, finetune_margin),
        ("linprobe", linprobe_min, linprobe_margin),
    ):
        seeds = sorted(set(runs[f"{kind}-mae"]) & set(runs[f"{kind}-random"]))
        if not seeds:
            continue
        mae, random = top1(f"{kind}-mae", seeds), top1(f"{kind}-random", seeds)
        gaps = [a - b for a, b in zip(mae, random)]
        bar = {
            "seeds": seeds,
            "mae_mean_top1": statistics.mean(mae),
            "random_mean_top1": statistics.mean(random),
            "mean_gap": statistics.mean(gaps),
            "min_seed_gap": min(gaps),
            "required_mae_top1": minimum,
            "required_gap": margin,
        }
        passed = bar["mae_mean_top1"] >= minimum and bar["mean_gap"] >= margin
        if kind == "linprobe":
            bar["required_seed_gap"] = linprobe_seed_margin
            passed = passed and bar["min_seed_gap"] >= linprobe_seed_margin
        bar["passed"] = passed
        bars[kind] = bar
    return bars


def pipeline_predictions(model_dir: str, data_dir: str, count: int) -> list[dict[str, Any]]:
    """``pipeline("image-classification")`` of the saved folder on ``count`` validation images (one per class
    first), with the dataset's class names as labels."""
    from transformers import pipeline

    classes = sorted(os.listdir(data_dir))
    images = []
    for round_index in range(count):
        folder = os.path.join(data_dir, classes[round_index % len(classes)])
        files = sorted(os.listdir(folder))
        images.append(os.path.join(folder, files[(round_index // len(classes)) % len(files)]))
    classifier = pipeline("image-classification", model=model_dir, trust_remote_code=True, device="cpu")
    predictions = []
    for path, result in zip(images, classifier(images, top_k=3)):
        predictions.append(
            {
                "image": os.path.relpath(path, data_dir),
                "true_label": os.path.basename(os.path.dirname(path)),
                "top3": [{"label": r["label"], "score": round(float(r["score"]), 4)} for r in result],
            }
        )
    return predictions


def markdown(report: dict[str, Any]) -> str:
    runs, seeds = report["runs"], report["seeds"]
    lines = [
        "# MAE demo results (digits, 16 px)",
        "",
        f"Pre-training: {report['pretrain'].get('epoch', 0):.0f} epochs, final loss "
        f"{report['pretrain'].get('final_loss') or float('nan'):.4f}, kNN top-1 "
        f"{report['pretrain'].get('knn_top1') or float('nan'):.3f} "
        "(reconstructions: `mae-digits/reconstruction.png`).",
        "",
        "Validation top-1 (300 images) of the final epoch; the same recipe for MAE and random initialisation.",
        "",
        "| run | " + " | ".join(f"seed {s}" for s in seeds) + " | mean top-1 | mean top-5 |",
        "|---|" + "---|" * len(seeds) + "---|---|",
    ]
    for run, title in RUNS.items():
        values = [runs[run].get(seed) for seed in seeds]
        done = [v for v in values if v]
        if not done:
            continue
        cells = [f"{100 * v['top1']:.1f}" if v else "–" for v in values]
        mean1 = statistics.mean(v["top1"] for v in done)
        mean5 = statistics.mean(v["top5"] for v in done)
        lines.append(f"| {title} | " + " | ".join(cells) + f" | **{100 * mean1:.1f}** | {100 * mean5:.1f} |")
    lines += [
        "",
        "| bar | MAE mean | random mean | gap (min per seed) | required | passed |",
        "|---|---|---|---|---|---|",
    ]
    for kind, bar in report["bars"].items():
        required = f"≥ {100 * bar['required_mae_top1']:.0f}%, gap ≥ {100 * bar['required_gap']:.0f}"
        if "required_seed_gap" in bar:
            required += f" (each seed ≥ {100 * bar['required_seed_gap']:.0f})"
        lines.append(
            f"| {'fine-tune' if kind == 'finetune' else 'linear probe'} | {100 * bar['mae_mean_top1']:.1f} | "
            f"{100 * bar['random_mean_top1']:.1f} | {100 * bar['mean_gap']:.1f} ({100 * bar['min_seed_gap']:.1f}) | "
            f"{required} | {'yes' if bar['passed'] else 'NO'} |"
        )
    if report.get("predictions"):
        lines += ["", "`pipeline(\"image-classification\")` on validation images (fine-tuned from MAE, seed "
                  f"{seeds[0]}):", "", "| image | true | top-3 |", "|---|---|---|"]  # fmt: skip
        for item in report["predictions"]:
            top3 = ", ".join(f"{r['label']} ({r['score']:.2f})" for r in item["top3"])
            lines.append(f"| {item['image']} | {item['true_label']} | {top3} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="The demo folder (with mae-digits/ and downstream/).")
    parser.add_argument(
        "--data_dir", default=None, help="Validation images; default OUTPUT_DIR/data/digits/validation."
    )
    parser.add_argument("--num_predictions", type=int, default=5, help="Validation images shown through pipeline.")
    parser.add_argument("--finetune_min", type=float, default=0.97, help="Bar: mean top-1 of fine-tune from MAE.")
    parser.add_argument("--finetune_margin", type=float, default=0.04, help="Bar: MAE minus random, fine-tune.")
    parser.add_argument("--linprobe_min", type=float, default=0.96, help="Bar: mean top-1 of linear probe (MAE).")
    parser.add_argument("--linprobe_margin", type=float, default=0.03, help="Bar: MAE minus random, linear probe.")
    parser.add_argument("--linprobe_seed_margin", type=float, default=0.02, help="Bar: the same, every seed.")
    args = parser.parse_args()
    runs = collect(args.output_dir)
    seeds = sorted({seed for per_seed in runs.values() for seed in per_seed})
    pretrain_path = os.path.join(args.output_dir, "mae-digits", "train_results.json")
    pretrain = json.load(open(pretrain_path, encoding="utf-8")) if os.path.exists(pretrain_path) else {}
    report: dict[str, Any] = {
        "seeds": seeds,
        "runs": runs,
        "bars": check_bars(
            runs,
            args.finetune_min,
            args.finetune_margin,
            args.linprobe_min,
            args.linprobe_margin,
            args.linprobe_seed_margin,
        ),
        "pretrain": {key: pretrain.get(key) for key in ("epoch", "final_loss", "knn_top1", "train_runtime_s")},
    }
    model_dir = os.path.join(args.output_dir, "downstream", f"seed{seeds[0]}", "finetune-mae") if seeds else None
    data_dir = args.data_dir or os.path.join(args.output_dir, "data", "digits", "validation")
    if model_dir and os.path.isfile(os.path.join(model_dir, "config.json")) and args.num_predictions:
        report["predictions"] = pipeline_predictions(model_dir, data_dir, args.num_predictions)
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    text = markdown(report)
    with open(os.path.join(args.output_dir, "results.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
