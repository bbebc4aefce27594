"""Task registry: importing this package registers the built-in tasks (``arith``, ``countdown``, ``fork``,
``math_file``).

``make_task(name, **params)`` builds one from its config (``conf/task/<name>.yaml`` minus ``name``).
"""

from __future__ import annotations

import inspect
from typing import Any

from experiments.tasks import arith, countdown, fork, math_file  # noqa: F401  (register the built-in tasks)
from experiments.tasks.registry import TASKS, register_task
from grpo.task import Example, Task

__all__ = ["TASKS", "Example", "Task", "make_task", "register_task", "task_params"]


def task_params(name: str) -> dict[str, Any]:
    """The keyword parameters a registered task accepts, with their defaults (``inspect.Parameter.empty`` when
    required)."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)}")
    signature = inspect.signature(TASKS[name])
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }


def make_task(name: str, **params: Any) -> Task:
    """Build the registered task ``name`` from its parameters; unknown names, unknown parameters and missing
    required parameters raise ``ValueError`` listing what is accepted."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)}")
    accepted = task_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"task {name!r}: unknown parameter(s) {unknown}; accepted: {sorted(accepted)}")
    missing = sorted(k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in params)
    if missing:
        raise ValueError(f"task {name!r}: missing required parameter(s) {missing}")
    return TASKS[name](**params)
