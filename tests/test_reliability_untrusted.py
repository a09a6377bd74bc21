"""Untrusted files: no code path unpickles without ``weights_only=True`` unless guarded by an explicit trust flag,
the Hub-bound modeling files neither touch the network nor execute strings, and a malicious pickle is refused
without running its payload."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

from mae_hf.checkpoints import UnsafeCheckpointError, load_checkpoint_file

HUB_BOUND = [
    REPO_ROOT / "modeling" / "mae_hf" / "modeling_mae_hf.py",
    REPO_ROOT / "modeling" / "mae_hf" / "configuration_mae_hf.py",
]
FORBIDDEN_IN_HUB_CODE = (
    "eval(", "exec(", "pickle", "torch.load", "urllib", "requests", "httpx", "socket", "subprocess", "os.system",
    "compile(", "__import__",
)  # fmt: skip


@pytest.mark.parametrize("path", HUB_BOUND, ids=lambda p: p.name)
def test_hub_bound_code_has_no_network_or_string_execution(path: Path):
    source = path.read_text(encoding="utf-8")
    found = [token for token in FORBIDDEN_IN_HUB_CODE if token in source]
    assert not found, f"{path.name} contains {found}"


def _python_files() -> list[Path]:
    return sorted(
        [*(REPO_ROOT / "modeling").rglob("*.py"), *(REPO_ROOT / "scripts").rglob("*.py")],
        key=str,
    )


def _call_name(node: ast.Call) -> str:
    return ast.unparse(node.func)


def _guarded_by_trust(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside an ``if`` whose condition names a trust flag (``trust_pickle``, ...)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "trust" in ast.unparse(node.test):
            return True
    return False


def test_every_unpickling_call_is_weights_only_or_explicitly_trusted():
    offenders = []
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node)
            where = f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load"):
                offenders.append(f"{where} {name}")
            if name.endswith("torch.load") or name == "load" and "torch" in ast.unparse(node):
                weights_only = [k.value for k in node.keywords if k.arg == "weights_only"]
                safe = weights_only and isinstance(weights_only[0], ast.Constant) and weights_only[0].value is True
                if not safe and not _guarded_by_trust(node, parents):
                    offenders.append(f"{where} {ast.unparse(node)}")
    assert not offenders, offenders


class _CreatesFileOnUnpickle:
    """A pickle payload: unpickling it runs code (here: creates a marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_its_payload_does_not_run(tmp_path: Path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {"weight": torch.zeros(2)}, "payload": _CreatesFileOnUnpickle(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match="--trust_pickle"):
        load_checkpoint_file(path)
    assert not marker.exists()
