"""--decode_on_device: JPEG bytes and crop boxes from the workers, decode + RandomResizedCrop on the device. On CPU
the device path gives the PIL path's pixels exactly (same RNG draws, same libjpeg-turbo output, same resize
kernel); other formats are finished on the workers; unreadable files are skipped and reported, or name the file
under --strict_data; a short pre-training run on mixed data completes."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import load_pretrain_script, tiny_pretrain_argv
from PIL import Image
from torchvision.transforms.v2 import functional as F

from mae_hf.training import device_decode
from mae_hf.training.args import OptionError, build_pretrain_parser, parse_args_with_recipe
from mae_hf.training.classification import build_finetune_parser, build_linprobe_parser
from mae_hf.training.data import (
    SKIPPED_KEY,
    UnreadableImageError,
    UnreadableImages,
    build_pretrain_data,
    build_pretrain_transform,
    decode_image,
    to_rgb,
)
from mae_hf.training.device_decode import (
    DeviceDecodingLoader,
    EncodedJpegs,
    check_jpeg_decoder,
    collate_encoded_images,
    decode_batch,
    make_device_decode_transform,
)

SIZE = 64


def photo(width: int = 300, height: int = 200, seed: int = 0) -> np.ndarray:
    """Photo-like RGB pixels: smooth colour gradients, a bright disc (sharp edges) and sensor-like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    pixels = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], -1)
    pixels[(x - width * 0.6) ** 2 + (y - height * 0.4) ** 2 < (height * 0.2) ** 2] = (250, 240, 30)
    return np.clip(pixels + rng.normal(0, 10, pixels.shape), 0, 255).astype(np.uint8)


def encoded(image: Image.Image, fmt: str = "JPEG", **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def jpeg(mode: str = "RGB", seed: int = 0, **kwargs: Any) -> bytes:
    return encoded(Image.fromarray(photo(seed=seed)).convert(mode), "JPEG", quality=90, **kwargs)


def corrupt_scan(data: bytes) -> bytes:
    """Header and end marker intact (the workers send it on), scan data broken (the decoder fails)."""
    middle = len(data) // 2
    return data[:middle] + b"\xff\x53" * 8 + data[middle + 16 :]


def worker_batch(values: list[Any], seed: int = 0, strict: bool = False) -> dict[str, Any]:
    """The worker side (transform + collate) on ``values``, as a DataLoader would run it."""
    transform = make_device_decode_transform(SIZE, "image", strict)
    torch.manual_seed(seed)
    columns = transform({"image": values})
    return collate_encoded_images([dict(zip(columns, row)) for row in zip(*columns.values())])


def pil_path(values: list[Any], seed: int = 0) -> torch.Tensor:
    """The default (PIL) pre-training path on ``values``: decode, RGB, the reference transform, uint8."""
    transform = build_pretrain_transform(SIZE, normalize=False)
    torch.manual_seed(seed)
    return torch.stack([transform(to_rgb(decode_image(value))) for value in values])


def one_jpeg_batch(data: bytes, box: tuple[int, int, int, int], flip: bool) -> dict[str, Any]:
    """A batch of one JPEG with a chosen crop box and flip."""
    return {
        "jpeg_mask": torch.tensor([True]),
        "jpegs": EncodedJpegs(
            data=torch.frombuffer(bytearray(data), dtype=torch.uint8),
            sizes=[len(data)],
            boxes=torch.tensor([box]),
            flips=torch.tensor([flip]),
            positions=[0],
            names=["photo.jpg"],
        ),
    }


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("progressive", [False, True])
def test_given_box_and_flip_device_path_matches_pil_path(mode: str, progressive: bool):
    data = jpeg(mode, progressive=progressive)
    box = (17, 41, 150, 201)  # top, left, height, width in the 300 × 200 image
    reference = to_rgb(decode_image({"bytes": data, "path": None}))
    for flip in (False, True):
        pixels = decode_batch(one_jpeg_batch(data, box, flip), "cpu", SIZE)
        assert pixels.shape == (1, 3, SIZE, SIZE) and pixels.dtype == torch.uint8
        # The training path: PIL decode, then the same tensor kernel on uint8: identical on CPU.
        expected = F.resized_crop(F.pil_to_tensor(reference), *box, [SIZE, SIZE], F.InterpolationMode.BICUBIC)
        expected = F.horizontal_flip(expected) if flip else expected
        assert torch.equal(pixels[0], expected)
        # PIL's own bicubic resize of the PIL image: another rounding of the same filter, and what the float
        # kernel on CUDA amounts to; nvJPEG adds its own IDCT / chroma rounding on top.
        pil_resized = F.pil_to_tensor(
            F.resized_crop(reference, *box, [SIZE, SIZE], F.InterpolationMode.BICUBIC, antialias=True)
        )
        pil_resized = F.horizontal_flip(pil_resized) if flip else pil_resized
        difference = (pixels[0].int() - pil_resized.int()).abs()
        assert difference.float().mean() < 2 and difference.max() <= 8  # ±1-2 levels; ≤ 8 at the disc's edge
    if mode == "L":
        assert torch.equal(pixels[0, 0], pixels[0, 1]) and torch.equal(pixels[0, 0], pixels[0, 2])
    unflipped = decode_batch(one_jpeg_batch(data, box, False), "cpu", SIZE)
    assert torch.equal(pixels, unflipped.flip(-1)) and not torch.equal(pixels, unflipped)


def test_boxes_and_flips_are_the_reference_draws():
    """Same seed: the device path draws the PIL path's boxes and flips image for image (equal pixels), mixed with
    worker-decoded formats that draw in between."""
    rgb = Image.fromarray(photo(seed=1))
    values = [
        {"bytes": jpeg("RGB", seed=2), "path": "a.jpg"},
        {"bytes": encoded(rgb, "PNG"), "path": "b.png"},
        {"bytes": jpeg("L", seed=3), "path": "c.jpg"},
        {"bytes": encoded(rgb.convert("CMYK"), "JPEG", quality=90), "path": "d.jpg"},
    ] * 8
    batch = worker_batch(values, seed=5)
    assert batch["jpeg_mask"].tolist() == [True, False, True, False] * 8
    jpegs: EncodedJpegs = batch["jpegs"]
    assert len(jpegs) == 16 and jpegs.positions == list(range(0, 32, 2))
    assert jpegs.boxes.dtype == torch.int64 and jpegs.flips.dtype == torch.bool
    assert 0 < int(jpegs.flips.sum()) < 16  # both outcomes occur
    for top, left, height, width in jpegs.boxes.tolist():
        assert 0 <= top and top + height <= 200 and 0 <= left and left + width <= 300
        assert 0.2 - 0.02 <= height * width / (300 * 200) <= 1.0  # scale (0.2, 1) up to rounding of h and w
        assert 3 / 4 - 0.05 <= width / height <= 4 / 3 + 0.05
    assert batch["worker_pixel_values"].shape == (16, 3, SIZE, SIZE)  # the PNG and CMYK rows
    assert torch.equal(decode_batch(batch, "cpu", SIZE), pil_path(values, seed=5))


def test_png_and_cmyk_jpeg_are_finished_on_the_workers_like_the_pil_path():
    rgb = Image.fromarray(photo(seed=4))
    values = [{"bytes": encoded(rgb, "PNG"), "path": "p.png"}, {"bytes": encoded(rgb.convert("CMYK")), "path": "c.jpg"}]
    batch = worker_batch(values, seed=7)
    assert not batch["jpeg_mask"].any() and len(batch["jpegs"]) == 0
    assert torch.equal(batch["worker_pixel_values"], pil_path(values, seed=7))  # the same code
    assert torch.equal(decode_batch(batch, "cpu", SIZE), pil_path(values, seed=7))


def test_exif_orientation_is_ignored_as_on_the_pil_path():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": neither path applies it (the reference does not either)
    values = [{"bytes": encoded(Image.fromarray(photo(seed=12)), "JPEG", quality=90, exif=exif), "path": "r.jpg"}]
    assert Image.open(io.BytesIO(values[0]["bytes"])).getexif()[0x0112] == 6
    batch = worker_batch(values, seed=2)
    assert batch["jpeg_mask"].tolist() == [True]
    top, left, height, width = batch["jpegs"].boxes[0].tolist()
    assert top + height <= 200 and left + width <= 300  # boxes in the stored (unrotated) 300 × 200 frame
    assert torch.equal(decode_batch(batch, "cpu", SIZE), pil_path(values, seed=2))


def test_paths_are_read_from_disk(tmp_path: Path):
    (tmp_path / "a.jpg").write_bytes(jpeg("RGB", seed=8))
    Image.fromarray(photo(seed=9)).save(tmp_path / "b.png")
    values = [str(tmp_path / "a.jpg"), {"bytes": None, "path": str(tmp_path / "b.png")}]
    batch = worker_batch(values, seed=3)
    assert batch["jpeg_mask"].tolist() == [True, False] and batch["jpegs"].names == [str(tmp_path / "a.jpg")]
    assert torch.equal(decode_batch(batch, "cpu", SIZE), pil_path(values, seed=3))


def test_unreadable_files_are_skipped_and_reported_or_stop_under_strict(caplog: pytest.LogCaptureFixture):
    good = jpeg("RGB", seed=10)
    values = [
        {"bytes": good, "path": "good.jpg"},
        {"bytes": good[: len(good) // 2], "path": "truncated.jpg"},  # no end marker: the PIL path rejects it
        {"bytes": b"<html>not an image</html>", "path": "page.jpg"},
        {"bytes": corrupt_scan(good), "path": "corrupt_scan.jpg"},  # header fine: found in the step
        {"bytes": encoded(Image.fromarray(photo(seed=11)), "PNG"), "path": "good.png"},
    ]
    batch = worker_batch(values)
    assert sorted(item.split(" (")[0] for item in batch[SKIPPED_KEY]) == ["page.jpg", "truncated.jpg"]
    assert batch["jpegs"].names == ["good.jpg", "corrupt_scan.jpg"] and batch["jpeg_mask"].shape == (3,)
    registry = UnreadableImages()
    with caplog.at_level(logging.WARNING, logger="mae_hf.training.data"):
        pixels = decode_batch(batch, "cpu", SIZE, unreadable=registry)
    assert pixels.shape == (2, 3, SIZE, SIZE)  # good.jpg and good.png
    assert [item.split(" (")[0] for item in registry.files] == ["corrupt_scan.jpg"]
    assert any("corrupt_scan.jpg" in record.getMessage() for record in caplog.records)
    # The readable rows are the PIL path's pixels for the same draws (the corrupt file drew its box, the
    # unreadable ones drew nothing, as on the PIL path).
    torch.manual_seed(0)
    transform = build_pretrain_transform(SIZE, normalize=False)
    expected = [transform(to_rgb(decode_image(values[0])))]
    transform(to_rgb(decode_image({"bytes": good, "path": None})))  # corrupt_scan.jpg's draws
    expected.append(transform(to_rgb(decode_image(values[4]))))
    assert torch.equal(pixels, torch.stack(expected))

    with pytest.raises(UnreadableImageError, match=r"^--strict_data: cannot read image corrupt_scan\.jpg "):
        decode_batch(batch, "cpu", SIZE, strict=True)
    with pytest.raises(UnreadableImageError, match=r"^--strict_data: cannot read image truncated\.jpg "):
        worker_batch(values, strict=True)
    with pytest.raises(UnreadableImageError, match="no JPEG of a batch of 1 decodes"):
        decode_batch(worker_batch([values[3]]), "cpu", SIZE)


def test_a_decoder_that_does_not_work_stops_with_one_line(monkeypatch: pytest.MonkeyPatch):
    check_jpeg_decoder("cpu")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("nvjpeg not available\nmore lines")

    monkeypatch.setattr(device_decode, "decode_jpeg", broken)
    with pytest.raises(OptionError, match=r"^--decode_on_device: torchvision \S+ cannot decode JPEGs on cuda:7 \("):
        decode_batch(worker_batch([{"bytes": jpeg(), "path": "a.jpg"}]), "cuda:7", SIZE)


def test_option_is_pretraining_only():
    assert build_pretrain_parser().parse_args(["--decode_on_device"]).decode_on_device is True
    for parser in (build_finetune_parser(), build_linprobe_parser()):
        with pytest.raises(SystemExit):
            parser.parse_args(["--decode_on_device"])


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/train/{a,b}: 12 RGB and 4 grayscale JPEGs (small, 48 × 40), a PNG, a CMYK JPEG, a truncated JPEG and
    one with broken scan data."""
    root = tmp_path_factory.mktemp("device_decode_images") / "train"
    for folder in ("a", "b"):
        (root / folder).mkdir(parents=True)
    for index in range(16):
        image = Image.fromarray(photo(48, 40, seed=index)).convert("L" if index % 4 == 3 else "RGB")
        image.save(root / "ab"[index % 2] / f"{index:02d}.jpg", quality=90)
    image = Image.fromarray(photo(48, 40, seed=99))
    image.save(root / "a" / "png.png")
    image.convert("CMYK").save(root / "b" / "cmyk.jpg")
    good = encoded(image, "JPEG", quality=90)
    (root / "a" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "b" / "corrupt_scan.jpg").write_bytes(corrupt_scan(good))
    return root


def _argv(folder: Path, output: Path, cache: Path, *extra: str) -> list[str]:
    argv = tiny_pretrain_argv(folder.parent, output, cache, "--per_device_train_batch_size", "5", *extra)
    argv[argv.index("--train_dir") + 1] = str(folder)
    argv[argv.index("--validation_dir") : argv.index("--validation_dir") + 2] = []
    return argv + ["--decode_on_device", "--report_to", "none"]


def test_loaders_deliver_encoded_batches_from_worker_processes(mixed_folder: Path, datasets_cache: Path, tmp_path):
    args = parse_args_with_recipe(
        build_pretrain_parser(), _argv(mixed_folder, tmp_path, datasets_cache, "--dataloader_num_workers", "1")
    )
    loaders, _ = build_pretrain_data(args, 32, 1, 0)
    images = 0
    for epoch in range(2):
        for batch in loaders.epoch_loader(epoch):
            assert isinstance(batch["jpegs"], EncodedJpegs) and next(iter(batch)) == "jpeg_mask"
            pixels = decode_batch(batch, "cpu", 32, unreadable=loaders.unreadable)
            assert pixels.dtype == torch.uint8 and pixels.shape[1:] == (3, 32, 32)
            images += len(pixels)
    assert images == 2 * 18  # 20 files, batch 5: every file read in each epoch; 2 unreadable, counted once
    assert {item.split(" (")[0].rsplit("/", 1)[-1] for item in loaders.unreadable.files} == {
        "truncated.jpg",
        "corrupt_scan.jpg",
    }


def test_decoding_loader_hands_out_each_batch_decoded_in_order(mixed_folder: Path, datasets_cache: Path, tmp_path):
    args = parse_args_with_recipe(build_pretrain_parser(), _argv(mixed_folder, tmp_path, datasets_cache))
    loaders, _ = build_pretrain_data(args, 32, 1, 0)
    torch.manual_seed(0)  # no worker processes: the crop boxes are drawn from the global RNG
    expected = [decode_batch(batch, "cpu", 32) for batch in loaders.epoch_loader(0)]
    torch.manual_seed(0)
    decoding = DeviceDecodingLoader(loaders.epoch_loader(0), "cpu", 32, unreadable=loaders.unreadable)
    decoded = list(decoding)
    assert len(decoding) == len(decoded) == len(expected) == 4
    for batch, pixels in zip(decoded, expected):
        assert list(batch) == ["pixel_values"] and torch.equal(batch["pixel_values"], pixels)
    assert {item.split(" (")[0].rsplit("/", 1)[-1] for item in loaders.unreadable.files} == {
        "truncated.jpg",
        "corrupt_scan.jpg",
    }


def test_pretraining_run_with_decode_on_device(mixed_folder: Path, datasets_cache: Path, tmp_path: Path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = load_pretrain_script().main(
            _argv(mixed_folder, tmp_path / "run", datasets_cache, "--max_train_steps", "4", "--logging_steps", "2")
        )
        streamed = load_pretrain_script().main(
            _argv(mixed_folder, tmp_path / "stream", datasets_cache, "--streaming", "--max_train_steps", "3")
        )
    finally:
        torch.set_num_threads(threads)
    assert results["global_step"] == 4 and (tmp_path / "run" / "model.safetensors").is_file()
    assert results["unreadable_images"] == 2  # truncated.jpg (on a worker) and corrupt_scan.jpg (on the device)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [record for record in records if "loss" in record]
    assert [record["step"] for record in losses] == [2, 4]
    assert all(np.isfinite(record["loss"]) and record["data_time"] <= record["step_time"] for record in losses)
    assert streamed["global_step"] == 3 and (tmp_path / "stream" / "model.safetensors").is_file()
