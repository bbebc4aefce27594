"""Shared fixtures: a tiny random-init model saved as a local Hugging Face directory (no pre-training needed),
and helpers to compose the real Hydra config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")

# tests never download anything and must not race a developer's own ~/.cache/quadrl
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on the 2-core machine, 2 threads next to any other busy process run ~50x slower
    (measured: 30 smoke steps 3.6 s with 1 thread, >170 s with 2)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def tiny_llama(seed: int = 0, **config):
    """A random-init LlamaForCausalLM (seeded through the global RNG); keywords override the small default config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    defaults = dict(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**defaults, **config}))


def compose_config(*overrides: str, register=None):
    """The root config as `python -m experiments.train <overrides>` would see it (``register``: another app's
    schema, e.g. ``experiments.probe.register_probe_configs`` for quadrl-probe's)."""
    from hydra import compose, initialize_config_dir

    from grpo.config import register_configs

    (register or register_configs)()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("config", overrides=list(overrides))


def write_sums_jsonl(path: Path) -> Path:
    """Single-digit sums as a math dataset; the 'solution' is the bare answer (no \\boxed: the built-in char
    alphabet has no braces), which math_file's verifier reads as the last number."""
    rows = [
        {"problem": f"{a}+{b}=", "answer": str(a + b), "solution": str(a + b)}
        for a in range(10)
        for b in range(10)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="session")
def math_jsonl(tmp_path_factory) -> Path:
    """:func:`write_sums_jsonl` in a session temp dir."""
    return write_sums_jsonl(tmp_path_factory.mktemp("data") / "sums.jsonl")


def math_task(path: Path) -> list[str]:
    return [
        "task=math_file",
        f"task.path={path}",
        "task.prompt_template='{prompt}'",
        "task.solution_field=solution",
        "task.test_fraction=0.2",
    ]


@pytest.fixture(scope="session")
def sft_model_dir(tmp_path_factory, math_jsonl) -> Path:
    """A tiny model SFT-ed on the sums so that sampled answers are right sometimes (real reward signal)."""
    from experiments.base_model import SFTRecipe, TinyArchitecture, pretrain

    out = tmp_path_factory.mktemp("sft_model")
    recipe = SFTRecipe(
        seed=0,
        architecture=TinyArchitecture(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),
        target_accuracy=(0.1, 0.9),
        eval_every=10,
        dense_eval_every=5,
        warmup_steps=10,
        batch_size=32,
        allow_out_of_band=True,
        max_steps=300,
    )
    pretrain(
        "math_file",
        {
            "path": str(math_jsonl),
            "prompt_template": "{prompt}",
            "solution_field": "solution",
            "test_fraction": 0.2,
        },
        out,
        recipe,
        max_seconds=240,
        tracking_uri=None,
    )
    return out


def make_trainer(tmp_path: Path, model_dir: Path, jsonl: Path, *overrides: str, reward=None, teacher=None):
    """A Trainer on a local model and the JSONL sums (4 prompts x 4 samples, 4 new tokens unless overridden),
    without tracking; ``reward(example, completion)`` replaces the task's verifier when given; ``teacher`` is the
    distillation teacher (a model directory, loaded like the policy) for ``algo=opd``."""
    from omegaconf import OmegaConf

    import interventions  # noqa: F401  (registers every method)
    from experiments.tasks import make_task
    from grpo.credit import build_intervention
    from grpo.metrics import NullSink
    from grpo.model import load_policy
    from grpo.trainer import Trainer

    raw = compose_config(
        "model=local",
        f"model.path={model_dir}",
        *math_task(jsonl),
        "tracking=off",
        "algo.prompts_per_step=4",
        "algo.group_size=4",
        "sampling.max_new_tokens=4",
        "train.log_samples_every=0",
        f"run_dir={tmp_path}",
        *overrides,
    )
    cfg = OmegaConf.to_object(raw)
    task = make_task(**OmegaConf.to_container(raw.task))
    if reward is not None:
        task.reward = reward
        task.rewards = None  # score through `reward` (math_file's batch method would bypass it)
    policy = load_policy(cfg.model, model_dir, need_reference=cfg.algo.beta > 0, seed=cfg.seed)
    intervention = build_intervention(OmegaConf.to_container(raw.intervention))
    teacher_model = None
    if teacher is not None:
        from grpo.model import load_teacher

        teacher_model = load_teacher(cfg.model, teacher, policy.tokenizer)
    from grpo.instruments import standard_instruments

    measure = standard_instruments(cfg, intervention, policy, task)
    return Trainer(
        cfg, policy, task, intervention, NullSink(), tmp_path, teacher=teacher_model, instruments=measure
    )


FORK_PARAMS = {"length": 6, "decisive": 2, "n_test": 20, "test_pool_fraction": 0.5}
"""A small fork task (60 patterns, 4 free letters per response): cheap to enumerate, quick to learn."""


@pytest.fixture(scope="session")
def fork_model_dir(tmp_path_factory) -> Path:
    """The default tiny architecture SFT-ed on the small fork task into fork's band (greedy accuracy >= 0.9, ~80
    steps): a policy with partial success probabilities (~0.65), whose exact values the fork task enumerates."""
    from experiments.base_model import SFTRecipe, pretrain

    out = tmp_path_factory.mktemp("fork_model")
    recipe = SFTRecipe(seed=0, allow_out_of_band=True, max_steps=150)
    meta = pretrain("fork", FORK_PARAMS, out, recipe, max_seconds=900, tracking_uri=None)
    assert meta["in_band"], meta["history"]
    return out


def hand_probe(delta=None, delta_se=None, info=None, value_start=(0.6, 0.6)):
    """A CreditProbe built by hand: 2 responses x 3 tokens, rewards (1, 0), GRPO advantages (+1, -1), entropies
    [[0.9, 0.1, 0.2], [0.8, 0.05, 0.6]] (with an absolute split at 0.5: pos_high r0t0, pos_low r0t1-2,
    neg_high r1t0 and r1t2, neg_low r1t1), measured delta [[0.5, 0, 0.15], [-0.3, 0, -0.1]] with se 0.1 (0 on
    the two certain tokens, t = 1), I at r0t0 (0.3) and r1t0 (0.2)."""
    import math

    import torch

    from grpo.credit import TokenFacts
    from grpo.probe import CreditProbe, ProbePlan

    nan = math.nan
    mask = torch.ones(2, 3, dtype=torch.bool)
    delta = torch.tensor(delta or [[0.5, 0.0, 0.15], [-0.3, 0.0, -0.1]], dtype=torch.float64)
    delta_se = torch.tensor(delta_se or [[0.1, 0.0, 0.1], [0.1, 0.0, 0.1]], dtype=torch.float64)
    certain = torch.tensor([[False, True, False], [False, True, False]])
    info = torch.tensor(info or [[0.3, nan, nan], [0.2, nan, nan]], dtype=torch.float64)
    value = torch.full((2, 4), nan, dtype=torch.float64)
    value[:, 0] = torch.tensor(value_start, dtype=torch.float64)
    value[:, 3] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    facts = TokenFacts(
        advantages=torch.tensor([[1.0] * 3, [-1.0] * 3]),
        entropy=torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.05, 0.6]]),
        behaviour_logprobs=torch.full((2, 3), -0.5),
        old_logprobs=torch.full((2, 3), -0.5),
        response_mask=mask,
        group_ids=torch.tensor([0, 0]),
        rewards=torch.tensor([1.0, 0.0]),
        step=0,
        response_ids=torch.tensor([[5, 6, 7], [5, 8, 7]]),
    )
    plan = ProbePlan(None, ~certain, torch.zeros(2, 4, dtype=torch.bool), [], 0, 0, 1, 1)
    covered = torch.where(info.isnan(), nan, 1.0).double()
    return CreditProbe(
        facts, value, value.nan_to_num(0.0) * 0, delta, delta_se, certain, info, covered, 0, 0, 0.0, plan
    )
