"""JPEG decode and RandomResizedCrop on the training device (``--decode_on_device``).

Data-loader workers only read each file and, from its JPEG header (no pixel decode), draw the reference's crop
box and flip with the same torch RNG calls, in the same order, as ``build_pretrain_transform``. In the training
process ``DeviceDecodingLoader`` then decodes each batch with torchvision's ``decode_jpeg`` (nvJPEG on CUDA, one
batched call, one batch ahead on a side stream), crops, resizes (bicubic, antialias) and flips it on the device.
Everything that is not a complete RGB or grayscale JPEG (PNG, CMYK JPEG, a truncated file, ...) is decoded and
augmented on the workers by the PIL path, so every image gets the reference augmentation. The results differ from
the PIL path only by decoder and resize rounding (on CPU there is none: the same libjpeg-turbo output and the same
uint8 resize kernel). EXIF orientation is ignored, as on the PIL path. Unreadable images are skipped and listed, or
stop the run under ``--strict_data``, as on the PIL path; a JPEG whose header parses but whose data does not
decode is found on the device and reported the same way.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import RandomResizedCrop, v2
from torchvision.transforms.v2 import functional as F

from .args import OptionError
from .data import (
    SKIPPED_KEY,
    UnreadableImageError,
    UnreadableImages,
    build_pretrain_transform,
    decode_image,
    strict_data_error,
    to_rgb,
    unreadable_reason,
)

JPEG_START = b"\xff\xd8\xff"  # SOI + the first marker: baseline and progressive JPEG (JFIF, Exif, Adobe, ...)
JPEG_END = b"\xff\xd9"  # EOI: a file without it (truncated) goes to the PIL path, which rejects it like the reference
DEVICE_MODES = ("RGB", "L")  # what nvJPEG decodes to RGB exactly like PIL's convert("RGB"); CMYK/YCCK are not


@dataclass
class EncodedJpegs:
    """The JPEG images of a batch, in host memory: nvJPEG reads its input from there and the crop boxes are
    needed as Python numbers. The files travel as one tensor (one shared-memory block from a worker)."""

    data: torch.Tensor  # uint8, every file's bytes one after the other
    sizes: list[int]  # bytes of each file
    boxes: torch.Tensor  # (N, 4) int64: top, left, height, width of the crop in the full image
    flips: torch.Tensor  # (N,) bool: flip horizontally after the crop
    positions: list[int]  # rows of the batch
    names: list[str]  # file names, for reporting a file that does not decode

    def __len__(self) -> int:
        return len(self.sizes)

    def files(self) -> list[torch.Tensor]:
        """One 1-D uint8 tensor per file (views of ``data``)."""
        return list(torch.split(self.data, self.sizes)) if self.sizes else []


def read_encoded(value: Any) -> tuple[bytes | None, str | None]:
    """(file bytes, path) of a ``datasets`` image value (``{"bytes", "path"}`` or a path); bytes None when the file
    is not local (hf://, http: the PIL path opens it through ``datasets``) or the value is a decoded image."""
    if isinstance(value, str | os.PathLike):
        value = {"path": os.fspath(value), "bytes": None}
    if not isinstance(value, dict):
        return None, None
    data, path = value.get("bytes"), value.get("path")
    if data is None and path and os.path.isfile(path):
        with open(path, "rb") as handle:
            data = handle.read()
    return data, path


def jpeg_header(data: bytes) -> Image.Image | None:
    """The lazily opened PIL image (header only) of a complete RGB / grayscale JPEG, else None: also for a header
    PIL cannot parse or a decompression bomb, which the PIL path then rejects with its usual message."""
    if not (data.startswith(JPEG_START) and data.endswith(JPEG_END)):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Exception:  # PIL plugins raise many types (OSError, ValueError, SyntaxError, ...)
        return None
    return image if image.format == "JPEG" and image.mode in DEVICE_MODES else None


def make_device_decode_transform(
    input_size: int, image_column: str, strict: bool = False
) -> Callable[[dict[str, list[Any]]], dict[str, list[Any]]]:
    """The worker side of ``--decode_on_device``, a batched ``with_transform`` function like
    ``make_example_transform``. Per image: a JPEG as ``jpeg`` (its bytes, 1-D uint8), ``crop_box`` ((4,) int64:
    top, left, height, width) and ``flip``; any other image finished on the worker as ``pixel_values`` (uint8
    (3, S, S), the PIL path); an unreadable one as ``image_error`` (or ``UnreadableImageError`` with ``strict``)."""
    pil_transform = build_pretrain_transform(input_size, normalize=False)
    crop = next(step for step in pil_transform.transforms if isinstance(step, v2.RandomResizedCrop))
    flip_p = next(step for step in pil_transform.transforms if isinstance(step, v2.RandomHorizontalFlip)).p
    scale, ratio = list(crop.scale), list(crop.ratio)  # the reference's parameters

    def transform(examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {
            key: [] for key in ("jpeg", "crop_box", "flip", "pixel_values", "image_error", "image_name")
        }
        for value in examples[image_column]:
            row: dict[str, Any] = dict.fromkeys(out)
            try:
                data, path = read_encoded(value)
                header = jpeg_header(data) if data is not None else None
                # Anything else, and every unreadable file, takes the PIL path: same pixels, same error messages.
                image = None if header is not None else decode_image(value)
            except Exception as error:  # PIL plugins raise many types (OSError, ValueError, SyntaxError, ...)
                reason = unreadable_reason(value, error)
                if strict:
                    raise strict_data_error(reason) from None
                row["image_error"] = reason
            else:
                row["image_name"] = path or "<image bytes>"
                if header is not None:  # the same torch RNG draws, in the same order, as pil_transform's
                    box = RandomResizedCrop.get_params(header, scale, ratio)  # reads only the size
                    row["crop_box"] = torch.tensor(box, dtype=torch.int64)
                    row["flip"] = bool(torch.rand(1) < flip_p)
                    row["jpeg"] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                else:
                    row["pixel_values"] = pil_transform(to_rgb(image))
            for key, item in row.items():
                out[key].append(item)
        return out

    return transform


def collate_encoded_images(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``--decode_on_device`` batch (tensors and an ``EncodedJpegs``: a worker can return it):

    * ``jpeg_mask``: (B,) bool, True where the row is a JPEG decoded on the device;
    * ``jpegs``: ``EncodedJpegs`` (bytes, crop boxes, flips, rows) of those rows;
    * ``worker_pixel_values``: (K, 3, S, S) uint8, the other rows in order (present when K > 0);
    * ``skipped_images`` as ``collate_images`` (unreadable files, dropped), which also raises
      ``UnreadableImageError`` when no image of the batch is readable."""
    readable = [example for example in examples if example["image_error"] is None]
    skipped = [example["image_error"] for example in examples if example["image_error"] is not None]
    if not readable:
        raise UnreadableImageError(
            f"every image of a batch of {len(examples)} is unreadable, e.g. {skipped[0]}; check the data files."
        )
    jpegs = [example for example in readable if example["jpeg"] is not None]
    finished = [example["pixel_values"] for example in readable if example["jpeg"] is None]
    boxes = [example["crop_box"] for example in jpegs]
    batch: dict[str, Any] = {
        "jpeg_mask": torch.tensor([example["jpeg"] is not None for example in readable], dtype=torch.bool),
        "jpegs": EncodedJpegs(
            data=torch.cat([example["jpeg"] for example in jpegs] or [torch.empty(0, dtype=torch.uint8)]),
            sizes=[example["jpeg"].numel() for example in jpegs],
            boxes=torch.stack(boxes) if boxes else torch.empty((0, 4), dtype=torch.int64),
            flips=torch.tensor([example["flip"] for example in jpegs], dtype=torch.bool),
            positions=[index for index, example in enumerate(readable) if example["jpeg"] is not None],
            names=[example["image_name"] for example in jpegs],
        ),
    }
    if finished:
        batch["worker_pixel_values"] = torch.stack(finished)
    if skipped:
        batch[SKIPPED_KEY] = skipped
    return batch


_WORKING_DECODERS: set[str] = set()


def check_jpeg_decoder(device: torch.device | str) -> None:
    """Raise ``OptionError`` unless torchvision decodes a JPEG on ``device`` (checked once per device), so that a
    build without nvJPEG stops the run with one line instead of listing every file as unreadable."""
    if str(device) in _WORKING_DECODERS:
        return
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 30, 90)).save(buffer, format="JPEG")
    try:
        decode_jpeg([torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)], ImageReadMode.RGB, device)
    except Exception as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise OptionError(
            f"--decode_on_device: torchvision {torchvision.__version__} cannot decode JPEGs on {device} ({message}); "
            "run without --decode_on_device (the data-loader workers then decode with PIL)."
        ) from error
    _WORKING_DECODERS.add(str(device))


def decode_jpegs(
    jpegs: EncodedJpegs,
    device: torch.device | str,
    strict: bool = False,
    unreadable: UnreadableImages | None = None,
) -> list[torch.Tensor | None]:
    """The full RGB images (uint8 (3, H, W) on ``device``) of ``jpegs``, in one batched ``decode_jpeg`` call. When
    it fails (a file whose header parsed but whose data does not decode), the files are decoded one by one and
    the failing ones come back as None, recorded in ``unreadable`` with a warning (``UnreadableImageError`` with
    ``strict``)."""
    files = jpegs.files()
    if not files:
        return []
    check_jpeg_decoder(device)
    try:
        return list(decode_jpeg(files, mode=ImageReadMode.RGB, device=device))
    except torch.OutOfMemoryError:
        raise
    except RuntimeError:
        pass
    images: list[torch.Tensor | None] = []
    failed: list[str] = []
    for data, name in zip(files, jpegs.names):
        try:
            images.append(decode_jpeg([data], mode=ImageReadMode.RGB, device=device)[0])
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as error:
            reason = unreadable_reason(name, error)
            if strict:
                raise strict_data_error(reason) from None
            images.append(None)
            failed.append(reason)
    registry = unreadable if unreadable is not None else UnreadableImages()
    registry.warn(registry.record(failed), "training data (decoded on the device)")
    return images


def decode_batch(
    batch: dict[str, Any],
    device: torch.device | str,
    input_size: int,
    strict: bool = False,
    unreadable: UnreadableImages | None = None,
) -> torch.Tensor:
    """The uint8 images (B, 3, S, S) on ``device`` of a ``collate_encoded_images`` batch: the JPEGs decoded
    (``decode_jpegs``), cropped to their boxes, resized to ``input_size`` (bicubic, antialias: the reference's
    ``RandomResizedCrop``) and flipped there, and the worker-finished images at their rows. Rows whose JPEG does not
    decode are dropped (see ``decode_jpegs``); ``UnreadableImageError`` when none is left."""
    jpegs: EncodedJpegs = batch["jpegs"]
    rows: list[torch.Tensor | None] = [None] * batch["jpeg_mask"].shape[0]
    images = decode_jpegs(jpegs, device, strict, unreadable)
    for image, position, box, flip in zip(images, jpegs.positions, jpegs.boxes.tolist(), jpegs.flips.tolist()):
        if image is not None:
            top, left, height, width = box
            crop = F.resized_crop(
                image,
                top,
                left,
                height,
                width,
                [input_size, input_size],
                interpolation=F.InterpolationMode.BICUBIC,
                antialias=True,
            )
            rows[position] = F.horizontal_flip(crop) if flip else crop
    finished = batch.get("worker_pixel_values")
    if finished is not None:
        others = sorted(set(range(len(rows))) - set(jpegs.positions))
        for position, image in zip(others, finished.to(device, non_blocking=True)):
            rows[position] = image
    kept = [row for row in rows if row is not None]
    if not kept:
        raise UnreadableImageError(
            f"no JPEG of a batch of {len(rows)} decodes, e.g. {jpegs.names[0]}; check the data files."
        )
    return torch.stack(kept)


class DeviceDecodingLoader:
    """Batches of a ``collate_encoded_images`` loader as ``{"pixel_values": uint8 (B, 3, S, S) on device}``.

    On CUDA each batch is decoded one batch ahead on a side stream: the decode and crop kernels of batch N+1 are
    queued before batch N is handed to the training step, so they run beside that step's kernels, and the step's
    stream waits for them only when it uses batch N+1. Elsewhere (CPU) batches are decoded as they are handed out.
    Decoding happens while the loop waits for data, so ``data_time`` in the log includes it."""

    def __init__(
        self,
        loader: Iterable[dict[str, Any]],
        device: torch.device | str,
        input_size: int,
        strict: bool = False,
        unreadable: UnreadableImages | None = None,
    ) -> None:
        self.loader = loader
        self.device = torch.device(device)
        self.input_size = input_size
        self.strict = strict
        self.unreadable = unreadable

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        queued: dict[str, torch.Tensor] | None = None
        for batch in self.loader:
            decoded = self._decode(batch, stream)
            if queued is not None:
                yield self._ready(queued, stream)
            queued = decoded
        if queued is not None:
            yield self._ready(queued, stream)

    def _decode(self, batch: dict[str, Any], stream: torch.cuda.Stream | None) -> dict[str, torch.Tensor]:
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            pixels = decode_batch(batch, self.device, self.input_size, self.strict, self.unreadable)
        return {"pixel_values": pixels}

    @staticmethod
    def _ready(batch: dict[str, torch.Tensor], stream: torch.cuda.Stream | None) -> dict[str, torch.Tensor]:
        if stream is not None:
            consumer = torch.cuda.current_stream(stream.device)
            consumer.wait_stream(stream)
            batch["pixel_values"].record_stream(consumer)  # its memory is not reused before the step is done
        return batch


__all__ = [
    "DeviceDecodingLoader",
    "EncodedJpegs",
    "check_jpeg_decoder",
    "collate_encoded_images",
    "decode_batch",
    "decode_jpegs",
    "jpeg_header",
    "make_device_decode_transform",
    "read_encoded",
]
