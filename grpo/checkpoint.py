"""Resumable checkpoints: trainable weights, optimizer, scheduler, every RNG state, data position, MLflow run id.

Written to a temporary directory and renamed into place, so a crash mid-write keeps the previous checkpoint.
Loaded with ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain Python values only.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: gen.get_state() for name, gen in generators.items()},
    }


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in generators.items():
        gen.set_state(state["generators"][name])


def save(run_dir: Path, state: dict[str, Any], export: Any | None = None) -> Path:
    """Atomically write ``run_dir/checkpoint``. ``export(dir)`` may also save the model in HF format there."""
    final = run_dir / CHECKPOINT_DIR
    tmp = run_dir / (CHECKPOINT_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / STATE_FILE)
    if export is not None:
        export(tmp / "model")
    old = run_dir / (CHECKPOINT_DIR + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CHECKPOINT_DIR / STATE_FILE
    if not path.is_file():
        old = run_dir / (CHECKPOINT_DIR + ".old") / STATE_FILE  # crashed between the two renames
        if not old.is_file():
            return None
        path = old
    return torch.load(path, map_location="cpu", weights_only=True)
