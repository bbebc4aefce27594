"""What quadrl's entry points share: the job's overrides, the model a run starts from, refusing a value.

``quadrl-train``, ``quadrl-eval`` and ``quadrl-probe`` all read these; they live apart from any one app so that
the apps import each other in one direction only (tests/test_import_cycles.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

from experiments.base_model import ResolvedBase, SFTRecipe, resolve_base_model
from grpo.config import QuadrlConfig


def job_overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # called outside a Hydra app (tests)
        return []


def builtin_base(
    cfg: QuadrlConfig, task_params: dict[str, Any], recipe: SFTRecipe, name: str | None = None
) -> ResolvedBase:
    params = {k: v for k, v in task_params.items() if k != "name"}
    return resolve_base_model(
        task_params["name"],
        params,
        recipe,
        base=cfg.model.base,
        name=name,
        tracking_uri=cfg.tracking.uri if cfg.tracking.enabled else None,
        max_seconds=cfg.model.base_max_seconds,
    )


def base_model(cfg: QuadrlConfig, task_params: dict[str, Any]) -> ResolvedBase:
    """The model the run starts from: a local directory, or the built-in base model (shipped or built)."""
    if cfg.model.source == "local":
        path = Path(str(cfg.model.path)).expanduser()
        return ResolvedBase(path, f"local:{path}")
    return builtin_base(cfg, task_params, SFTRecipe(seed=cfg.model.base_seed))


def refuse(prog: str, error: Exception) -> None:
    """Print a refused value as one line (``quadrl-train: error: ...``) and exit 2; with HYDRA_FULL_ERROR=1, let
    the exception through for Hydra to print its traceback."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2)
