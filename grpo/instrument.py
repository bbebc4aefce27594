"""The instrument protocol: what the training loop lets a measurement see, and where.

The loop trains; it measures nothing of the study. The app builds the instruments (grpo/instruments/ holds
quadrl's: quadrant statistics, per-quadrant gradients, cancellation, update norms, log-prob change, answer
diversity, the credit probe) and passes them to the :class:`~grpo.trainer.Trainer`, as it passes the metrics
sink (grpo/metrics.py). Each hook returns metrics (merged into the step's, or logged at their own step) or
nothing; every hook has a no-op default, so an instrument subclasses :class:`Instrument` and overrides only what
it observes. Hooks run in the order the instruments were given, at these points of ``Trainer.step``::

    sample -> score -> advantages -> credit -> before_update -> [ before_optimizer_step -> optimizer.step()
        -> after_optimizer_step ] per optimiser step -> weights pushed to the sampler -> after_update

and ``between_steps`` after each step's evaluation (and before the first step). An instrument must leave
training as it found it: no parameter, gradient, generator or optimiser state changed (the trainer's own
streams are named generators; a forward pass in train mode draws LoRA dropout from torch's global stream, so
an instrument that runs one does so at its fixed place, identically in every run that enables it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from torch import Tensor

from grpo.credit import TokenCredit, TokenFacts
from grpo.distributed import World

if TYPE_CHECKING:
    from grpo.batch import Batch


@dataclass
class StepView:
    """What an instrument sees of one training step (the same object at ``before_update`` and ``after_update``)."""

    step: int
    """The step's index (its metrics are logged at this step)."""
    batch: Batch
    """This process's rows of the rollout batch (texts, examples, rewards; the whole batch in one process)."""
    facts: TokenFacts
    """The global batch's facts (gathered over processes)."""
    credit: TokenCredit
    """The credit the loss optimises (the intervention's, TIS-corrected when another engine sampled)."""
    params: list[Tensor]
    """The trainable parameters."""
    world: World
    """The processes training together (``world.active``: several)."""
    loss_for_multiplier: Callable[[Tensor, Tensor], Tensor]
    """``(m, logp) -> loss``: the scalar policy loss at log-probs ``logp`` [B, T] with every token's weight
    multiplied by ``m`` [B, T] (no method's extra term), for gradient decompositions."""
    logprobs: Callable[[Tensor], Tensor]
    """``rows -> [len(rows), T]``: the current policy's log-probs of those rows' sampled tokens (with grad when
    grad is enabled; after the update at ``after_update``)."""
    shared: dict[Any, Any] = field(default_factory=dict)
    """A cache instruments share within the step (e.g. the quadrant masks several of them split by)."""

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``shared[key]``, computed once per step."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]


class Instrument(Protocol):
    """A measurement the app injects into the training loop (module docstring). Every hook is optional."""

    def before_update(self, view: StepView) -> dict[str, float]:
        """After the credit, before the first optimiser step: metrics of the batch, its credit, its gradients."""
        return {}

    def before_optimizer_step(self, params: list[Tensor]) -> None:
        """Just before each ``optimizer.step()``: the gradients (clipped) are in ``p.grad``."""

    def after_optimizer_step(self, params: list[Tensor]) -> None:
        """Just after each ``optimizer.step()``: the parameters have moved."""

    def after_update(self, view: StepView) -> dict[str, float]:
        """After the step's updates (the sampler holds the new weights): metrics of what the update did."""
        return {}

    def between_steps(self, steps_done: int) -> dict[str, float]:
        """Between steps, after any evaluation: the policy after ``steps_done`` updates (logged at that step)."""
        return {}
