"""What a quadrl run records in MLflow, defined once for the writer (``experiments/``) and the reader (``analysis/``).

Torch-free and dependency-free, so that ``analysis/`` can read runs without importing the trainer.

A *condition* is what distinguishes a run from the other runs of its sweep except for the seed: the job's Hydra
overrides without ``seed=...``, unescaped (``sqlite\\:///x`` -> ``sqlite:///x``), sorted and joined by spaces;
``default`` when nothing is left. Analysis groups the seeds of one condition together.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
"""Where runs go, and are read from, unless told otherwise: a SQLite file in the working directory."""

QUADRANTS = ("pos_high", "pos_low", "neg_high", "neg_low")
"""The four quadrants: polarity (sign of the sequence advantage) x token entropy (high / low)."""

# tags of a training run
CONDITION_TAG = "quadrl.condition"
"""The run's condition (:func:`condition_of` of its overrides)."""
OVERRIDES_TAG = "quadrl.overrides"
"""JSON list of the job's Hydra overrides, as given."""
OVERRIDE_TAG_PREFIX = "override."
"""``override.<key>`` = the unescaped value of each override (the UI groups and filters by these)."""
PARENT_TAG = "mlflow.parentRunId"
"""The sweep's parent run (MLflow's own nesting tag; ``nested=True`` works in-process only)."""
BASE_MODEL_TAG = "quadrl.base_model"
"""Which model the run started from: ``shipped:<sha256 prefix>``, ``built:<cache key>`` or ``local:<path>``."""
CPU_TAG = "quadrl.cpu"
"""The processor the run ran on (float results differ between CPUs): part of a run's provenance."""
PROVENANCE_TAGS = (CPU_TAG, "quadrl.cpu_count", "quadrl.torch", "quadrl.transformers", "quadrl.python")
"""Tags that say what a result depends on besides the config (with ``quadrl.threads``, ``quadrl.deterministic``,
``quadrl.device`` and the base model's tag)."""
RESUMED_TAG = "quadrl.resumed_at"
"""Set when a run was resumed from its checkpoint (a requeued or restarted job)."""

SWEEP_CONDITION_TAG = "sweep.condition"
"""A sweep job's values of the keys its sweep varies, without the seed (``intervention=hapo``): what MLflow's UI
groups a sweep's runs by (the condition of :func:`condition_of` restricted to the swept keys)."""

# tags of a sweep's parent run
ROLE_TAG = "quadrl.role"
"""``sweep`` on a sweep's parent run, so that readers of an experiment can leave parents out."""
SWEEP_ROLE = "sweep"
SWEEP_SUMMARY_TAG = "quadrl.sweep_summary"
"""JSON: how many jobs finished, failed, were killed or requeued."""

# tags of an experiment (MLflow's own)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"
"""The experiment kind of every experiment quadrl creates (not a GenAI experiment)."""
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
"""``<prefix><key>``: a saved runs-page view (what MLflow's "Share" button stores); quadrl saves one per sweep."""


def unescape(text: str) -> str:
    """Drop Hydra's override escaping (``sqlite\\:///x`` -> ``sqlite:///x``): tags hold values, not syntax."""
    return re.sub(r"\\(.)", r"\1", text)


def override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``."""
    return override.lstrip("+~").split("=", 1)[0]


def is_seed_override(override: str) -> bool:
    return override_key(override) == "seed"


def condition_of(overrides: Iterable[str]) -> str:
    """A run's condition: its overrides without the seed, unescaped and sorted (module docstring)."""
    rest = sorted(unescape(str(o)) for o in overrides if not is_seed_override(str(o)))
    return " ".join(rest) if rest else "default"


def seed_of(overrides: Iterable[str]) -> str | None:
    """The value of the ``seed=`` override, if any (the last one wins, as in Hydra)."""
    value = None
    for o in overrides:
        if is_seed_override(str(o)):
            value = str(o).split("=", 1)[1]
    return value
