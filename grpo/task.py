"""The task protocol the core trains on: prompts with reference answers, and a verifier that scores a completion.

The core only needs this protocol; concrete tasks (and their registry) live in ``experiments/tasks``.
A task never evaluates model output as code: verifiers parse text with bounded, pure functions.

Scoring goes through :func:`score_completions`: a task whose verifier can be slow on hostile output scores a
whole batch in its optional ``rewards(examples, completions) -> RewardBatch`` method (``math_file`` runs it in
worker processes killed at a deadline, ``experiments/tasks/workers.py``); the others are called once per
completion, in-process.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    prompt: str
    """The text the model is conditioned on (already templated)."""
    answer: str
    """A reference answer (for tasks with many right answers, one of them; the verifier is the judge)."""
    target: str = ""
    """The full supervised completion used by `pretrain` (worked steps + answer + end marker)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Task-specific data the verifier needs (e.g. countdown's numbers and target)."""
    messages: tuple[tuple[str, str], ...] | None = None
    """A chat prompt's (role, content) turns (datasets whose prompt is a list of chat messages). The policy
    renders them with its tokenizer's chat template when it uses one; ``prompt`` is then their plain-text
    rendering, used where there is no chat template and in logs."""


class Task(Protocol):
    """A task. Optional: ``rewards(examples, completions) -> RewardBatch``, the batch form of ``reward``, which
    :func:`score_completions` prefers (for verifiers that must run in killable worker processes)."""

    name: str
    max_new_tokens: int
    """The generation budget the task's answers need (``sampling.max_new_tokens: null`` uses it)."""

    def train(self) -> Sequence[Example]:
        """The training split (disjoint from test)."""

    def test(self) -> Sequence[Example]:
        """The held-out test split."""

    def reward(self, example: Example, completion: str) -> float:
        """Verifiable reward in [0, 1]; garbage gives 0, never an exception."""

    def extract_answer(self, completion: str) -> str | None:
        """The final answer in a completion (for diversity metrics), or None if there is none."""


@dataclass
class RewardBatch:
    """The rewards of a batch of completions, in order, and what went wrong while computing them."""

    rewards: list[float]
    timeouts: int = 0
    """Completions whose verification was stopped at its deadline (scored 0)."""
    errors: dict[str, int] = field(default_factory=dict)
    """Completions whose verification raised, by exception type (scored 0)."""
    parts: dict[str, tuple[float, int, int]] = field(default_factory=dict)
    """A reward made of several named functions: per name, (sum of its values, completions it scored,
    completions it gave no reward); logged as ``train/reward/<name>`` (the mean) and ``train/reward/<name>/none``."""


def score_completions(task: Task, examples: Sequence[Example], completions: Sequence[str]) -> RewardBatch:
    """Rewards of ``completions[i]`` for ``examples[i]``: the task's batch method ``rewards`` when it has one,
    else ``task.reward`` per completion. A ``reward`` that raises scores 0 and is counted and logged by type."""
    if len(examples) != len(completions):
        raise ValueError(f"{len(examples)} examples for {len(completions)} completions")
    batch = getattr(task, "rewards", None)
    if batch is not None:
        return batch(examples, completions)
    rewards: list[float] = []
    errors: Counter[str] = Counter()
    for example, completion in zip(examples, completions, strict=True):
        try:
            rewards.append(float(task.reward(example, completion)))
        except Exception as exc:  # noqa: BLE001 - one broken verification must not end the run
            errors[type(exc).__name__] += 1
            rewards.append(0.0)
    if errors:
        logger.warning(
            "%s: %d of %d reward calls raised (%s) and scored 0",
            task.name,
            sum(errors.values()),
            len(rewards),
            ", ".join(f"{kind} x{n}" for kind, n in sorted(errors.items())),
        )
    return RewardBatch(rewards, 0, dict(errors))
