"""The per-quadrant instruments: statistics of the split every step, cancellation on shared prefixes, and the
gradient decomposition with the log-prob change the update made (grpo/quadrants.py, grpo/cancellation.py,
grpo/diagnostics.py hold the measurements; these classes say when they run and what they see)."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from grpo.cancellation import cancellation_metrics
from grpo.diagnostics import logprob_change, quadrant_gradient_diagnostics
from grpo.entropy_split import EntropySplit
from grpo.instrument import Instrument, StepView
from grpo.quadrants import QuadrantMasks, quadrant_stats, split_quadrants


def masks_of(view: StepView, split: EntropySplit) -> QuadrantMasks:
    """The step's quadrant masks under ``split``, computed once for every instrument that splits by it."""
    key = ("quadrants", split.mode, split.high_fraction, split.threshold)
    return view.memo(key, lambda: split_quadrants(view.facts, split))


class QuadrantStats(Instrument):
    """``quadrant/*`` shares, entropy, advantage and weight means, and the threshold, every step."""

    def __init__(self, split: EntropySplit):
        self.split = split

    def before_update(self, view: StepView) -> dict[str, float]:
        return quadrant_stats(view.facts, view.credit, masks_of(view, self.split))


class CancellationInstrument(Instrument):
    """``cancel/*`` every step, and what it cost (``perf/cancel_time_s``)."""

    def __init__(self, split: EntropySplit):
        self.split = split

    def before_update(self, view: StepView) -> dict[str, float]:
        masks = masks_of(view, self.split)
        started = time.perf_counter()
        out = cancellation_metrics(view.facts, view.credit, masks)
        out["perf/cancel_time_s"] = time.perf_counter() - started
        return out


class GradientDiagnostics(Instrument):
    """Every ``every`` steps: per-quadrant gradient norms, shares and cosines before the update, and each
    quadrant's mean log-prob change after it (``quadrant/<q>/grad_*``, ``quadrant/<q>/logprob_change``)."""

    def __init__(self, split: EntropySplit, every: int):
        self.split, self.every = split, every

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def before_update(self, view: StepView) -> dict[str, float]:
        if not self.due(view.step):
            return {}
        return quadrant_gradient_diagnostics(
            view.params,
            view.loss_for_multiplier,
            masks_of(view, self.split),
            view.logprobs,
            view.facts.old_logprobs,
        )

    def after_update(self, view: StepView) -> dict[str, float]:
        if not self.due(view.step):
            return {}
        everything: Tensor = torch.arange(len(view.facts.rewards))
        with torch.no_grad():
            after = view.logprobs(everything)
        return logprob_change(view.facts.behaviour_logprobs, after, masks_of(view, self.split))
