"""Shared machinery of the synthetic tasks: a hash-based train/test split and a lazy, deterministic train split.

Split rule: every problem has a canonical key (e.g. the unordered pair of addends). A stable hash of the key
(BLAKE2b, independent of seeds and of PYTHONHASHSEED) puts the problem in the test pool or the train pool.
The test split draws only from the test pool, the train split only from the train pool, so the splits are
disjoint for every ``seed`` / ``test_seed`` / ``n_test`` combination.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from typing import overload

from grpo.task import Example

MAX_DRAWS_PER_EXAMPLE = 10_000


def check_split_params(task_name: str, n_test: int, test_pool_fraction: float) -> None:
    """The parameters every built-in task's train/test split takes, refused by name when out of range."""
    if n_test < 1:
        raise ValueError(f"{task_name}: n_test must be >= 1, got {n_test}")
    if not 0.0 < test_pool_fraction < 1.0:
        raise ValueError(f"{task_name}: test_pool_fraction must be in (0, 1), got {test_pool_fraction}")


def in_test_pool(task_name: str, key: str, test_pool_fraction: float) -> bool:
    """Whether the problem with canonical ``key`` belongs to the held-out pool (stable across runs)."""
    digest = hashlib.blake2b(f"quadrl-split:{task_name}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < test_pool_fraction


Draw = Callable[[random.Random], tuple[str, Example]]
"""Draws one problem: returns (canonical key, example)."""


def draw_from_pool(
    task_name: str, draw: Draw, rng: random.Random, *, test: bool, test_pool_fraction: float
) -> tuple[str, Example]:
    for _ in range(MAX_DRAWS_PER_EXAMPLE):
        key, example = draw(rng)
        if in_test_pool(task_name, key, test_pool_fraction) == test:
            return key, example
    raise RuntimeError(
        f"{task_name}: no {'test' if test else 'train'} problem in {MAX_DRAWS_PER_EXAMPLE} draws"
    )


def build_test_split(
    task_name: str, draw: Draw, *, n_test: int, test_seed: int, test_pool_fraction: float, max_draws: int
) -> list[Example]:
    """``n_test`` distinct test-pool problems from a stream seeded by ``test_seed``."""
    rng = random.Random(f"{task_name}:test:{test_seed}")
    seen: set[str] = set()
    out: list[Example] = []
    for _ in range(max_draws):
        if len(out) >= n_test:
            break
        key, example = draw(rng)
        if key in seen or not in_test_pool(task_name, key, test_pool_fraction):
            continue
        seen.add(key)
        out.append(example)
    if len(out) < n_test:
        raise ValueError(
            f"{task_name}: found only {len(out)} distinct held-out problems for n_test={n_test} "
            f"(the problem space is too small; lower n_test or raise test_pool_fraction)"
        )
    return out


class LazyExamples(Sequence[Example]):
    """A fixed-length, deterministic sequence of train examples generated on access.

    Item ``i`` depends only on (task name, seed, i): it is drawn by a ``random.Random`` seeded with that
    string, rejecting held-out problems. Items may repeat (it is a generator, not a deduplicated set).
    Materialising it all (``list(...)``) costs ``len`` draws: index it instead.
    """

    def __init__(self, task_name: str, draw: Draw, *, length: int, seed: int, test_pool_fraction: float):
        if length < 1:
            raise ValueError(f"{task_name}: n_train must be >= 1, got {length}")
        self._name, self._draw, self._len = task_name, draw, length
        self._seed, self._fraction = seed, test_pool_fraction

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> Example: ...

    @overload
    def __getitem__(self, index: slice) -> list[Example]: ...

    def __getitem__(self, index: int | slice) -> Example | list[Example]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._len))]
        i = int(index)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"train index {index} out of range for length {self._len}")
        rng = random.Random(f"{self._name}:train:{self._seed}:{i}")
        return draw_from_pool(self._name, self._draw, rng, test=False, test_pool_fraction=self._fraction)[1]

    def __iter__(self) -> Iterator[Example]:
        for i in range(self._len):
            yield self[i]


def check_bounded_text(completion: object, max_chars: int) -> str | None:
    """The completion as a str if it is one and not absurdly long, else None (the verifier then gives 0)."""
    if not isinstance(completion, str) or len(completion) > max_chars:
        return None
    return completion
