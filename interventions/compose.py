"""``intervention=compose``: several methods applied in order, e.g. HAPO and then a frozen quadrant.

    intervention=compose 'intervention.steps=[{name: hapo, alpha: 0.3}, {name: quadrant, scale: {neg_low: 0}}]'

Each step sees the credit the previous one returned; each keeps its own step window. Extra loss terms add up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from grpo.credit import (
    ConfigError,
    Intervention,
    InterventionConfig,
    TokenCredit,
    TokenFacts,
    build_intervention,
    register,
)
from grpo.entropy_split import EntropySplit


@dataclass
class ComposeConfig(InterventionConfig):
    name: str = "compose"
    """Registered name of the method."""
    steps: list[dict[str, Any]] = field(default_factory=list)
    """The interventions to apply, in order; each is a config dict with its own ``name``."""

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.steps, (list, tuple)):
            raise ConfigError(
                f"intervention 'compose': steps must be a list of intervention configs, got {self.steps!r}"
            )
        if not self.steps:
            raise ConfigError("intervention 'compose': steps is empty; list at least one intervention")
        for i, step in enumerate(self.steps):
            # build_intervention defaults a missing name to 'none': inside a list that would silently turn a
            # mistyped step (e.g. {alpha: 0.3}) into a no-op, so every step must say which method it is
            if not isinstance(step, dict) or "name" not in step:
                raise ConfigError(
                    f"intervention 'compose': steps[{i}] must be a mapping with a 'name' key, got {step!r}"
                )
            if step["name"] == "compose":
                raise ConfigError("intervention 'compose': steps may not contain another compose")


@register("compose")
class Compose(Intervention):
    config_class = ComposeConfig

    def __init__(self, config: ComposeConfig):
        super().__init__(config)
        self.steps = [build_intervention(dict(step)) for step in config.steps]

    def first_active_step(self) -> int:
        return max(self.config.start_step, min(step.first_active_step() for step in self.steps))

    def quadrant_split(self) -> EntropySplit | None:
        """The split of the first step that has one (the diagnostics describe one split only)."""
        return next((s for s in (step.quadrant_split() for step in self.steps) if s is not None), None)

    def facts_needed(self, step: int | None = None) -> tuple[str, ...]:
        """Every fact any step needs (at ``step``: the steps active then), each once."""
        if step is not None and not self.active(step):
            return ()
        return tuple(dict.fromkeys(key for s in self.steps for key in s.facts_needed(step)))

    def requirements(self) -> list[tuple[str, tuple[str, ...]]]:
        return [owner for step in self.steps for owner in step.requirements()]

    def check_model(self, model: torch.nn.Module) -> None:
        for step in self.steps:
            step.check_model(model)

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        for step in self.steps:
            if step.active(facts.step):
                credit = step.credit(facts, credit, generator)
        return credit

    def extra_loss(
        self, facts: TokenFacts, credit: TokenCredit, logprobs: Tensor, rows: Tensor
    ) -> Tensor | None:
        total = None
        for step in self.steps:
            if step.active(facts.step):
                term = step.extra_loss(facts, credit, logprobs, rows)
                if term is not None:
                    total = term if total is None else total + term
        return total
