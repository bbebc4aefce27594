"""``arith``: multi-digit addition with worked digit-by-digit steps; exactly one right answer.

Prompt ``"1234+567="``. Target (the SFT completion, EOS excluded): one step per column from the units up,
``"<digit of a>+<digit of b>+<carry in>=<column sum>"``, steps joined by ``","``, then the answer marker ``">"``
and the sum::

    1234+567=  ->  4+7+0=11,3+6+1=10,2+5+1=8,1+0+0=1>1801

(a missing digit of the shorter addend is written 0; the carry out of the last column only appears in the
answer). Two 4-digit addends give 4 steps and ~40 response tokens.

Reward: 1.0 iff the text after the last ``">"`` (surrounding whitespace ignored) is a decimal integer equal to
the true sum, else 0.0. The steps themselves are not graded.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from experiments.tasks.common import LazyExamples, build_test_split, check_bounded_text, check_split_params
from experiments.tasks.registry import register_task
from grpo.task import Example

ANSWER_MARKER = ">"
_ANSWER_RE = re.compile(r"\s*([0-9]{1,64})\s*")
_MAX_COMPLETION_CHARS = 10_000


def worked_sum(a: int, b: int) -> str:
    """The SFT completion for ``a+b`` (steps, marker, answer)."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}+{carry}={s}")
        carry = s // 10
    return ",".join(steps) + ANSWER_MARKER + str(a + b)


@register_task("arith")
class ArithTask:
    """Addition of two integers with ``min_digits``..``max_digits`` digits each (each addend's digit count is
    drawn uniformly, then the addend uniformly among numbers with that many digits)."""

    name = "arith"
    pretrain_hints = {"eval_every": 20, "dense_eval_every": 5}
    """Defaults for experiments.base_model.pretrain: accuracy jumps from ~10% to >60% within ~30 SFT steps."""

    def __init__(
        self,
        *,
        min_digits: int = 3,
        max_digits: int = 4,
        n_test: int = 200,
        n_train: int = 1_000_000,
        seed: int = 0,
        test_seed: int = 0,
        test_pool_fraction: float = 0.1,
    ):
        if not 1 <= min_digits <= max_digits <= 18:
            raise ValueError(
                f"arith: need 1 <= min_digits <= max_digits <= 18, got {min_digits}, {max_digits}"
            )
        check_split_params(self.name, n_test, test_pool_fraction)
        self.min_digits, self.max_digits = min_digits, max_digits
        self.n_test, self.n_train, self.seed, self.test_seed = n_test, n_train, seed, test_seed
        self.test_pool_fraction = test_pool_fraction
        # longest completion: one step per column ("9+9+1=19," = 9 chars), marker, max_digits + 1 answer digits
        self.max_new_tokens = 9 * max_digits + max_digits + 2 + 8
        """Generation budget (tokens of the char tokenizer) that fits every target plus EOS, with slack."""
        self._test = build_test_split(
            self.name,
            self._draw,
            n_test=n_test,
            test_seed=test_seed,
            test_pool_fraction=test_pool_fraction,
            max_draws=200 * n_test + 10_000,
        )
        self._train = LazyExamples(
            self.name, self._draw, length=n_train, seed=seed, test_pool_fraction=test_pool_fraction
        )

    def _addend(self, rng: random.Random) -> int:
        digits = rng.randint(self.min_digits, self.max_digits)
        low = 0 if digits == 1 else 10 ** (digits - 1)
        return rng.randint(low, 10**digits - 1)

    def _draw(self, rng: random.Random) -> tuple[str, Example]:
        a, b = self._addend(rng), self._addend(rng)
        key = f"{min(a, b)}+{max(a, b)}"  # a+b and b+a are the same problem: same split
        example = Example(
            prompt=f"{a}+{b}=", answer=str(a + b), target=worked_sum(a, b), meta={"a": a, "b": b}
        )
        return key, example

    def train(self) -> Sequence[Example]:
        return self._train

    def test(self) -> Sequence[Example]:
        return self._test

    def extract_answer(self, completion: str) -> str | None:
        text = check_bounded_text(completion, _MAX_COMPLETION_CHARS)
        if text is None or ANSWER_MARKER not in text:
            return None
        match = _ANSWER_RE.fullmatch(text.rsplit(ANSWER_MARKER, 1)[1])
        return match.group(1) if match else None

    def reward(self, example: Example, completion: str) -> float:
        try:
            answer = self.extract_answer(completion)
            if answer is None:
                return 0.0
            return 1.0 if (answer.lstrip("0") or "0") == (example.answer.lstrip("0") or "0") else 0.0
        except Exception:  # a verifier never raises: anything unexpected is a wrong answer
            return 0.0
