"""Bad images in an image folder: unreadable files (truncated or corrupt JPEG/PNG, zero bytes, non-images, decompression
bombs) are skipped and counted with one warning listing them by default and stop the run naming the file with
--strict_data; unusual but valid modes (CMYK, 16-bit, palette + transparency, 1×1) are converted correctly; an empty
class folder is harmless."""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_pretrain_script, tiny_pretrain_argv
from PIL import Image, ImageFile

from mae_hf.training.args import build_pretrain_parser, parse_args_with_recipe
from mae_hf.training.data import (
    UnreadableImageError,
    build_pretrain_data,
    decode_image,
    to_rgb,
)

GOOD_COUNT = 10


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width × height`` (a decompression bomb: PIL refuses it from the header alone)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """ROOT/train/{good,mixed,empty}: 10 readable images in unusual modes, 7 unreadable files, a text file and an
    empty class folder. Returns the folder and the paths of the unreadable files."""
    root = tmp_path_factory.mktemp("bad_images") / "train"
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8))
    good, mixed = root / "good", root / "mixed"
    for folder in (good, mixed, root / "empty"):
        folder.mkdir(parents=True)
    for index in range(4):
        rgb.rotate(90 * index).save(good / f"rgb{index}.png")
    rgb.convert("CMYK").save(good / "cmyk.jpg")
    Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257).save(good / "gray16.png")
    palette = rgb.convert("P", palette=Image.ADAPTIVE)
    palette.save(good / "palette_transparency.png", transparency=0)
    Image.new("RGB", (1, 1), (10, 200, 30)).save(mixed / "one_pixel.png")
    rgb.convert("LA").save(mixed / "gray_alpha.png")
    rgb.convert("L").save(mixed / "gray.jpg")
    jpeg, png = _encoded(rgb, "JPEG", quality=90), _encoded(rgb, "PNG")
    corrupt_png = bytearray(png)
    corrupt_png[60:80] = bytes(20)  # damaged image data: the chunk CRC no longer matches
    unreadable = {
        mixed / "truncated.jpg": jpeg[: len(jpeg) // 2],
        mixed / "truncated.png": png[: len(png) // 2],
        mixed / "corrupt.jpg": jpeg[:20] + rng.integers(0, 256, 600, dtype=np.uint8).tobytes(),
        good / "corrupt.png": bytes(corrupt_png),
        good / "zero_bytes.png": b"",
        mixed / "not_an_image.jpg": b"<html>an error page saved as a .jpg</html>",
        mixed / "bomb.png": _png_with_size(12_000, 12_000),  # 1.4e8 px: PIL's warning range, refused here
        good / "huge_bomb.png": _png_with_size(40_000, 40_000),  # beyond 2 × MAX_IMAGE_PIXELS: PIL's error
    }
    for path, data in unreadable.items():
        path.write_bytes(data)
    (mixed / "notes.txt").write_text("not listed by the imagefolder builder")
    return root, {str(path) for path in unreadable}


def _args(folder: Path, output: Path, cache: Path, *extra: str):
    argv = tiny_pretrain_argv(folder.parent, output, cache, "--per_device_train_batch_size", "6", *extra)
    argv[argv.index("--train_dir") + 1] = str(folder)
    argv[argv.index("--validation_dir") : argv.index("--validation_dir") + 2] = []
    return argv


def test_truncated_images_are_not_loaded_half_grey():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_unusual_modes_are_converted_to_rgb(bad_folder: tuple[Path, set[str]]):
    root, _ = bad_folder
    gray16 = to_rgb(decode_image(str(root / "good" / "gray16.png")))
    reference = np.asarray(Image.open(root / "good" / "rgb0.png").convert("L"))
    assert gray16.mode == "RGB" and np.array_equal(np.asarray(gray16)[..., 0], reference)  # 16-bit rescaled
    palette = to_rgb(decode_image({"path": str(root / "good" / "palette_transparency.png"), "bytes": None}))
    index0 = np.asarray(Image.open(root / "good" / "palette_transparency.png")) == 0
    assert index0.any() and (np.asarray(palette)[index0] == 255).all()  # transparent → white
    cmyk = to_rgb(decode_image(str(root / "good" / "cmyk.jpg")))
    assert cmyk.mode == "RGB" and cmyk.size == (40, 40)
    one = to_rgb(decode_image(str(root / "mixed" / "one_pixel.png")))
    assert one.getpixel((0, 0)) == (10, 200, 30)


def test_default_skips_and_counts_every_unreadable_file(
    bad_folder: tuple[Path, set[str]], datasets_cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    root, unreadable = bad_folder
    parser = build_pretrain_parser()
    args = parse_args_with_recipe(parser, _args(root, tmp_path, datasets_cache))
    loaders, preview = build_pretrain_data(args, 32, 1, 0)
    assert len(loaders.dataset) == GOOD_COUNT + len(unreadable)  # no .txt file, nothing from the empty class
    images = 0
    with caplog.at_level(logging.WARNING, logger="mae_hf.training.data"):
        for epoch in range(2):
            for batch in loaders.epoch_loader(epoch):
                assert set(batch) == {"pixel_values"} and batch["pixel_values"].shape[1:] == (3, 32, 32)
                assert torch.isfinite(batch["pixel_values"]).all()
                images += len(batch["pixel_values"])
    summary = loaders.unreadable_summary()
    assert summary["unreadable_images"] == len(unreadable) == 8
    assert {item.split(" (")[0] for item in summary["unreadable_files"]} == unreadable
    assert images == 2 * GOOD_COUNT  # 18 files / batch 6: every file is read in each epoch
    warnings = [record.getMessage() for record in caplog.records if "unreadable" in record.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("Skipped 8 unreadable image(s)")  # once, not per epoch
    assert all(path in warnings[0] for path in unreadable)
    # The reconstruction grid only gets readable images.
    assert all(preview[i]["pixel_values"] is not None for i in range(len(preview)))


def test_training_runs_on_the_bad_folder_and_strict_mode_names_the_file(
    bad_folder: tuple[Path, set[str]], datasets_cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    root, unreadable = bad_folder
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with caplog.at_level(logging.WARNING, logger="mae_hf.training.data"):
            results = load_pretrain_script().main(
                _args(root, tmp_path / "default", datasets_cache, "--max_train_steps", "4", "--report_to", "none")
            )
        assert results["global_step"] == 4 and (tmp_path / "default" / "model.safetensors").is_file()
        assert any(record.getMessage().startswith("Skipped 8 unreadable") for record in caplog.records)
        assert results["unreadable_images"] == 8 and len(results["unreadable_files"]) == 8
        summary = json.loads((tmp_path / "default" / "log.jsonl").read_text().splitlines()[-1])
        assert summary["unreadable_images"] == 8  # the run log says what was skipped

        with pytest.raises(UnreadableImageError) as raised:
            load_pretrain_script().main(
                _args(root, tmp_path / "strict", datasets_cache, "--strict_data", "--report_to", "none")
            )
    finally:
        torch.set_num_threads(threads)
    message = str(raised.value)
    assert message.startswith("--strict_data: cannot read image ") and "\n" not in message
    assert sum(path in message for path in unreadable) == 1
