"""``intervention=w_reinforce``: Weighted-REINFORCE, down-weighted positive samples (arXiv 2506.01347).

Zhu et al., "The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning" (arXiv 2506.01347)::

    A'_t = +lambda   for every token of a correct response (reward >= correct_threshold)    lambda = 0.1
    A'_t = -1        for every token of a wrong response

No group baseline: the advantage is set in every group, including those where GRPO's is 0. See
:mod:`interventions._polarity`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo import checks as check
from grpo.credit import Intervention, TokenCredit, TokenFacts, register
from interventions._polarity import PolarityConfig, polarity_credit


@dataclass
class WReinforceConfig(PolarityConfig):
    name: str = "w_reinforce"
    """Registered name of the method."""
    lam: float = 0.1
    """lambda: the advantage of correct responses' tokens (wrong ones get -1), >= 0."""

    def validate(self) -> None:
        super().validate()
        check.number(check.where(self), "lam", self.lam, low=0.0)


@register("w_reinforce")
class WReinforce(Intervention):
    config_class = WReinforceConfig
    config: WReinforceConfig

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        cfg = self.config
        return polarity_credit(
            facts, credit, cfg.correct_threshold, correct=cfg.lam, wrong=-1.0, prefix="w_reinforce"
        )
