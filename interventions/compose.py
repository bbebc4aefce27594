"""``intervention=compose``: several methods applied in order, e.g. HAPO and then a frozen quadrant.

    intervention=compose 'intervention.steps=[{name: hapo, alpha: 0.3}, {name: quadrant, scale: {neg_low: 0}}]'

Each step sees the credit the previous one returned; each keeps its own step window. Extra loss terms add up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from interventions.base import (
    ConfigError,
    Intervention,
    InterventionConfig,
    TokenCredit,
    TokenFacts,
    build_intervention,
    register,
)


@dataclass
class ComposeConfig(InterventionConfig):
    name: str = "compose"
    steps: list[dict[str, Any]] = field(default_factory=list)
    """The interventions to apply, in order; each is a config dict with its own ``name``."""

    def validate(self) -> None:
        super().validate()
        if not self.steps:
            raise ConfigError("intervention 'compose': steps is empty; list at least one intervention")
        if any(dict(s).get("name") == "compose" for s in self.steps):
            raise ConfigError("intervention 'compose': steps may not contain another compose")


@register("compose")
class Compose(Intervention):
    config_class = ComposeConfig

    def __init__(self, config: ComposeConfig):
        super().__init__(config)
        self.steps = [build_intervention(dict(step)) for step in config.steps]

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        for step in self.steps:
            if step.active(facts.step):
                credit = step.credit(facts, credit, generator)
        return credit

    def extra_loss(self, facts: TokenFacts, credit: TokenCredit, logprobs: Tensor, rows: Tensor) -> Tensor | None:
        total = None
        for step in self.steps:
            if step.active(facts.step):
                term = step.extra_loss(facts, credit, logprobs, rows)
                if term is not None:
                    total = term if total is None else total + term
        return total
