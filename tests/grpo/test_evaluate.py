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

    def fake_generate(policy, task, exs, *, repeats, greedy, **kw):
        if greedy:  # greedy: p0 right, p1 wrong
            return [[Completion(exs[0], "x", 1.0, "a")], [Completion(exs[1], "y", 0.0, "c")]]
        # 4 samples: p0 has 3 right (answers a, a, a, d) ; p1 has 1 right (answers b, e, None, e)
        return [
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
