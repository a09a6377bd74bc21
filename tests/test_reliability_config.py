"""Bad configuration: every case exits with status 2 and exactly one error line naming the option, no traceback,
before any training (cheap checks come before loading data or models). The scripts run in-process through their
``__main__`` block (``runpy``), so the real error handling is exercised without a Python start-up per case."""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, tiny_pretrain_argv


def run_script(script: str, argv: list[str]) -> tuple[int, str]:
    """Run scripts/<script> as ``__main__`` with ``argv``; its exit status and stderr."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    stderr, stdout = io.StringIO(), io.StringIO()
    saved_argv = sys.argv
    sys.argv = [script, *argv]
    code = 0
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            runpy.run_path(str(REPO_ROOT / "scripts" / script), run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved_argv
    return code, stderr.getvalue()


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers ViT model folder (another architecture), config only."""
    folder = tmp_path_factory.mktemp("vit")
    (folder / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 64}))
    return folder


# (extra options, the option the error line must name); base: tiny recipe, training folder, output folder.
PRETRAIN_CASES = [
    (["--mask_ratio", "1.2"], "--mask_ratio"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps"),
    (["--train_dir", "/does/not/exist"], "--train_dir"),
    (["--num_train_epochs", "0"], "--num_train_epochs"),
    (["--warmup_epochs", "-1"], "--warmup_epochs"),
    (["--blr", "-1"], "--blr"),
    (["--learning_rate", "0"], "--learning_rate"),
    (["--checkpointing_steps", "abc"], "--checkpointing_steps"),
    (["--checkpoints_total_limit", "0"], "--checkpoints_total_limit"),
    (["--model_config_overrides", "hidden_sise=128"], "--model_config_overrides"),
    (["--model_config_overrides", "image_size=36"], "--model_config_overrides"),  # not divisible by patch 8
    (["--input_size", "64"], "--input_size"),
    (["--model_name_or_path", "/no/such/model"], "--model_name_or_path"),
    (["--model_name_or_path", "VIT_FOLDER"], "--model_name_or_path"),
    (["--resume_from_checkpoint", "/no/such/checkpoint"], "--resume_from_checkpoint"),
    (["--resume_from_checkpoint", "OUTPUT/checkpoints"], "--resume_from_checkpoint"),  # a folder, not a checkpoint
    (["--mixed_precision", "fp16"], "--mixed_precision"),
    (["--knn_every", "5"], "--knn_every"),  # no labelled validation images
    (["--adam_beta2", "1.5"], "--adam_beta2"),
    (["--streaming"], "--streaming"),  # needs --max_train_steps
    (["--config", "/no/such/recipe.yaml"], "--config"),
    (["--image_column_name", "nope"], "--image_column_name"),  # found when the data is opened
    (["--train_dir", "", "--dataset_name", "IMAGES", "--validation_split", "nonexistent"], "--validation_split"),
    (["--train_dir", "", "--dataset_name", "IMAGES", "--train_split", "nope"], "--train_split"),
]


@pytest.mark.parametrize(("extra", "option"), PRETRAIN_CASES, ids=[" ".join(c[0])[:40] for c in PRETRAIN_CASES])
def test_pretrain_bad_option_gives_one_line_naming_it(
    extra: list[str], option: str, image_folder: Path, datasets_cache: Path, vit_folder: Path, tmp_path: Path
):
    output = tmp_path / "out"
    (output / "checkpoints").mkdir(parents=True)
    placeholders = {"VIT_FOLDER": str(vit_folder), "OUTPUT": str(output), "IMAGES": str(image_folder)}
    for placeholder, value in placeholders.items():
        extra = [item.replace(placeholder, value, 1) if item.startswith(placeholder) else item for item in extra]
    argv = tiny_pretrain_argv(image_folder, output, datasets_cache, "--report_to", "none", *extra)
    if option == "--knn_every":  # no validation folder: the kNN monitor has no queries
        index = argv.index("--validation_dir")
        del argv[index : index + 2]
    code, stderr = run_script("pretrain.py", argv)
    error_lines = [line for line in stderr.splitlines() if "error:" in line]
    assert code == 2, stderr[-2000:]
    assert len(error_lines) == 1 and option in error_lines[0], stderr[-2000:]
    assert "Traceback" not in stderr and "usage:" not in stderr
    assert not (output / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("script", "argv", "name"),
    [
        ("push_to_hub.py", ["some_folder", "no-slash-repo"], "repo_id"),
        ("convert_checkpoint.py", ["/no/such/checkpoint.pth", "OUT"], "/no/such/checkpoint.pth"),
        ("visualize.py", ["/no/such/model", "image.png"], "/no/such/model"),
        ("visualize.py", ["OUT", "image.png", "--mask_ratio", "1.5"], "--mask_ratio"),
    ],
)
def test_other_scripts_bad_arguments_give_one_line(script: str, argv: list[str], name: str, tmp_path: Path):
    code, stderr = run_script(script, [str(tmp_path / "out") if item == "OUT" else item for item in argv])
    error_lines = [line for line in stderr.splitlines() if "error:" in line]
    assert code == 2 and len(error_lines) == 1 and name in error_lines[0], stderr[-2000:]
    assert "Traceback" not in stderr and "usage:" not in stderr
