#!/usr/bin/env python
"""Evaluate a classifier folder (top-1, top-5, loss) or any encoder (``--knn``) on a dataset split; JSON results.

    python scripts/evaluate.py --model_name_or_path out/ --data_dir imgs/val --output_file eval.json
    accelerate launch scripts/evaluate.py --model_name_or_path out/ --dataset_name NAME --split validation
    python scripts/evaluate.py --knn --model_name_or_path mae-pretrained/ --knn_train_dir imgs/train --data_dir imgs/val

The evaluation transform is the reference's (shorter side to input_size / 0.875, bicubic, centre crop); the model
runs in ``eval()`` mode without gradients. Under several processes each one reads its shard and Accelerate's
``gather_for_metrics`` drops the padding, so every image counts exactly once. Top-k accuracies come from the
``evaluate`` module shipped in ``mae_hf.metrics`` (offline).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import torch
from accelerate import Accelerator

from mae_hf import MAEForImageClassification, MAEModel
from mae_hf.cli import OptionParser
from mae_hf.training.args import OptionError
from mae_hf.training.classification import build_sharded_eval_loader, class_names, evaluate_classifier
from mae_hf.training.data import (
    build_eval_loader,
    build_eval_transform,
    detect_image_column,
    detect_label_column,
    load_image_datasets,
    prepare_split,
)
from mae_hf.training.knn import extract_features, knn_top1


def build_parser() -> argparse.ArgumentParser:
    parser = OptionParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="Classifier (or, with --knn, any MAE) folder/id.")
    parser.add_argument("--data_dir", default=None, help="Image folder (class sub-folders) to evaluate on.")
    parser.add_argument("--dataset_name", default=None, help="A 🤗 datasets name or local dataset instead.")
    parser.add_argument("--dataset_config_name", default=None, help="Its configuration.")
    parser.add_argument("--split", default="validation", help="Split of --dataset_name to evaluate.")
    parser.add_argument("--image_column_name", default=None, help="Image column (default: detected).")
    parser.add_argument("--label_column_name", default=None, help="Label column (default: detected).")
    parser.add_argument("--input_size", type=int, default=None, help="Crop size; default: the model's image_size.")
    parser.add_argument("--batch_size", type=int, default=128, help="Images per process per forward pass.")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Only the first N images.")
    parser.add_argument("--cache_dir", default=None, help="datasets cache directory.")
    parser.add_argument("--mixed_precision", default=None, choices=["no", "bf16", "fp16"], help="Autocast dtype.")
    parser.add_argument("--output_file", default=None, help="JSON results (default: eval_<split>.json in the folder).")
    group = parser.add_argument_group("kNN evaluation of an encoder")
    group.add_argument("--knn", action="store_true", help="kNN top-1 of frozen mean-pooled encoder features.")
    group.add_argument("--knn_train_dir", default=None, help="Labelled image folder used as the kNN memory.")
    group.add_argument("--knn_k", type=int, default=20, help="Neighbours.")
    group.add_argument("--knn_temperature", type=float, default=0.07, help="Similarity temperature of the vote.")
    return parser


def load_split(args: argparse.Namespace, directory: str | None, split: str):
    if directory:
        return load_image_datasets(train_dir=directory, cache_dir=args.cache_dir)["train"]
    splits = load_image_datasets(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_split=split,
        cache_dir=args.cache_dir,
    )
    return splits["train"]


def label_remapping(dataset_names: list[str], label2id: dict[str, int]) -> list[int] | None:
    """Dataset class index → model class index when the names match the model's labels (any order)."""
    if all(name in label2id for name in dataset_names):
        return [int(label2id[name]) for name in dataset_names]
    return None


def main(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.data_dir and not args.dataset_name:
        parser.error("No data: pass --data_dir IMAGE_FOLDER or --dataset_name NAME.")
    if args.knn and not args.knn_train_dir:
        parser.error("--knn needs --knn_train_dir (labelled images for the kNN memory).")
    for name in ("data_dir", "knn_train_dir"):
        path = getattr(args, name)
        if path and not os.path.isdir(path):
            parser.error(f"--{name}: {path!r} is not a directory.")
    if args.batch_size <= 0:
        parser.error("--batch_size must be a positive integer.")

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    with accelerator.main_process_first():
        raw = load_split(args, args.data_dir, args.split)
    image_column = detect_image_column(raw, args.image_column_name)
    label_column = detect_label_column(raw, args.label_column_name)
    if label_column is None:
        parser.error("The evaluation data has no labels: use class sub-folders or pass --label_column_name.")

    if args.knn:
        results = knn_evaluation(args, accelerator, raw, image_column, label_column)
    else:
        model = MAEForImageClassification.from_pretrained(
            args.model_name_or_path, **({"image_size": args.input_size} if args.input_size else {})
        )
        input_size = model.config.image_size
        # strict: an unreadable image stops the evaluation naming the file, instead of changing the denominator
        dataset = prepare_split(
            raw, build_eval_transform(input_size), image_column, label_column, args.max_eval_samples, strict=True
        )
        mapping = label_remapping(class_names(raw, label_column), model.config.label2id)
        if mapping is not None:  # the model's class indices, whatever the order of the dataset's classes
            lookup = torch.tensor(mapping)
            dataset = _RemappedLabels(dataset, lookup)
        model = accelerator.prepare(model)
        loader = build_sharded_eval_loader(accelerator, dataset, args.batch_size)
        metrics = evaluate_classifier(accelerator, model, loader)
        results = {
            **metrics,
            "model": args.model_name_or_path,
            "data": args.data_dir or f"{args.dataset_name}:{args.split}",
            "input_size": input_size,
            "num_processes": accelerator.num_processes,
        }
    if accelerator.is_main_process:
        output = args.output_file or os.path.join(
            args.model_name_or_path if os.path.isdir(args.model_name_or_path) else ".",
            f"eval_{'knn_' if args.knn else ''}{args.split if not args.data_dir else 'data'}.json",
        )
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
        accelerator.print(json.dumps(results, indent=2))
        accelerator.print(f"Written to {output}")
    accelerator.end_training()
    return results


class _RemappedLabels(torch.utils.data.Dataset):
    """A view of a transformed dataset whose ``labels`` are mapped to the model's class indices."""

    def __init__(self, dataset, lookup: torch.Tensor) -> None:
        self.dataset, self.lookup = dataset, lookup

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        example = dict(self.dataset[index])
        example["labels"] = int(self.lookup[int(example["labels"])])
        return example


def knn_evaluation(args: argparse.Namespace, accelerator: Accelerator, queries_raw, image_column, label_column):
    """kNN top-1 of any encoder (pre-training or classifier folder): mean-pooled features, cosine, weighted vote.
    Runs on the main process (the memory must be complete there)."""
    encoder = MAEModel.from_pretrained(args.model_name_or_path).to(accelerator.device)
    input_size = args.input_size or encoder.config.image_size
    transform = build_eval_transform(input_size)
    memory_raw = load_split(args, args.knn_train_dir, "train")
    memory_columns = detect_image_column(memory_raw), detect_label_column(memory_raw)
    memory = prepare_split(memory_raw, transform, *memory_columns, strict=True)
    queries = prepare_split(queries_raw, transform, image_column, label_column, args.max_eval_samples, strict=True)
    top1 = None
    if accelerator.is_main_process:
        with accelerator.autocast():
            train = extract_features(encoder, build_eval_loader(memory, args.batch_size), accelerator.device)
            test = extract_features(encoder, build_eval_loader(queries, args.batch_size), accelerator.device)
        top1 = knn_top1(*train, *test, k=args.knn_k, temperature=args.knn_temperature)
    return {
        "knn_top1": top1,
        "knn_k": args.knn_k,
        "num_samples": len(queries),
        "model": args.model_name_or_path,
        "input_size": input_size,
    }


if __name__ == "__main__":
    try:
        main()
    except OptionError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
