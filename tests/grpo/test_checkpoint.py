"""Checkpoints are loaded with weights_only=True: a pickled object is refused."""

from __future__ import annotations

import pickle

import pytest
import torch

from grpo import checkpoint


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_checkpoint_load_refuses_pickled_objects(tmp_path):
    (tmp_path / checkpoint.CHECKPOINT_DIR).mkdir()
    with open(tmp_path / checkpoint.CHECKPOINT_DIR / checkpoint.STATE_FILE, "wb") as fh:
        torch.save({"next_step": 1, "evil": _Payload()}, fh)
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.load(tmp_path)
    good = {"next_step": 3, "rng": checkpoint.rng_state({"g": torch.Generator().manual_seed(1)})}
    checkpoint.save(tmp_path, good)
    loaded = checkpoint.load(tmp_path)
    assert loaded is not None and loaded["next_step"] == 3
