"""Evaluation on a task's test split: greedy accuracy, avg@k (logged eval/avg_at_k), unbiased pass@k (eval/pass_at_k), answer diversity.

pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", arXiv 2107.03374): with n samples
of which c are correct, the unbiased estimate of P(at least one of k samples is correct) is

    pass@k = 1 - C(n - c, k) / C(n, k)

computed as a running product to stay exact for large n. avg@n is the mean reward over the n samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from grpo.config import EvalConfig
from grpo.engine import engine_of
from grpo.model import Policy
from grpo.task import Example, Task, score_completions


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
        miss *= 1.0 - k / i
    return 1.0 - miss


@dataclass
class Completion:
    example: Example
    text: str
    reward: float
    answer: str | None


def generate(
    policy: Policy,
    task: Task,
    examples: Sequence[Example],
    *,
    samples: int,
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    generator: torch.Generator | None,
    top_p: float = 1.0,
    greedy_row: bool = True,
) -> tuple[list[Completion], list[list[Completion]]]:
    """For each example one greedy completion (none with ``greedy_row=False``) and ``samples`` sampled ones
    (nucleus ``top_p``), scored by the task's verifier.

    All of them come from one batched pass: each prompt's 1 + ``samples`` rows share its prefill, and a batch
    holds as many whole prompts as fit in ``batch_size`` rows (at least one).
    """
    per_prompt = int(greedy_row) + samples
    chunk = max(1, batch_size // per_prompt)
    texts: list[str] = []
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        greedy = torch.tensor([greedy_row and j == 0 for _ in part for j in range(per_prompt)])
        roll = engine_of(policy).generate(
            policy.model,
            [ids for ex in part for ids in [policy.encode_prompt(ex.prompt, ex.messages)] * per_prompt],
            max_new_tokens=max_new_tokens,
            eos_id=policy.stop_ids,
            pad_id=policy.pad_id,
            temperature=temperature,
            top_p=top_p,
            greedy=greedy if samples else True,
            generator=generator,
            behaviour=False,
        )
        texts += [
            policy.decode(roll.response_ids[r][roll.response_mask[r]].tolist()) for r in range(len(greedy))
        ]
    flat = [ex for ex in examples for _ in range(per_prompt)]
    rewards = score_completions(task, flat, texts).rewards
    completions = [
        Completion(ex, t, r, task.extract_answer(t)) for ex, t, r in zip(flat, texts, rewards, strict=True)
    ]
    groups = [completions[i * per_prompt : (i + 1) * per_prompt] for i in range(len(examples))]
    return [g[0] for g in groups] if greedy_row else [], [g[int(greedy_row) :] for g in groups]


def evaluate(
    policy: Policy,
    task: Task,
    cfg: EvalConfig,
    max_new_tokens: int,
    generator: torch.Generator | None,
    examples: Sequence[Example] | None = None,
) -> tuple[dict[str, float], list[Completion]]:
    """Metrics under ``eval/`` and the greedy completions (for sample tables), on ``examples`` (default: the
    first ``cfg.n_prompts`` of the task's test split)."""
    examples = list(task.test())[: cfg.n_prompts] if examples is None else list(examples)
    was_training = policy.model.training
    policy.model.eval()
    try:
        greedy, groups = generate(
            policy,
            task,
            examples,
            samples=cfg.n_samples,
            max_new_tokens=max_new_tokens,
            temperature=cfg.temperature,
            batch_size=cfg.batch_size,
            generator=generator,
        )
        metrics = {"eval/accuracy": sum(c.reward for c in greedy) / len(greedy)}
        if cfg.n_samples > 0:
            n = cfg.n_samples
            correct = [sum(c.reward >= 1.0 for c in g) for g in groups]
            metrics[f"eval/avg_at_{n}"] = sum(c.reward for g in groups for c in g) / (n * len(groups))
            for k in cfg.pass_k:
                metrics[f"eval/pass_at_{k}"] = sum(pass_at_k(n, c, k) for c in correct) / len(groups)
            metrics["eval/diversity"] = sum(
                len({c.answer for c in g if c.answer is not None}) / n for g in groups
            ) / len(groups)
    finally:
        policy.model.train(was_training)
    return metrics, greedy
