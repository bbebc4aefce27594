"""Reward functions by import path, with TRL's signature, run in the verification worker pool.

``task.reward_fn=my_pkg.rewards:accuracy`` (or a list of paths, with ``task.reward_weights``: TRL's
``reward_funcs`` / ``reward_weights``). Each function is called as TRL calls it::

    f(prompts=[prompt], completions=[completion], **columns) -> [float | None]

``prompts``: the row's prompt (a string, or its chat messages as ``[{"role", "content"}]`` dicts);
``completions``: the completion text (for a chat prompt, TRL's conversational form
``[{"role": "assistant", "content": text}]``); ``columns``: the row's other columns, each as a one-element list
(``answer=["42"]``, ``reward_model=[{...}]``). One completion a call: a call that hangs or crashes costs only its
own completion. The reward of a completion is the weighted sum of the functions' values; a ``None`` is "no
reward" from that function (it adds nothing, as TRL's nansum does) and is counted (``train/reward/<name>/none``).

The functions are user code: they run only in worker processes (``experiments/tasks/workers.py``), each call
killed at ``timeout_seconds`` and scored 0 (``train/reward_timeouts``); a call that raises, or returns something
that is not one number or None, scores 0 and is counted by exception type (``train/reward_errors``). Even the
import that checks a path runs in a worker: a path that does not import, or names no callable, is refused in one
line when the task is built (before any model loads), naming the path and the error.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from experiments.tasks.workers import VerifierPool
from grpo.task import Example, RewardBatch

_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
CHECK_TIMEOUT_S = 60.0
"""How long the import check of the reward functions may take (a module that imports torch takes seconds)."""


@dataclass(frozen=True)
class RewardFn:
    path: str
    """``module.path:function``."""
    name: str
    """The function's name (logged as ``train/reward/<name>``)."""
    weight: float = 1.0
    """Its weight in the completion's reward."""


def parse(reward_fn: str | Sequence[str], weights: Sequence[float] | None) -> list[RewardFn]:
    """The functions of ``task.reward_fn`` / ``task.reward_weights``, checked for form (not imported)."""
    paths = [reward_fn] if isinstance(reward_fn, str) else list(reward_fn)
    if not paths:
        raise ValueError("reward_fn: give at least one 'module.path:function'")
    for path in paths:
        if not isinstance(path, str) or not _PATH.fullmatch(path):
            raise ValueError(f"reward_fn: {path!r} is not of the form 'module.path:function'")
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths):
        raise ValueError(f"reward_weights: {len(weights)} weights for {len(paths)} reward functions")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"reward_weights must be finite numbers, got {weights}")
    names = [path.rpartition(":")[2] for path in paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(
            f"reward_fn: two functions share the name {twice[0]!r} (their metrics would collide)"
        )
    return [RewardFn(p, n, w) for p, n, w in zip(paths, names, weights, strict=True)]


@lru_cache(maxsize=64)
def _load(path: str) -> Callable[..., Any]:
    module, _, attr = path.partition(":")
    fn = getattr(importlib.import_module(module), attr)
    if not callable(fn):
        raise TypeError(f"{path} is a {type(fn).__name__}, not a function")
    return fn


def _check(path: str) -> str:
    """In a worker: '' if ``path`` imports to a callable, else the error in one line."""
    try:
        _load(path)
    except BaseException as exc:  # noqa: BLE001 - the message is the result (SystemExit in user code included)
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return ""


def _call(path: str, prompt: str, completion: str, columns: str) -> float | None:
    """In a worker: the function's value for one completion (arguments as JSON: picklable and hashable)."""
    kwargs = {key: [value] for key, value in json.loads(columns).items()}
    out = _load(path)(prompts=[json.loads(prompt)], completions=[json.loads(completion)], **kwargs)
    if isinstance(out, (str, bytes)) or not isinstance(out, Sequence) or len(out) != 1:
        raise TypeError(f"{path} returned {type(out).__name__}, not a list of one value")
    value = out[0]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{path} returned {value!r}, not a finite number or None")
    return float(value)


def check_importable(fns: Sequence[RewardFn], *, source: str) -> None:
    """Import every function in a worker process; ValueError naming the first that fails."""
    pool = VerifierPool(_check, timeout_s=CHECK_TIMEOUT_S, workers=1, default="timed out", name=source)
    try:
        results = pool.map([(fn.path,) for fn in fns]).values
    finally:
        pool.close()
    for fn, error in zip(fns, results, strict=True):
        if error:
            raise ValueError(f"{source}: reward_fn {fn.path!r} cannot be used: {error}")


@dataclass
class RewardFunctions:
    """Scores completions with user reward functions in a :class:`VerifierPool`."""

    fns: list[RewardFn]
    timeout_s: float
    workers: int | None = None
    source: str = "reward_fn"
    pool: VerifierPool = field(init=False)

    def __post_init__(self) -> None:
        check_importable(self.fns, source=self.source)
        self.pool = VerifierPool(
            _call, timeout_s=self.timeout_s, workers=self.workers, default=0.0, name=self.source
        )

    def rewards(self, examples: Sequence[Example], completions: Sequence[str]) -> RewardBatch:
        """The weighted sum of the functions per completion; per function (sum, completions scored, Nones)."""
        args = []
        for ex, text in zip(examples, completions, strict=True):
            if ex.messages is None:
                prompt: Any = ex.prompt
                completion: Any = text
            else:
                prompt = [{"role": role, "content": content} for role, content in ex.messages]
                completion = [{"role": "assistant", "content": text}]
            columns = ex.meta.get("columns", {"answer": ex.answer})
            args.append((json.dumps(prompt), json.dumps(completion), json.dumps(columns, default=str)))
        total = [0.0] * len(args)
        timeouts, errors = 0, Counter[str]()
        parts: dict[str, tuple[float, int, int]] = {}
        for fn in self.fns:
            done = self.pool.map([(fn.path, *a) for a in args])
            timeouts += done.timeouts
            errors.update(done.errors)
            values = done.values
            for i, value in enumerate(values):
                total[i] += fn.weight * (value or 0.0)
            scored = [v for v in values if v is not None]
            parts[fn.name] = (float(sum(scored)), len(scored), len(values) - len(scored))
        return RewardBatch(total, timeouts, dict(errors), parts)
