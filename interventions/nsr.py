"""``intervention=nsr``: Negative Sample Reinforcement -- learn only from wrong responses (arXiv 2506.01347).

Zhu et al., "The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning" (arXiv 2506.01347)::

    A'_t =  0   for every token of a correct response (reward >= correct_threshold)
    A'_t = -1   for every token of a wrong response

No group baseline: the advantage is set in every group, including those where GRPO's is 0. See
:mod:`interventions._polarity`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo.credit import Intervention, TokenCredit, TokenFacts, register
from interventions._polarity import PolarityConfig, polarity_credit


@dataclass
class NsrConfig(PolarityConfig):
    name: str = "nsr"
    """Registered name of the method."""


@register("nsr")
class Nsr(Intervention):
    config_class = NsrConfig
    config: NsrConfig

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        return polarity_credit(
            facts, credit, self.config.correct_threshold, correct=0.0, wrong=-1.0, prefix="nsr"
        )
