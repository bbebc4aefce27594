"""Evaluation metrics (greedy accuracy, avg@k, unbiased pass@k) against hand values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from grpo import evaluate as evaluate_module
from grpo.config import EvalConfig
from grpo.evaluate import pass_at_k
from grpo.model import Policy
from grpo.task import Example


class _Task:
    name = "fake"

    def __init__(self, examples):
        self._examples = examples

    def test(self):
        return self._examples


def test_evaluate_metrics_hand_values(monkeypatch):
    from grpo.evaluate import Completion

    examples = [Example(prompt="p0", answer="a"), Example(prompt="p1", answer="b")]

    def fake_generate(policy, task, exs, *, samples, **kw):
        assert samples == 4
        # greedy: p0 right, p1 wrong
        greedy = [Completion(exs[0], "x", 1.0, "a"), Completion(exs[1], "y", 0.0, "c")]
        # 4 samples: p0 has 3 right (answers a, a, a, d) ; p1 has 1 right (answers b, e, None, e)
        return greedy, [
            [Completion(exs[0], "", r, a) for r, a in [(1.0, "a"), (1.0, "a"), (1.0, "a"), (0.0, "d")]],
            [Completion(exs[1], "", r, a) for r, a in [(1.0, "b"), (0.0, "e"), (0.0, None), (0.0, "e")]],
        ]

    monkeypatch.setattr(evaluate_module, "generate", fake_generate)
    model = torch.nn.Linear(1, 1)
    policy = Policy(model, None, Path("."), lora=False, use_chat_template=False)  # type: ignore[arg-type]
    cfg = EvalConfig(n_prompts=2, n_samples=4, pass_k=[1, 2, 4])
    metrics, greedy = evaluate_module.evaluate(policy, _Task(examples), cfg, 8, torch.Generator())
    assert metrics["eval/accuracy"] == 0.5
    assert metrics["eval/avg_at_4"] == pytest.approx(4 / 8)
    # pass@1 = c/n averaged: (3/4 + 1/4)/2 ; pass@2 = 1 - C(n-c,2)/C(4,2): p0 1 - 0/6 = 1, p1 1 - 3/6 = .5
    assert metrics["eval/pass_at_1"] == pytest.approx(0.5)
    assert metrics["eval/pass_at_2"] == pytest.approx(0.75)
    assert metrics["eval/pass_at_4"] == pytest.approx(1.0)
    # distinct answers / n: p0 {a, d} = 2/4, p1 {b, e} = 2/4
    assert metrics["eval/diversity"] == pytest.approx(0.5)
    assert len(greedy) == 2 and model.training  # the train/eval mode is restored


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 5, 3), (5, 2, 1), (5, 2, 2), (10, 3, 4), (8, 1, 8)])
def test_pass_at_k_closed_form(n, c, k):
    expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_hand_values():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # c/n
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_one_pass_gives_each_prompt_its_greedy_completion_and_its_samples(tiny_model_dir):
    """The greedy row of each prompt equals a greedy-only generation whatever the batching; the sampled rows
    are draws of the same prompt (their log-probs are checked by the sampler's tests)."""
    from grpo.config import ModelConfig
    from grpo.evaluate import generate
    from grpo.model import load_policy
    from grpo.rollout import sample

    policy = load_policy(
        ModelConfig(device="cpu", dtype="float32"), tiny_model_dir, need_reference=False, seed=0
    )
    policy.model.eval()

    class Task:
        def reward(self, example, text):
            return float(len(text) % 2)

        def extract_answer(self, text):
            return text[:1] or None

    examples = [Example(prompt=p, answer="") for p in ("1+2=", "33+4=", "5+16=")]
    prompts = [policy.encode_prompt(ex.prompt) for ex in examples]
    alone = sample(
        policy.model, prompts, max_new_tokens=8, eos_id=policy.stop_ids, pad_id=policy.pad_id, greedy=True
    )
    want = [policy.decode(alone.response_ids[r][alone.response_mask[r]].tolist()) for r in range(3)]
    for batch_size in (1, 5, 100):  # 1 prompt per batch (at least one, even above batch_size), 1, all 3
        greedy, groups = generate(
            policy, Task(), examples, samples=4, max_new_tokens=8, temperature=2.0, batch_size=batch_size,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        assert [c.text for c in greedy] == want
        assert [len(g) for g in groups] == [4, 4, 4]
        assert all(c.example is ex for ex, g in zip(examples, groups, strict=True) for c in g)
        assert all(c.reward == float(len(c.text) % 2) for g in groups for c in g)
    assert len({c.text for g in groups for c in g}) > 3, "T=2 samples of an untrained model should vary"
    only_greedy, none = generate(
        policy, Task(), examples, samples=0, max_new_tokens=8, temperature=1.0, batch_size=2, generator=None
    )
    assert [c.text for c in only_greedy] == want and none == [[], [], []]
