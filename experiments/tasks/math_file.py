"""``math_file``: math problems from a local file, graded by math-verify (or by reward functions of one's own).

Files (``experiments/datasets.py``): JSONL, a JSON array, parquet (verl's RL schema included: chat-message
``prompt``, ``answer_field=reward_model.ground_truth``; preset ``task=verl_file``), or a directory written by
``datasets``' ``save_to_disk`` (``split`` names the split of a DatasetDict). Every row is validated when the task
is built (before any training): a row that is not an object, lacks ``prompt_field`` / ``answer_field``, has an
empty prompt or a malformed message list, or an answer that is not a string or a number raises ``ValueError``
naming the file and the 1-based row number (the line number for JSONL). A missing file raises
``FileNotFoundError`` naming the path.

Prompt: ``prompt_template`` with the literal placeholder ``{prompt}`` replaced by the problem text (plain
substitution, not ``str.format``, so LaTeX braces in the template need no escaping). Target (for SFT):
``solution_field`` of the row if given, else ``"\\boxed{<answer>}"``.

Split: with ``test_path``, its rows are the test split and the train split is ``path`` minus any problem whose
prompt text also occurs in the test file; otherwise a stable hash of the prompt text sends a
``test_fraction`` of the problems to the test split. ``n_test`` then caps the test split (a ``test_seed``-ed
sample, kept in file order; ``None`` keeps all of it); rows dropped by the cap never join the train split.

Reward: with ``reward_fn`` (import paths of TRL-signature functions, weighted by ``reward_weights``), their
weighted sum, computed in worker processes (``experiments/rewards.py``). Otherwise the content of the last ``\\boxed{...}`` in the completion (fallback: the last number) is parsed by
``math_verify.parse`` and compared with the parsed reference answer by ``math_verify.verify``; 1.0 if they
match, else 0.0; never an exception, never ``eval`` (only math-verify's LaTeX extractor runs: its default
expression extractor would pass text to sympy's ``parse_expr``, which evaluates Python).

Time limit: verification runs in worker processes (``verify_workers`` of them; null: the cores available,
at most 8), and a worker whose verification runs past ``timeout_seconds`` is killed and replaced; that answer
scores 0 and counts as a timeout (``train/reward_timeouts``). A batch of n distinct answers therefore costs at
most about ceil(n / verify_workers) x ``timeout_seconds``, from any thread (``experiments/tasks/workers.py``
says why threads cannot bound it). Answer extraction runs in-process: it is linear in the text. Answers longer
than 1000 characters score 0 without being parsed; identical (reference, answer) pairs in a batch are verified
once. A verification that raises scores 0 and is logged with the exception's type.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from experiments.datasets import DEFAULT_PROMPT_TEMPLATE, RowFormat, load_examples
from experiments.tasks.common import check_bounded_text, in_test_pool
from experiments.tasks.registry import register_task
from experiments.tasks.workers import VerifierPool
from grpo.task import Example, RewardBatch

MAX_ANSWER_CHARS = 1000
MAX_COMPLETION_CHARS = 200_000
_NUMBER_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:/[0-9]+)?")
ANSWER_EXTRACTIONS = ("boxed_or_number", "boxed", "last_number")
"""How the answer is found in a completion: the last \\boxed{} else the last number; only the last \\boxed{};
only the last number."""
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, or None."""
    # only the last few boxes, each scanned at most MAX_ANSWER_CHARS ahead: linear in the text, whatever it is
    for match in reversed(list(_BOX_RE.finditer(text))[-20:]):
        depth, start = 1, match.end()
        for i in range(start, min(len(text), start + MAX_ANSWER_CHARS + 1)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    content = text[start:i].strip()
                    if content:
                        return content
                    break
    return None


@lru_cache(maxsize=65536)
def _parse_gold(answer: str) -> tuple[Any, ...]:
    return tuple(_mv_parse("\\boxed{" + answer + "}"))


def _mv_parse(text: str) -> list[Any]:
    from math_verify import LatexExtractionConfig, parse

    # LaTeX extraction only: math-verify's default also tries ExprExtractionConfig, which hands matched text to
    # sympy's parse_expr, i.e. Python eval. The text is always "\\boxed{...}", which the LaTeX extractor reads.
    return parse(text, extraction_config=[LatexExtractionConfig()], parsing_timeout=None)


def verify_answer(answer: str, predicted: str) -> bool:
    """Whether ``predicted`` is mathematically equal to the reference ``answer`` (math-verify, unbounded in
    time: run it in a :class:`VerifierPool`, which kills it at the deadline)."""
    import math_verify.grader
    import math_verify.parser
    from math_verify import verify

    # the pool is the time limit: math-verify's notice that its own is off would print in every new worker
    math_verify.grader.TIMEOUT_WARNING_SHOWN = math_verify.parser.TIMEOUT_WARNING_SHOWN = True

    if len(predicted) > MAX_ANSWER_CHARS or len(answer) > MAX_ANSWER_CHARS:
        return False
    gold = list(_parse_gold(answer))
    pred = _mv_parse("\\boxed{" + predicted + "}")
    return bool(gold and pred and verify(gold, pred, timeout_seconds=None))


@register_task("math_file")
class MathFileTask:
    """Math problems from ``path`` (JSONL / JSON array / parquet / verl parquet / ``save_to_disk`` directory,
    ``experiments/datasets.py``), reward by math-verify or by ``reward_fn`` (``experiments/rewards.py``)."""

    name = "math_file"

    def __init__(
        self,
        *,
        path: str,
        prompt_field: str = "problem",
        answer_field: str = "answer",
        solution_field: str | None = None,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        test_path: str | None = None,
        test_fraction: float = 0.1,
        n_test: int | None = 200,
        seed: int = 0,
        test_seed: int = 0,
        timeout_seconds: int = 5,
        verify_workers: int | None = None,
        max_new_tokens: int = 1024,
        split: str | None = None,
        test_split: str | None = None,
        answer_extraction: str = "boxed_or_number",
        reward_fn: str | list[str] | None = None,
        reward_weights: list[float] | None = None,
    ):
        if answer_extraction not in ANSWER_EXTRACTIONS:
            raise ValueError(
                f"math_file: answer_extraction must be one of {list(ANSWER_EXTRACTIONS)}, got {answer_extraction!r}"
            )
        if reward_weights is not None and reward_fn is None:
            raise ValueError("math_file: reward_weights needs reward_fn")
        if test_path is None and not 0.0 < test_fraction < 1.0:
            raise ValueError(f"math_file: test_fraction must be in (0, 1), got {test_fraction}")
        if n_test is not None and n_test < 1:
            raise ValueError(f"math_file: n_test must be >= 1 or null, got {n_test}")
        if timeout_seconds < 1:
            raise ValueError(f"math_file: timeout_seconds must be >= 1, got {timeout_seconds}")
        self.path = Path(path).expanduser()
        self.test_path = Path(test_path).expanduser() if test_path else None
        self.seed, self.test_seed, self.n_test = seed, test_seed, n_test
        self.timeout_seconds = int(timeout_seconds)
        self.verifier = VerifierPool(
            verify_answer,
            timeout_s=self.timeout_seconds,
            workers=verify_workers,
            default=False,
            name=self.name,
            preload=("math_verify.grader", "math_verify.parser"),
        )
        self.max_new_tokens = int(max_new_tokens)
        self.answer_extraction = answer_extraction
        self.row_format = RowFormat(
            prompt_field=prompt_field,
            answer_field=answer_field,
            solution_field=solution_field,
            prompt_template=prompt_template,
            split=split,
        )
        rows = load_examples(self.path, self.row_format)
        if self.test_path is not None:
            test = load_examples(self.test_path, replace(self.row_format, split=test_split or split))
            test_problems = {ex.meta["problem"] for ex in test}
            train = [ex for ex in rows if ex.meta["problem"] not in test_problems]
        else:
            train, test = [], []
            for ex in rows:
                (test if in_test_pool(self.name, ex.meta["problem"], test_fraction) else train).append(ex)
        if n_test is not None and len(test) > n_test:
            keep = sorted(random.Random(f"math_file:test:{test_seed}").sample(range(len(test)), n_test))
            test = [test[i] for i in keep]
        if not train or not test:
            raise ValueError(
                f"math_file: {self.path}: the split left {len(train)} train and {len(test)} test problems; "
                "both must be non-empty (add rows, change test_fraction, or give test_path)"
            )
        self._train, self._test = train, test
        # built last: the import check of user code costs a worker process, worth it only for valid data
        self.reward_functions = None
        if reward_fn is not None:
            from experiments.rewards import RewardFunctions, parse  # it imports this package's workers

            self.reward_functions = RewardFunctions(
                parse(reward_fn, reward_weights),
                timeout_s=self.timeout_seconds,
                workers=verify_workers,
                source=self.name,
            )

    def train(self) -> Sequence[Example]:
        return self._train

    def test(self) -> Sequence[Example]:
        return self._test

    def extract_answer(self, completion: str) -> str | None:
        text = check_bounded_text(completion, MAX_COMPLETION_CHARS)
        if text is None:
            return None
        boxed = None if self.answer_extraction == "last_number" else last_boxed(text)
        if boxed is not None or self.answer_extraction == "boxed":
            return boxed
        numbers = _NUMBER_RE.findall(text)
        return numbers[-1] if numbers else None

    def rewards(self, examples: Sequence[Example], completions: Sequence[str]) -> RewardBatch:
        """1.0 per completion whose answer math-verify finds equal to its example's, else 0.0, in order."""
        if self.reward_functions is not None:
            return self.reward_functions.rewards(examples, completions)
        predicted = [self.extract_answer(c) for c in completions]
        calls = [(ex.answer, p) for ex, p in zip(examples, predicted, strict=True) if p is not None]
        done = self.verifier.map(calls)
        verdicts = iter(done.values)
        rewards = [0.0 if p is None else float(bool(next(verdicts))) for p in predicted]
        return RewardBatch(rewards, done.timeouts, done.errors)

    def reward(self, example: Example, completion: str) -> float:
        return self.rewards([example], [completion]).rewards[0]
