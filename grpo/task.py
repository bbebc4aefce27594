"""The task protocol the core trains on: prompts with reference answers, and a verifier that scores a completion.

The core only needs this protocol; concrete tasks (and their registry) live in ``experiments/tasks``.
A task never evaluates model output as code: verifiers parse text with bounded, pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


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


class Task(Protocol):
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
