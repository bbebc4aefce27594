"""Shared fixtures: a tiny random-init model saved as a local Hugging Face directory (no pre-training needed),
and helpers to compose the real Hydra config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")

# tests never download anything and must not race a developer's own ~/.cache/quadrl
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-64 Llama with the built-in char tokenizer, untrained (seed 0)."""
    from experiments.base_model import build_tiny_model
    from experiments.tasks.tokenizer import build_char_tokenizer

    out = tmp_path_factory.mktemp("tiny_model")
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(
        tokenizer, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, seed=0
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def compose_config(*overrides: str):
    """The root config as `python -m experiments.train <overrides>` would see it."""
    from hydra import compose, initialize_config_dir

    from grpo.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("config", overrides=list(overrides))
