"""What users watch during training: a JSON-lines log, a tqdm progress bar and timing of data vs compute."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from tqdm.auto import tqdm


class JsonlLogger:
    """Append one JSON object per line to ``path`` (main process only; other processes get a no-op logger).
    Resuming appends, dropping records past the resume step so the file reads like one uninterrupted run."""

    def __init__(self, path: str, enabled: bool = True, resume_step: int | None = None) -> None:
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if resume_step is None:
            open(path, "w", encoding="utf-8").close()
        elif os.path.exists(path):
            kept = [record for record in read_jsonl(path) if record.get("step", 0) <= resume_step]
            with open(path, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(record) + "\n" for record in kept)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({key: _plain(value) for key, value in record.items()}) + "\n")


def read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class StepTimer:
    """Splits wall time between waiting for data and computing, over a logging interval."""

    def __init__(self) -> None:
        self.reset()
        self._mark = time.perf_counter()

    def reset(self) -> None:
        self.data_time = 0.0
        self.compute_time = 0.0
        self.images = 0
        self.steps = 0
        self.started = time.perf_counter()

    def data_ready(self) -> None:
        now = time.perf_counter()
        self.data_time += now - self._mark
        self._mark = now

    def compute_done(self, images: int) -> None:
        now = time.perf_counter()
        self.compute_time += now - self._mark
        self._mark = now
        self.images += images

    def restart_clock(self) -> None:
        """Exclude time spent outside the loop (checkpoints, evaluation) from the next data-time reading."""
        self._mark = time.perf_counter()

    def summary(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        steps = max(self.steps, 1)
        return {
            "images_per_sec": self.images / elapsed,
            "data_time": self.data_time / steps,
            "step_time": (self.data_time + self.compute_time) / steps,
        }


def progress_bar(total: int, initial: int = 0, enabled: bool = True, desc: str = "train") -> tqdm:
    """The main process's bar over optimizer steps (``disable`` elsewhere so it prints once)."""
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step", dynamic_ncols=True)


def postfix(loss: float, lr: float, images_per_sec: float) -> dict[str, str]:
    return {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "img/s": f"{images_per_sec:.1f}"}


__all__ = ["JsonlLogger", "StepTimer", "postfix", "progress_bar", "read_jsonl"]
