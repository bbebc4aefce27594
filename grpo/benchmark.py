"""One benchmark of an evaluation suite (``eval.suite``): where its problems are, what is measured, how it samples.

Its own module (not grpo/config.py) so that :mod:`grpo.suite` can use it while grpo/config.py holds the list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from grpo.checks import ConfigError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
AGGREGATE = "suite"
"""The reserved name under which the suite's aggregate is logged (``eval/suite/mean``)."""


@dataclass
class BenchmarkConfig:
    """One benchmark: logged as ``eval/<name>/<metric>``."""

    name: str = ""
    """Names its metrics (``eval/<name>/avg_at_32``): letters, digits, ``_ . -``; not ``suite``."""
    path: str | None = None
    """A local problems file or ``save_to_disk`` directory, every row evaluated (the formats of ``task=math_file``,
    experiments/datasets.py), scored by the run's task's verifier. null: a task's test split (``task``)."""
    task: str | None = None
    """With ``path`` null: the registered task whose test split is the benchmark (the run's own task config when it
    names the run's task, else that task's defaults); null: the run's task."""
    read: dict[str, Any] = field(default_factory=dict)
    """How ``path``'s rows are read, over the run's task's settings (a math_file task) or the defaults:
    ``prompt_field``, ``answer_field``, ``solution_field``, ``prompt_template``, ``split``."""
    n_prompts: int | None = None
    """Problems evaluated (the first n); null: all."""
    k: int = 1
    """Samples per problem: avg@k (mean reward over the k samples, averaged over problems) and pass@k's n. 0: greedy
    accuracy only."""
    pass_k: list[int] = field(default_factory=list)
    """k values of the unbiased pass@k estimator from the ``k`` samples (each in [1, k])."""
    greedy: bool = False
    """Also log greedy accuracy (``eval/<name>/accuracy``), one greedy completion a problem."""
    temperature: float = 1.0
    """Sampling temperature of the k samples."""
    top_p: float = 1.0
    """Nucleus mass of the k samples (1 = off)."""
    max_new_tokens: int | None = None
    """Generation budget; null: the run's (``sampling.max_new_tokens``, else the task's)."""

    def validate(self, key: str) -> None:
        """Refuse out-of-range values naming ``key`` (``eval.suite[0]``)."""

        def check(ok: bool, why: str) -> None:
            if not ok:
                raise ConfigError(f"{key} ({self.name or 'unnamed'}): {why}")

        check(bool(_NAME.fullmatch(self.name)), f"name must match {_NAME.pattern}, got {self.name!r}")
        check(self.name != AGGREGATE, f"the name {AGGREGATE!r} is reserved for the suite's aggregate")
        check(self.path is None or self.task is None, "give path or task, not both")
        check(self.k >= 0, f"k must be >= 0, got {self.k}")
        check(self.k >= 1 or self.greedy, "k = 0 and greedy = false measure nothing")
        check(all(1 <= j <= self.k for j in self.pass_k), f"pass_k values must be in [1, k={self.k}]")
        check(self.n_prompts is None or self.n_prompts >= 1, "n_prompts must be >= 1 or null")
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        check(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        check(
            self.max_new_tokens is None or self.max_new_tokens >= 1,
            f"max_new_tokens must be >= 1 or null, got {self.max_new_tokens}",
        )
        allowed = {"prompt_field", "answer_field", "solution_field", "prompt_template", "split"}
        check(not set(self.read) - allowed, f"read accepts {sorted(allowed)}, got {sorted(self.read)}")
        check(not self.read or self.path is not None, "read applies to a path")


def validate_suite(suite: list[BenchmarkConfig]) -> None:
    """Every benchmark valid, names distinct (they key the metrics)."""
    names = [b.name for b in suite]
    for i, b in enumerate(suite):
        b.validate(f"eval.suite[{i}]")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"eval.suite: two benchmarks are named {twice[0]!r} (their metrics would collide)")
