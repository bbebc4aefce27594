"""quadrl's instruments (grpo/instrument.py): what a training run measures of the study, injected by the app.

:func:`standard_instruments` is the set ``quadrl-train`` runs, from the config: the quadrant statistics every
step, the per-quadrant gradients and log-prob change every ``diagnostics.every`` steps, cancellation and update
norms unless switched off, answer diversity, and the credit probe every ``probe.every`` steps. The training loop
(grpo/trainer.py) imports none of these modules (tests/test_layers.py).
"""

from __future__ import annotations

from grpo.config import QuadrlConfig
from grpo.credit import Intervention
from grpo.entropy_split import EntropySplit
from grpo.instrument import Instrument
from grpo.instruments.probe import CreditProbeInstrument
from grpo.instruments.quadrants import (
    CancellationInstrument,
    GradientDiagnostics,
    QuadrantStats,
)
from grpo.instruments.update import AnswerDiversity, UpdateNorm
from grpo.model import Policy
from grpo.task import Task


def quadrant_split(cfg: QuadrlConfig, intervention: Intervention) -> EntropySplit:
    """The split the quadrant instruments describe: the intervention's own when it splits tokens itself (so that
    both describe the same tokens), else ``diagnostics.split``."""
    return intervention.quadrant_split() or cfg.diagnostics.split


def standard_instruments(
    cfg: QuadrlConfig, intervention: Intervention, policy: Policy, task: Task
) -> list[Instrument]:
    """The instruments a ``quadrl-train`` run measures with (module docstring), in the order they run."""
    split = quadrant_split(cfg, intervention)
    d = cfg.diagnostics
    out: list[Instrument] = [QuadrantStats(split)]
    if d.cancellation:
        out.append(CancellationInstrument(split))
    if d.every > 0:
        out.append(GradientDiagnostics(split, d.every))
    if d.update_norm:
        out.append(UpdateNorm())
    out.append(AnswerDiversity(task))
    if cfg.probe.every > 0:
        out.append(CreditProbeInstrument(cfg, policy, task, split))
    return out


__all__ = [
    "AnswerDiversity",
    "CancellationInstrument",
    "CreditProbeInstrument",
    "GradientDiagnostics",
    "QuadrantStats",
    "UpdateNorm",
    "quadrant_split",
    "standard_instruments",
]
