"""Evaluation suites: several benchmarks, each with its own problems, metrics and sampling (``eval.suite``).

Per benchmark ``b`` (its config: :class:`grpo.benchmark.BenchmarkConfig`), on its n problems:

- ``eval/<b>/accuracy`` (``greedy: true``): the mean reward of one greedy completion a problem;
- ``eval/<b>/avg_at_<k>``: the mean reward over the k samples of a problem, averaged over problems (the paper's
  avg@32 / avg@4);
- ``eval/<b>/pass_at_<j>`` for j in ``pass_k``: the unbiased estimate 1 - C(k-c, j) / C(k, j) from the k samples
  of a problem with c correct (reward >= 1; :func:`grpo.evaluate.pass_at_k`), averaged over problems.

The suite's aggregate ``eval/suite/mean`` is the unweighted mean over benchmarks of each one's headline metric
(avg@k; greedy accuracy for a benchmark with k = 0): every benchmark counts once, whatever its number of
problems, as the "Avg." column of the paper's table does (an average of the per-benchmark scores; a mean over
all problems would let MATH500's 500 problems outweigh AIME's 30). ``eval/suite/n_benchmarks`` records how many.

Each benchmark samples with a generator of its own, seeded by (seed, step, position in the suite): the training
streams and the default test-split evaluation (``eval/accuracy``) are untouched by a suite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from grpo.benchmark import AGGREGATE, BenchmarkConfig
from grpo.evaluate import Completion, generate, pass_at_k
from grpo.model import Policy
from grpo.task import Example, Task


@dataclass
class Benchmark:
    """A benchmark ready to run: its settings, its problems, and the task whose verifier scores them."""

    cfg: BenchmarkConfig
    task: Task
    examples: list[Example]


def benchmark_metrics(
    cfg: BenchmarkConfig, greedy: Sequence[Completion], groups: Sequence[Sequence[Completion]]
) -> dict[str, float]:
    """``<metric>: value`` of one benchmark from its greedy completions and its k samples per problem."""
    out: dict[str, float] = {}
    if cfg.greedy:
        out["accuracy"] = sum(c.reward for c in greedy) / len(greedy)
    if cfg.k >= 1:
        out[f"avg_at_{cfg.k}"] = sum(c.reward for g in groups for c in g) / (cfg.k * len(groups))
        correct = [sum(c.reward >= 1.0 for c in g) for g in groups]
        for j in cfg.pass_k:
            out[f"pass_at_{j}"] = sum(pass_at_k(cfg.k, c, j) for c in correct) / len(groups)
    return out


def headline(cfg: BenchmarkConfig) -> str:
    """The metric of a benchmark that enters the suite's aggregate."""
    return f"avg_at_{cfg.k}" if cfg.k >= 1 else "accuracy"


def evaluate_suite(
    policy: Policy,
    suite: Sequence[Benchmark],
    *,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    step: int,
) -> tuple[dict[str, float], dict[str, list[Completion]]]:
    """``eval/<benchmark>/<metric>`` and ``eval/suite/*``, and every benchmark's completions (greedy first, then
    the samples, problem by problem)."""
    metrics: dict[str, float] = {}
    completions: dict[str, list[Completion]] = {}
    was_training = policy.model.training
    policy.model.eval()
    try:
        for index, bench in enumerate(suite):
            b = bench.cfg
            examples = bench.examples[: b.n_prompts] if b.n_prompts else bench.examples
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + index)
            greedy, groups = generate(
                policy,
                bench.task,
                examples,
                samples=b.k,
                max_new_tokens=b.max_new_tokens or max_new_tokens,
                temperature=b.temperature,
                batch_size=batch_size,
                generator=gen,
                top_p=b.top_p,
                greedy_row=b.greedy,
            )
            for name, value in benchmark_metrics(b, greedy, groups).items():
                metrics[f"eval/{b.name}/{name}"] = value
            completions[b.name] = list(greedy) + [c for g in groups for c in g]
    finally:
        policy.model.train(was_training)
    if suite:
        scores = [metrics[f"eval/{b.cfg.name}/{headline(b.cfg)}"] for b in suite]
        metrics[f"eval/{AGGREGATE}/mean"] = sum(scores) / len(scores)
        metrics[f"eval/{AGGREGATE}/n_benchmarks"] = float(len(scores))
    return metrics, completions
