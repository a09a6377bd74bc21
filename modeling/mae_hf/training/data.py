"""Images through 🤗 datasets: loading (image folders, Hub/local datasets, streaming), RGB conversion, the
reference's torchvision v2 transforms, and data loaders whose order depends only on (seed, epoch)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, IterableDataset, load_dataset
from datasets import Image as ImageFeature
from datasets.distributed import split_dataset_by_node
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.transforms import v2

from ..modeling_mae_hf import IMAGENET_MEAN, IMAGENET_STD
from .args import OptionError

# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def load_image_datasets(
    train_dir: str | None = None,
    validation_dir: str | None = None,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_split: str = "train",
    validation_split: str = "validation",
    streaming: bool = False,
    cache_dir: str | None = None,
) -> dict[str, Dataset | IterableDataset]:
    """``{"train": ..., "validation": ...}`` (validation only when present) from local image folders (the
    ``imagefolder`` builder, class sub-folders become labels) or from ``load_dataset(dataset_name)``."""
    if train_dir:
        data_files = {"train": f"{train_dir}/**"}
        if validation_dir:
            data_files["validation"] = f"{validation_dir}/**"
        loaded = load_dataset("imagefolder", data_files=data_files, streaming=streaming, cache_dir=cache_dir)
        splits = {"train": loaded["train"]}
        if "validation" in loaded:
            splits["validation"] = loaded["validation"]
        return splits
    if not dataset_name:
        raise OptionError("No data: pass --train_dir IMAGE_FOLDER or --dataset_name NAME.")
    loaded = load_dataset(dataset_name, dataset_config_name, streaming=streaming, cache_dir=cache_dir)
    if not isinstance(loaded, DatasetDict | dict) and not hasattr(loaded, "keys"):
        loaded = {"train": loaded}
    if train_split not in loaded:
        raise OptionError(f"--train_split {train_split!r} not in {dataset_name}; available: {sorted(loaded.keys())}.")
    splits = {"train": loaded[train_split]}
    if validation_split in loaded:
        splits["validation"] = loaded[validation_split]
    return splits


def detect_image_column(dataset: Dataset | IterableDataset, image_column_name: str | None = None) -> str:
    """The image column: ``image_column_name`` if given, else the first ``Image`` feature, else 'image'/'img'."""
    features = dataset.features or {}
    names = list(features) if features else list(getattr(dataset, "column_names", None) or [])
    if image_column_name:
        if names and image_column_name not in names:
            raise OptionError(f"--image_column_name {image_column_name!r} not in the dataset columns {names}.")
        return image_column_name
    for name, feature in features.items():
        if isinstance(feature, ImageFeature):
            return name
    for name in ("image", "img", "pixel_values"):
        if name in names:
            return name
    raise OptionError(f"No image column found among {names}; pass --image_column_name.")


def detect_label_column(dataset: Dataset | IterableDataset, label_column_name: str | None = None) -> str | None:
    """The label column: ``label_column_name``, else the first ``ClassLabel`` feature, else 'label'/'labels'."""
    features = dataset.features or {}
    if label_column_name:
        if features and label_column_name not in features:
            raise OptionError(f"--label_column_name {label_column_name!r} not in the dataset columns {list(features)}.")
        return label_column_name
    for name, feature in features.items():
        if isinstance(feature, ClassLabel):
            return name
    for name in ("label", "labels"):
        if name in features:
            return name
    return None


# ---------------------------------------------------------------------------------------------------------------
# Images and transforms
# ---------------------------------------------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: 16/32-bit integer and float grayscale rescaled (PIL's own conversion clips
    them), transparency (RGBA, LA, palette + transparency) composited on white, CMYK/YCbCr/L/1/P converted."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image).astype(np.float64)
        if image.mode == "F":
            peak = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
        else:
            peak = 65535.0 if array.max(initial=0.0) > 255 else 255.0
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def build_pretrain_transform(input_size: int) -> v2.Compose:
    """The reference's pre-training augmentation: RandomResizedCrop(scale 0.2-1, bicubic), flip, ImageNet norm."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(
                input_size, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True
            ),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def build_eval_transform(input_size: int) -> v2.Compose:
    """The reference's evaluation transform: resize the short side to input_size / crop_pct (crop_pct 224/256 up
    to 224 px, else 1), bicubic, centre crop, ImageNet norm (the same as the saved image processor)."""
    crop_pct = 224 / 256 if input_size <= 224 else 1.0
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(int(input_size / crop_pct), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(input_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def make_example_transform(
    image_transform: Callable[[Image.Image], torch.Tensor], image_column: str, label_column: str | None = None
) -> Callable[[dict[str, list[Any]]], dict[str, Any]]:
    """A batched ``with_transform`` function: images → ``pixel_values`` (RGB first), labels → ``labels``;
    every other column is dropped (pre-training ignores labels by passing ``label_column=None``)."""

    def transform(examples: dict[str, list[Any]]) -> dict[str, Any]:
        out = {"pixel_values": [image_transform(to_rgb(image)) for image in examples[image_column]]}
        if label_column is not None:
            out["labels"] = list(examples[label_column])
        return out

    return transform


class TransformingCollate:
    """Collate raw examples (a streamed dataset) by transforming them first; picklable for worker processes."""

    def __init__(self, transform: Callable[[dict[str, list[Any]]], dict[str, Any]]) -> None:
        self.transform = transform

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        columns = {key: [example[key] for example in examples] for key in examples[0]}
        transformed = self.transform(columns)
        rows = [dict(zip(transformed, values)) for values in zip(*transformed.values())]
        return collate_images(rows)


def collate_images(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([int(example["labels"]) for example in examples])
    return batch


def prepare_split(
    dataset: Dataset | IterableDataset,
    image_transform: Callable[[Image.Image], torch.Tensor],
    image_column: str,
    label_column: str | None = None,
    max_samples: int | None = None,
) -> Dataset | IterableDataset:
    """Limit to ``max_samples`` and attach the transform lazily (applied when an example is read)."""
    if max_samples is not None:
        dataset = (
            dataset.take(max_samples)
            if isinstance(dataset, IterableDataset)
            else dataset.select(range(min(max_samples, len(dataset))))
        )
    transform = make_example_transform(image_transform, image_column, label_column)
    if isinstance(dataset, IterableDataset):
        # Streams are transformed in the loader's collate function (see ``TransformingCollate``), per batch.
        keep = [image_column] + ([label_column] if label_column else [])
        if dataset.features:
            dataset = dataset.remove_columns([c for c in dataset.features if c not in keep])
        return dataset
    return dataset.with_transform(transform)


# ---------------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------------


class EpochDataLoaders:
    """Training batches for one process, epoch by epoch, in an order that depends only on (seed, epoch).

    Map-style datasets use a ``DistributedSampler`` (shuffled with seed + epoch, disjoint shards, drop_last) and a
    ``DataLoader`` generator seeded with seed + epoch, so the order and worker seeds never touch the global RNG,
    and resuming mid-epoch skips batches without reading them (``accelerate.skip_first_batches``). Streaming
    datasets are split with ``datasets.distributed.split_dataset_by_node`` and shuffled per epoch with a buffer.
    """

    def __init__(
        self,
        dataset: Dataset | IterableDataset,
        batch_size: int,
        num_processes: int,
        process_index: int,
        seed: int,
        num_workers: int = 0,
        shuffle_buffer_size: int = 10_000,
        shuffle: bool = True,
        collate_fn: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]] = collate_images,
    ) -> None:
        self.collate_fn = collate_fn
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.num_processes = num_processes
        self.process_index = process_index
        self.streaming = isinstance(dataset, IterableDataset)
        if self.streaming:
            dataset = split_dataset_by_node(dataset, rank=process_index, world_size=num_processes)
            if shuffle:
                dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        self.dataset = dataset

    def __len__(self) -> int:
        """Batches per epoch on this process (map-style only)."""
        if self.streaming:
            raise TypeError("A streamed dataset has no length; count optimizer steps with --max_train_steps.")
        return len(self.dataset) // self.num_processes // self.batch_size

    def epoch_loader(self, epoch: int, skip_batches: int = 0) -> DataLoader | Iterator:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        if self.streaming:
            self.dataset.set_epoch(epoch)
            loader = DataLoader(
                self.dataset,
                batch_size=self.batch_size,
                collate_fn=self.collate_fn,
                num_workers=self.num_workers,
                drop_last=True,
                generator=generator,
            )
            iterator = iter(loader)
            for _ in range(skip_batches):  # a stream can only be skipped by reading it
                next(iterator, None)
            return iterator
        sampler = DistributedSampler(
            self.dataset,
            num_replicas=self.num_processes,
            rank=self.process_index,
            shuffle=self.shuffle,
            seed=self.seed,
            drop_last=True,
        )
        sampler.set_epoch(epoch)
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            drop_last=True,
            generator=generator,
            persistent_workers=False,
        )
        if skip_batches:
            from accelerate import skip_first_batches

            loader = skip_first_batches(loader, skip_batches)
        return loader


def build_eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Sequential, not sharded: used on the main process for reconstructions and the kNN monitor."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_images, num_workers=num_workers)


def steps_per_epoch(num_batches: int, gradient_accumulation_steps: int) -> int:
    """Optimizer steps per epoch: whole accumulation cycles only (a trailing partial cycle is not run)."""
    steps = num_batches // gradient_accumulation_steps
    if steps == 0:
        raise OptionError(
            f"An epoch has {num_batches} batch(es) per process, fewer than --gradient_accumulation_steps "
            f"{gradient_accumulation_steps}: lower --per_device_train_batch_size or the accumulation, or add data."
        )
    return steps


def build_pretrain_data(
    args: argparse.Namespace, input_size: int, num_processes: int, process_index: int
) -> tuple[EpochDataLoaders, Dataset]:
    """Training loaders and the images for reconstruction grids (validation split, else training split) with the
    eval transform, from the parsed options."""
    splits = load_image_datasets(
        train_dir=args.train_dir,
        validation_dir=args.validation_dir,
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_split=args.train_split,
        validation_split=args.validation_split,
        streaming=args.streaming,
        cache_dir=args.cache_dir,
    )
    image_column = detect_image_column(splits["train"], args.image_column_name)
    train_transform = build_pretrain_transform(input_size)
    train = prepare_split(splits["train"], train_transform, image_column, None, args.max_train_samples)
    collate_fn = collate_images
    if args.streaming:
        collate_fn = TransformingCollate(make_example_transform(train_transform, image_column))
    elif len(train) == 0:
        raise OptionError("The training data is empty; check --train_dir / --dataset_name / --train_split.")
    loaders = EpochDataLoaders(
        train,
        batch_size=args.per_device_train_batch_size,
        num_processes=num_processes,
        process_index=process_index,
        seed=args.seed,
        num_workers=args.dataloader_num_workers,
        shuffle_buffer_size=args.shuffle_buffer_size,
        collate_fn=collate_fn,
    )
    # Fixed images for reconstruction grids: the validation split, else the training images (eval transform).
    raw = splits.get("validation", splits["train"])
    if isinstance(raw, IterableDataset):  # a stream: materialise its first images
        raw = Dataset.from_list(list(raw.take(args.max_eval_samples or 256)), features=raw.features)
    preview = prepare_split(
        raw,
        build_eval_transform(input_size),
        detect_image_column(raw, args.image_column_name),
        None,
        args.max_eval_samples,
    )
    return loaders, preview


def streaming_steps_per_epoch(
    dataset: IterableDataset, num_examples: int | None, effective_batch_size: int, split: str = "train"
) -> int:
    """Optimizer steps in one pass of a stream: ``num_examples`` (or the dataset info's split size) divided by the
    effective batch; 1 when the size is unknown (then an "epoch" of the schedule is one step)."""
    if num_examples is None:
        info_splits = getattr(getattr(dataset, "info", None), "splits", None) or {}
        if split in info_splits and info_splits[split].num_examples:
            num_examples = info_splits[split].num_examples
    if not num_examples:
        return 1
    return max(1, num_examples // effective_batch_size)


def total_training_steps(num_train_epochs: float, steps_in_epoch: int | None, max_train_steps: int | None) -> int:
    """Optimizer steps of the run: epochs × steps per epoch, capped by ``max_train_steps``."""
    if steps_in_epoch is None:
        return int(max_train_steps)
    total = math.ceil(num_train_epochs * steps_in_epoch)
    return min(total, max_train_steps) if max_train_steps else total


__all__ = [
    "EpochDataLoaders",
    "TransformingCollate",
    "build_eval_loader",
    "build_eval_transform",
    "build_pretrain_data",
    "build_pretrain_transform",
    "collate_images",
    "detect_image_column",
    "detect_label_column",
    "load_image_datasets",
    "make_example_transform",
    "prepare_split",
    "steps_per_epoch",
    "streaming_steps_per_epoch",
    "to_rgb",
    "total_training_steps",
]
