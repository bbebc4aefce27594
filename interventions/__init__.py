"""Token-level credit methods, one module each. Importing this package registers every method in the core's
registry (:mod:`grpo.credit`): a new file here needs no edit anywhere else."""

from __future__ import annotations

import importlib
import pkgutil


def load_all() -> None:
    """Import every module of this package, so that each method's ``@register`` runs."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


load_all()
