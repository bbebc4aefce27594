"""``intervention=psr``: Positive Sample Reinforcement -- learn only from correct responses (arXiv 2506.01347).

Zhu et al., "The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning" (arXiv 2506.01347)::

    A'_t = +1   for every token of a correct response (reward >= correct_threshold)
    A'_t =  0   for every token of a wrong response

No group baseline: the advantage is set in every group, including those where GRPO's is 0. See
:mod:`interventions._polarity`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo.credit import Intervention, TokenCredit, TokenFacts, register
from interventions._polarity import PolarityConfig, polarity_credit


@dataclass
class PsrConfig(PolarityConfig):
    name: str = "psr"
    """Registered name of the method."""


@register("psr")
class Psr(Intervention):
    config_class = PsrConfig
    config: PsrConfig

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        return polarity_credit(
            facts, credit, self.config.correct_threshold, correct=1.0, wrong=0.0, prefix="psr"
        )
