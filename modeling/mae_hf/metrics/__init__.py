"""``evaluate`` metric modules shipped with the package, so evaluation works offline."""

from pathlib import Path

METRICS_DIR = Path(__file__).parent


def metric_path(name: str) -> str:
    """The local path ``evaluate.load`` takes for a shipped metric (e.g. ``"topk_accuracy"``)."""
    path = METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"No shipped metric {name!r}; available: {sorted(p.name for p in METRICS_DIR.iterdir())}")
    return str(path)
