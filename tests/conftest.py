"""Shared test helpers: a tiny generated image folder, the pre-training script as a function, and an offline
environment for subprocesses. Nothing here changes the environment of other tests."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import evaluate  # noqa: F401 - the 🤗 library, cached in sys.modules before any test puts scripts/ on sys.path
import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_IMAGE_SIZE = 32
TINY_CLASSES = 3


def offline_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: offline Hub, CPU only, the repo's python first on PATH."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        CUDA_VISIBLE_DEVICES="",
        ACCELERATE_USE_CPU="1",
        PYTHONPATH=str(REPO_ROOT / "scripts") + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.update(extra)
    return env


def _write_image(path: Path, index: int, label: int, rng: np.random.Generator) -> None:
    """Class-coloured noise in every PIL mode the loader must handle (converted to RGB by the pipeline)."""
    pixels = (rng.random((TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)) * 120).astype(np.uint8)
    pixels[..., label % 3] += 120
    image = Image.fromarray(pixels)
    kind = index % 6
    if kind == 1:
        image = image.convert("L")
    elif kind == 2:
        image = image.convert("P", palette=Image.ADAPTIVE)
        image.info["transparency"] = 0
    elif kind == 3:
        image = image.convert("RGBA")
    elif kind == 4:
        image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
    elif kind == 5:
        image.convert("CMYK").save(path.with_suffix(".jpg"), quality=95)
        return
    image.save(path.with_suffix(".png"))


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/{train,validation}/<class>/*: 48 train and 12 validation 32 px images of 3 classes, mixed modes."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 16), ("validation", 4)):
        for label in range(TINY_CLASSES):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(per_class):
                _write_image(folder / f"{index:03d}", index, label, rng)
    return root


@pytest.fixture(scope="session")
def datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("datasets_cache")


def load_pretrain_script():
    """scripts/pretrain.py as a module, so tests can call ``main(argv)`` in-process. Accelerate keeps its state
    (mixed precision, ...) in process-wide singletons; reset them so each run starts as a fresh process would."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()

    spec = importlib.util.spec_from_file_location("mae_pretrain_script", REPO_ROOT / "scripts" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mae_pretrain_script", module)
    spec.loader.exec_module(module)
    return module


def tiny_pretrain_argv(image_folder: Path, output_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    """A seconds-long CPU run of the tiny recipe on the generated folder; ``extra`` overrides."""
    return [
        "--config",
        str(REPO_ROOT / "configs" / "pretrain_tiny_cpu.yaml"),
        "--train_dir",
        str(image_folder / "train"),
        "--validation_dir",
        str(image_folder / "validation"),
        "--output_dir",
        str(output_dir),
        "--cache_dir",
        str(cache_dir),
        "--disable_tqdm",
        *extra,
    ]


def load_script(name: str):
    """``scripts/<name>.py`` as a module (``main(argv)`` in-process), with Accelerate's singletons reset."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    spec = importlib.util.spec_from_file_location(f"mae_{name}_script", REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_mae_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny pre-training folder (32 px, patch 8, width 32, depth 2) as written by pretrain.py."""
    import torch

    from mae_hf import MAEConfig, MAEForPreTraining

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_mae")
    MAEForPreTraining(MAEConfig.from_preset("mae-vit-tiny-test", norm_pix_loss=True)).save_pretrained(folder)
    return folder
