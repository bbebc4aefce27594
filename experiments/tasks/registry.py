"""The registry of tasks: ``@register_task(name)`` makes a task factory available as ``task=<name>``."""

from __future__ import annotations

from collections.abc import Callable

from grpo.task import Task

TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    def wrap(factory: Callable[..., Task]) -> Callable[..., Task]:
        TASKS[name] = factory
        return factory

    return wrap
