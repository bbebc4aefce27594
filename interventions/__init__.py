"""Token-level credit methods. Each module registers itself; see :mod:`interventions.base`."""

from __future__ import annotations

import importlib
import pkgutil

from interventions.base import (
    ConfigError,
    Intervention,
    InterventionConfig,
    TokenCredit,
    TokenFacts,
    build_intervention,
    register,
    registered,
)

__all__ = [
    "ConfigError",
    "Intervention",
    "InterventionConfig",
    "TokenCredit",
    "TokenFacts",
    "build_intervention",
    "load_all",
    "register",
    "registered",
]

_NOT_METHODS = {"base", "quadrants", "diagnostics"}


def load_all() -> None:
    """Import every method module so that its @register runs (a new file needs no edit here)."""
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _NOT_METHODS and not module.name.startswith("_"):
            importlib.import_module(f"interventions.{module.name}")
