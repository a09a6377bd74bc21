"""Images through 🤗 datasets: loading (image folders, Hub/local datasets, streaming), RGB conversion, the
reference's torchvision v2 transforms, and data loaders whose order depends only on (seed, epoch).

Unreadable images (truncated or corrupt files, zero bytes, non-images, decompression bombs) never stop a run by
default: images are decoded here rather than by ``datasets`` (the column is cast to ``Image(decode=False)``), a file
that fails is dropped from its batch and remembered, and the training loaders log one warning per epoch listing the
newly skipped files (``EpochDataLoaders.unreadable_summary()`` gives the totals for the run log). With
``strict=True`` (``--strict_data``) the first unreadable file stops the run with ``UnreadableImageError`` naming it.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
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
from .checkpoint import TEST_KILL_ENV, kill_point

logger = logging.getLogger(__name__)
SKIPPED_KEY = "skipped_images"  # batch entry carrying the skipped files from (worker) collate to the main process


class UnreadableImageError(OptionError):
    """An image file cannot be decoded (raised on the first one with ``--strict_data``, or when a whole batch is)."""


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
    elif validation_split != "validation":  # a split asked for by name must exist; the default may be missing
        raise OptionError(
            f"--validation_split {validation_split!r} not in {dataset_name}; available: {sorted(loaded.keys())}."
        )
    return splits


def load_image_datasets_from_args(args: argparse.Namespace, streaming: bool = False) -> dict[str, Any]:
    """``load_image_datasets`` with the data options every script shares (``add_data_args``)."""
    return load_image_datasets(
        train_dir=args.train_dir,
        validation_dir=args.validation_dir,
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_split=args.train_split,
        validation_split=args.validation_split,
        streaming=streaming,
        cache_dir=args.cache_dir,
    )


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


def decode_image(value: Any) -> Image.Image:
    """A fully decoded PIL image from a ``datasets`` image value (``{"bytes", "path"}``, a PIL image, or a path).

    Raises on anything unreadable. Truncated files are errors (PIL's ``LOAD_TRUNCATED_IMAGES`` stays False, so
    they do not load half grey) and so are decompression bombs, above ``Image.MAX_IMAGE_PIXELS`` (PIL's
    ``DecompressionBombWarning`` is raised as an error here, ``DecompressionBombError`` beyond twice the limit)."""
    if isinstance(value, Image.Image):
        value.load()
        return value
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if isinstance(value, str | os.PathLike):
            value = {"path": os.fspath(value), "bytes": None}
        data, path = value.get("bytes"), value.get("path")
        if data is None and not (path and os.path.isfile(path)):
            # Remote files (hf://, http) go through datasets' own opener (authentication, streaming); decoded below.
            image = ImageFeature().decode_example(value)
        else:
            image = Image.open(io.BytesIO(data) if data is not None else path)
        image.load()
        return image


def _image_name(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("path") or "<image bytes>"
    if isinstance(value, str | os.PathLike):
        return os.fspath(value)
    return getattr(value, "filename", None) or "<image>"


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


def build_pretrain_transform(input_size: int, normalize: bool = True) -> v2.Compose:
    """The reference's pre-training augmentation: RandomResizedCrop(scale 0.2-1, bicubic), flip, ImageNet norm.
    ``normalize=False`` stops at the uint8 crop: a quarter of the bytes travel from the data-loader workers to the
    device, where ``normalize_images`` finishes with the same operations."""
    steps = [
        v2.ToImage(),
        v2.RandomResizedCrop(input_size, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if normalize:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


def normalize_images(pixel_values: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, C, H, W), on any device, to the model's input: the ``ToDtype(scale=True)`` and ImageNet
    ``Normalize`` of the transform, run where the model runs. Float input is taken as already normalised."""
    if pixel_values.dtype != torch.uint8:
        return pixel_values
    pixel_values = v2.functional.to_dtype(pixel_values, torch.float32, scale=True)
    return v2.functional.normalize(pixel_values, IMAGENET_MEAN, IMAGENET_STD)


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


def unreadable_reason(value: Any, error: BaseException) -> str:
    """``"path (ErrorType: first line of the message)"``: how an unreadable image is listed and reported."""
    message = str(error).splitlines()[0] if str(error) else ""
    return f"{_image_name(value)} ({type(error).__name__}: {message})"


def strict_data_error(reason: str) -> UnreadableImageError:
    """The ``--strict_data`` error for an image listed as ``reason`` (see ``unreadable_reason``)."""
    return UnreadableImageError(
        f"--strict_data: cannot read image {reason}; remove or fix the file, or drop --strict_data to skip "
        "unreadable images."
    )


def make_example_transform(
    image_transform: Callable[[Image.Image], torch.Tensor],
    image_column: str,
    label_column: str | None = None,
    strict: bool = False,
) -> Callable[[dict[str, list[Any]]], dict[str, Any]]:
    """A batched ``with_transform`` function: images → ``pixel_values`` (decoded, RGB first), labels → ``labels``;
    every other column is dropped (pre-training ignores labels by passing ``label_column=None``).

    An unreadable image gives ``pixel_values`` None and its file and reason in ``image_error`` (``collate_images``
    drops the row), or, with ``strict``, raises ``UnreadableImageError`` naming the file."""

    def transform(examples: dict[str, list[Any]]) -> dict[str, Any]:
        pixel_values: list[torch.Tensor | None] = []
        errors: list[str | None] = []
        for value in examples[image_column]:
            try:
                image = decode_image(value)
            except Exception as error:  # PIL plugins raise many types (OSError, ValueError, SyntaxError, ...)
                reason = unreadable_reason(value, error)
                if strict:
                    raise strict_data_error(reason) from None
                pixel_values.append(None)
                errors.append(reason)
                continue
            pixel_values.append(image_transform(to_rgb(image)))
            errors.append(None)
        out: dict[str, Any] = {"pixel_values": pixel_values, "image_error": errors}
        if label_column is not None:
            out["labels"] = list(examples[label_column])
        return out

    return transform


class TransformingCollate:
    """Collate raw examples (a streamed dataset) by transforming them first, then ``collate`` (``collate_images``
    by default); picklable for worker processes."""

    def __init__(
        self,
        transform: Callable[[dict[str, list[Any]]], dict[str, Any]],
        collate: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    ) -> None:
        self.transform = transform
        self.collate = collate or collate_images

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        columns = {key: [example[key] for example in examples] for key in examples[0]}
        transformed = self.transform(columns)
        rows = [dict(zip(transformed, values)) for values in zip(*transformed.values())]
        return self.collate(rows)


def collate_images(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the readable examples; unreadable ones (``pixel_values`` None) are dropped and listed under
    ``skipped_images`` (removed again by the loaders below, which report them). A batch with no readable image
    raises ``UnreadableImageError``: the data is broken rather than a few files."""
    readable = [example for example in examples if example["pixel_values"] is not None]
    skipped = [example.get("image_error") or "<image>" for example in examples if example["pixel_values"] is None]
    if not readable:
        raise UnreadableImageError(
            f"every image of a batch of {len(examples)} is unreadable, e.g. {skipped[0]}; check the data files."
        )
    batch: dict[str, Any] = {"pixel_values": torch.stack([example["pixel_values"] for example in readable])}
    if "labels" in readable[0]:
        batch["labels"] = torch.tensor([int(example["labels"]) for example in readable])
    if skipped:
        batch[SKIPPED_KEY] = skipped
    return batch


class UnreadableImages:
    """The unreadable files met by this process's loaders (each file once), with one warning per pass."""

    def __init__(self) -> None:
        self.files: dict[str, None] = {}  # insertion-ordered set of "path (reason)"

    def record(self, skipped: Iterable[str]) -> list[str]:
        new = [item for item in skipped if item not in self.files]
        self.files.update(dict.fromkeys(new))
        return new

    def warn(self, new: list[str], where: str) -> None:
        if new:
            logger.warning(
                "Skipped %d unreadable image(s) in %s (use --strict_data to stop on the first instead): %s",
                len(new),
                where,
                "; ".join(new),
            )

    def summary(self) -> dict[str, Any]:
        """For the run log: ``{"unreadable_images": count, "unreadable_files": ["path (reason)", ...]}``."""
        return {"unreadable_images": len(self.files), "unreadable_files": list(self.files)}


class ReportingLoader:
    """Wraps a loader: removes ``skipped_images`` from each batch, records them in ``registry`` and warns once at
    the end of each pass (also when the caller stops early). The fault-injection hook of the tests
    (``$MAE_HF_TEST_KILL_AT=batch:N``, N counted per process) fires before the N-th batch is handed out."""

    batches_handed_out = 0  # per process, for the fault-injection hook only

    def __init__(
        self, loader: Iterable[dict[str, Any]], registry: UnreadableImages, where: str, count_batches: bool = False
    ) -> None:
        self.loader = loader
        self.registry = registry
        self.where = where
        self.count_batches = count_batches and bool(os.environ.get(TEST_KILL_ENV))

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        new: list[str] = []
        try:
            for batch in self.loader:
                new += self.registry.record(batch.pop(SKIPPED_KEY, ()))
                if self.count_batches:
                    ReportingLoader.batches_handed_out += 1
                    kill_point(f"batch:{ReportingLoader.batches_handed_out}")
                yield batch
        finally:  # runs at exhaustion and when the consuming for-loop breaks (the generator is closed)
            self.registry.warn(new, self.where)


def prepare_split(
    dataset: Dataset | IterableDataset,
    image_transform: Callable[[Image.Image], torch.Tensor],
    image_column: str,
    label_column: str | None = None,
    max_samples: int | None = None,
    strict: bool = False,
    example_transform: Callable[[dict[str, list[Any]]], dict[str, Any]] | None = None,
) -> Dataset | IterableDataset:
    """Limit to ``max_samples`` and attach the transform lazily (applied when an example is read). Images are
    decoded by the transform (``Image(decode=False)``), so an unreadable file is skipped or, ``strict``, reported.
    ``example_transform`` replaces the batched ``make_example_transform(image_transform, ...)`` (the
    ``--decode_on_device`` one)."""
    if max_samples is not None:
        dataset = (
            dataset.take(max_samples)
            if isinstance(dataset, IterableDataset)
            else dataset.select(range(min(max_samples, len(dataset))))
        )
    dataset = undecoded(dataset, image_column)
    transform = example_transform or make_example_transform(image_transform, image_column, label_column, strict)
    if isinstance(dataset, IterableDataset):
        # Streams are transformed in the loader's collate function (see ``TransformingCollate``), per batch.
        keep = [image_column] + ([label_column] if label_column else [])
        if dataset.features:
            dataset = dataset.remove_columns([c for c in dataset.features if c not in keep])
        return dataset
    return dataset.with_transform(transform)


def undecoded(dataset: Dataset | IterableDataset, image_column: str) -> Dataset | IterableDataset:
    """The dataset with its image column as ``Image(decode=False)`` (``{"bytes", "path"}``), so that decoding, and
    its failures, happen in ``make_example_transform`` instead of inside ``datasets``."""
    feature = (dataset.features or {}).get(image_column)
    if isinstance(feature, ImageFeature) and feature.decode:
        return dataset.cast_column(image_column, ImageFeature(decode=False))
    return dataset


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
        self.unreadable = UnreadableImages()
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

    def unreadable_summary(self) -> dict[str, Any]:
        """Unreadable training images skipped so far by this process (for the run log)."""
        return self.unreadable.summary()

    def epoch_loader(self, epoch: int, skip_batches: int = 0) -> ReportingLoader:
        loader = self._epoch_loader(epoch, skip_batches)
        return ReportingLoader(loader, self.unreadable, f"training epoch {epoch}", count_batches=True)

    def _epoch_loader(self, epoch: int, skip_batches: int = 0) -> DataLoader | Iterator:
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


EVAL_UNREADABLE = UnreadableImages()  # unreadable images met by evaluation loaders of this process


def build_eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> ReportingLoader:
    """Sequential, not sharded: used on the main process for reconstructions and the kNN monitor."""
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_images, num_workers=num_workers
    )
    return ReportingLoader(loader, EVAL_UNREADABLE, "evaluation data")


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
    eval transform, from the parsed options. With ``--decode_on_device`` the training batches carry JPEG bytes and
    crop boxes (``device_decode``); ``DeviceDecodingLoader`` decodes them on the device."""
    splits = load_image_datasets_from_args(args, streaming=args.streaming)
    image_column = detect_image_column(splits["train"], args.image_column_name)
    strict = bool(getattr(args, "strict_data", False))
    train_transform = build_pretrain_transform(input_size, normalize=False)  # uint8 to the device
    example_transform = make_example_transform(train_transform, image_column, None, strict)
    collate_fn = collate_images
    if getattr(args, "decode_on_device", False):
        from .device_decode import collate_encoded_images, make_device_decode_transform

        example_transform = make_device_decode_transform(input_size, image_column, strict)
        collate_fn = collate_encoded_images
    train = prepare_split(
        splits["train"], train_transform, image_column, None, args.max_train_samples, strict, example_transform
    )
    if args.streaming:
        collate_fn = TransformingCollate(example_transform, collate_fn)
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
    preview_column = detect_image_column(raw, args.image_column_name)
    if isinstance(raw, IterableDataset):  # a stream: materialise its first images (undecoded: no decoding error here)
        raw = undecoded(raw, preview_column)
        raw = Dataset.from_list(list(raw.take(args.max_eval_samples or 256)), features=raw.features)
    preview = prepare_split(raw, build_eval_transform(input_size), preview_column, None, args.max_eval_samples, strict)
    return loaders, readable_preview(preview, args.num_visualize_images)


def readable_preview(preview: Dataset, count: int) -> Dataset:
    """The reconstruction grid indexes ``count`` evenly spaced images of ``preview``: when one of them is
    unreadable, return just ``count`` readable images near those positions (the grid then shows all of them);
    otherwise ``preview`` itself, unchanged. Only these few images are decoded."""
    total = len(preview)
    count = min(count, total)
    if count <= 0:
        return preview
    picks = sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})
    if all(preview[i]["pixel_values"] is not None for i in picks):
        return preview
    chosen: list[int] = []
    for start in picks:
        for index in range(start, total):
            if index not in chosen and preview[index]["pixel_values"] is not None:
                chosen.append(index)
                break
    return preview.select(sorted(chosen))


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
    "EVAL_UNREADABLE",
    "EpochDataLoaders",
    "ReportingLoader",
    "UnreadableImageError",
    "UnreadableImages",
    "TransformingCollate",
    "build_eval_loader",
    "build_eval_transform",
    "build_pretrain_data",
    "build_pretrain_transform",
    "normalize_images",
    "collate_images",
    "decode_image",
    "detect_image_column",
    "detect_label_column",
    "load_image_datasets",
    "load_image_datasets_from_args",
    "make_example_transform",
    "prepare_split",
    "readable_preview",
    "steps_per_epoch",
    "streaming_steps_per_epoch",
    "strict_data_error",
    "to_rgb",
    "total_training_steps",
    "undecoded",
    "unreadable_reason",
]
