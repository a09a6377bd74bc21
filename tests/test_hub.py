"""Publishing round trip against the loopback Hub double (tests/hub_server.py): push trained tiny models with
scripts/push_to_hub.py and with the training scripts' ``--push_to_hub`` helpers, download them with
``snapshot_download`` and load them in a fresh process where ``mae_hf`` cannot be imported."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest
import torch
from hub_server import HubServer
from huggingface_hub import ModelCard

from mae_hf import MAEConfig, MAEForImageClassification, MAEForPreTraining
from mae_hf.hub import add_hub_arguments, check_hub_arguments

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TOKEN = "hf_test_token"
LABELS = {0: "cat", 1: "dog", 2: "bird"}
MODEL_FILES = {
    "README.md",
    "config.json",
    "model.safetensors",
    "configuration_mae_hf.py",
    "modeling_mae_hf.py",
    "preprocessor_config.json",
}


@pytest.fixture(scope="module")
def hub():
    server = HubServer().start()
    yield server
    server.stop()


def _hub_env(hub: HubServer, tmp_path: pathlib.Path, **extra: str) -> dict[str, str]:
    """The environment of a process talking to the test Hub: its endpoint (read by huggingface_hub at import),
    online mode (``make test`` sets HF_HUB_OFFLINE=1 for everything else), and private caches."""
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(tmp_path / "hf_home"),  # no saved login from the machine
        HF_HUB_CACHE=str(tmp_path / "hub_cache"),
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        **extra,
    )
    return env


def _run(args: list[str], env: dict[str, str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _train_a_few_steps(model: torch.nn.Module, make_batch, steps: int = 3) -> torch.nn.Module:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        loss = model(**make_batch()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


PUSH_FROM_ARGS_SCRIPT = textwrap.dedent(
    """
    import argparse, sys
    from mae_hf.hub import add_hub_arguments, push_folder_from_args

    parser = add_hub_arguments(argparse.ArgumentParser())
    parser.add_argument("--output_dir")
    args = parser.parse_args(sys.argv[1:])
    for _ in range(2):  # the second push finds the repository already there
        print(push_folder_from_args(args, args.output_dir))
    """
)

FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class HideProject(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mae_hf" or name.startswith("mae_hf."):
                raise ImportError("mae_hf is hidden in this process")

    sys.meta_path.insert(0, HideProject())
    sys.path = [p for p in sys.path if not p.rstrip("/").endswith("modeling")]
    import torch
    from huggingface_hub import snapshot_download
    from PIL import Image
    from transformers import AutoModelForPreTraining, pipeline

    try:
        import mae_hf  # noqa: F401
        raise SystemExit("mae_hf should not be importable here")
    except ImportError:
        pass
    pretrain_repo, classifier_repo, expected_file = sys.argv[1:4]
    expected = torch.load(expected_file)
    pretrain_dir = snapshot_download(pretrain_repo)
    classifier_dir = snapshot_download(classifier_repo)  # private: needs the HF_TOKEN of the environment
    model = AutoModelForPreTraining.from_pretrained(pretrain_dir, trust_remote_code=True).eval()
    assert model.__class__.__module__.startswith("transformers_modules"), model.__class__.__module__
    with torch.no_grad():
        out = model(expected["images"], noise=expected["noise"])
    assert torch.equal(out.logits, expected["logits"]) and torch.equal(out.loss, expected["loss"])
    classify = pipeline("image-classification", model=classifier_dir, trust_remote_code=True)
    predictions = classify(Image.new("RGB", (40, 40), (200, 10, 10)), top_k=3)
    features = pipeline("image-feature-extraction", model=pretrain_dir, trust_remote_code=True)(
        Image.new("RGB", (32, 32), (0, 90, 30))
    )
    print(json.dumps({
        "labels": sorted(p["label"] for p in predictions),
        "top": predictions[0]["label"],
        "feature_shape": list(torch.tensor(features).shape),
        "classifier_class": type(classify.model).__name__,
    }))
    """
)


def test_push_download_and_load_without_the_package(hub, tmp_path):
    # 1. two trained tiny models, in training output folders that also hold checkpoints and logs
    torch.manual_seed(0)
    config = MAEConfig.from_preset("mae-vit-tiny-test", norm_pix_loss=True)
    pretrain = _train_a_few_steps(MAEForPreTraining(config), lambda: {"pixel_values": torch.randn(4, 3, 32, 32)})
    pretrain_dir = tmp_path / "pretrain_run"
    pretrain.save_pretrained(pretrain_dir)
    (pretrain_dir / "checkpoints" / "step_2").mkdir(parents=True)
    (pretrain_dir / "checkpoints" / "step_2" / "model.safetensors").write_bytes(b"not for the hub")
    (pretrain_dir / "runs").mkdir()
    (pretrain_dir / "runs" / "events.out.tfevents.1.host").write_bytes(b"tensorboard")
    (pretrain_dir / "metrics.jsonl").write_text('{"loss": 1.0}\n')
    (pretrain_dir / "checkpoint-2.pth").write_bytes(b"pickle")
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        out = pretrain(images, noise=noise)
    torch.save({"images": images, "noise": noise, "logits": out.logits, "loss": out.loss}, tmp_path / "expected.pt")

    classifier_config = MAEConfig.from_preset(
        "mae-vit-tiny-test", num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    )
    classifier = _train_a_few_steps(
        MAEForImageClassification(classifier_config),
        lambda: {"pixel_values": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 0])},
    )
    classifier_dir = tmp_path / "classifier_run"
    classifier.save_pretrained(classifier_dir)
    (classifier_dir / "train_log.jsonl").write_text("{}\n")

    # 2. push: the command line (token from HF_TOKEN) and a training script's --push_to_hub options (--hub_token)
    push_env = _hub_env(hub, tmp_path, HF_TOKEN=TOKEN)
    result = _run(
        [sys.executable, str(REPO_ROOT / "scripts" / "push_to_hub.py"), str(pretrain_dir), "user/mae-tiny-pretrain"],
        push_env,
        tmp_path,
    )
    assert "Pushed" in result.stdout and hub.endpoint in result.stdout
    (tmp_path / "push_from_args.py").write_text(PUSH_FROM_ARGS_SCRIPT)
    _run(
        [
            sys.executable,
            str(tmp_path / "push_from_args.py"),
            "--output_dir",
            str(classifier_dir),
            "--push_to_hub",
            "--hub_model_id",
            "user/mae-tiny-classifier",
            "--hub_private",
            "--hub_token",
            TOKEN,
        ],
        _hub_env(hub, tmp_path),
        tmp_path,
    )

    # 3. what the Hub received: the model folder only, written with the token, private where asked
    for repo_id in ("user/mae-tiny-pretrain", "user/mae-tiny-classifier"):
        assert set(hub.repos[repo_id].files) == MODEL_FILES, repo_id
    assert hub.repos["user/mae-tiny-classifier"].private and not hub.repos["user/mae-tiny-pretrain"].private
    assert len(hub.repos["user/mae-tiny-classifier"].commits) == 1  # the unchanged second push made no commit
    commits = [r for r in hub.requests if r.method == "POST" and "/commit/" in r.path]
    assert commits and all(r.authorization == f"Bearer {TOKEN}" for r in commits)
    uploaded = json.loads(hub.repos["user/mae-tiny-pretrain"].files["config.json"])
    assert uploaded["auto_map"]["AutoModelForPreTraining"] == "modeling_mae_hf.MAEForPreTraining"
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{hub.endpoint}/api/models/user/mae-tiny-classifier/revision/main", timeout=10)
    assert anonymous.value.code == 404

    # 4. the cards parse back with the expected metadata
    for repo_id, pipeline_tag in (
        ("user/mae-tiny-pretrain", "image-feature-extraction"),
        ("user/mae-tiny-classifier", "image-classification"),
    ):
        card_path = tmp_path / f"{repo_id.split('/')[1]}.md"
        card_path.write_bytes(hub.repos[repo_id].files["README.md"])
        card = ModelCard.load(card_path)
        assert card.data.library_name == "transformers" and card.data.pipeline_tag == pipeline_tag
        assert card.data.license and card.data.tags[0] == "mae" and "custom_code" in card.data.tags
        assert f'from_pretrained("{repo_id}", trust_remote_code=True)' in card.text

    # 5. download and load in a fresh process without mae_hf: remote code, exact outputs, pipelines
    (tmp_path / "fresh.py").write_text(FRESH_PROCESS_SCRIPT)
    result = _run(
        [
            sys.executable,
            str(tmp_path / "fresh.py"),
            "user/mae-tiny-pretrain",
            "user/mae-tiny-classifier",
            str(tmp_path / "expected.pt"),
        ],
        _hub_env(hub, tmp_path, HF_TOKEN=TOKEN),
        tmp_path,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["labels"] == ["bird", "cat", "dog"] and report["classifier_class"] == "MAEForImageClassification"
    assert report["feature_shape"][-2:] == [17, 32]
    assert report["top"] in LABELS.values()
    resolves = [r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]
    assert {r.path.rsplit("/", 1)[1] for r in resolves} >= MODEL_FILES


def test_push_command_line_errors_are_one_clear_line(tmp_path, capsys):
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import push_to_hub
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))
    assert push_to_hub.main([str(tmp_path), "no-namespace"]) == 2
    assert "must look like 'user/name'" in capsys.readouterr().err
    assert push_to_hub.main([str(tmp_path / "missing"), "user/x"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("push_to_hub.py: error: Model folder") and len(error.splitlines()) == 1
    (tmp_path / "config.json").write_text("{}")
    assert push_to_hub.main([str(tmp_path), "user/x"]) == 2
    assert "lacks ['model.safetensors']" in capsys.readouterr().err


def test_training_script_hub_options():
    parser = add_hub_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--push_to_hub", "--hub_model_id", "org/mae", "--hub_private"])
    assert args.push_to_hub and args.hub_private and args.hub_model_id == "org/mae" and args.hub_token is None
    check_hub_arguments(args)
    with pytest.raises(ValueError, match="--push_to_hub needs --hub_model_id"):
        check_hub_arguments(parser.parse_args(["--push_to_hub"]))
    with pytest.raises(ValueError, match="'user/name'"):
        check_hub_arguments(parser.parse_args(["--hub_model_id", "mae"]))
