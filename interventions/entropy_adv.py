"""``intervention=entropy_adv``: add a clipped entropy bonus to every token's advantage (arXiv 2506.14758).

"Reasoning with Exploration: An Entropy Perspective" (Cheng et al., arXiv 2506.14758)::

    psi_t = min( alpha * stopgrad(H_t), |A_t| / kappa )
    A'_t  = A_t + psi_t                                  alpha = 0.4 (their GRPO setting), kappa = 2

psi_t >= 0, so A'_t >= A_t always: positive tokens gain, and penalties on high-entropy negative tokens are softened
(the opposite of HAPO's sign(A) reallocation). The clip |A|/kappa keeps the bonus from reversing a sign when
kappa > 1 and makes A = 0 tokens (and padding) unchanged. A_t is the incoming ``credit.advantages``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from grpo import checks as check
from grpo.credit import Intervention, InterventionConfig, TokenCredit, TokenFacts, register


@dataclass
class EntropyAdvConfig(InterventionConfig):
    name: str = "entropy_adv"
    """Registered name of the method."""
    alpha: float = 0.4
    """Entropy bonus per nat, >= 0."""
    kappa: float = 2.0
    """The bonus is at most |A| / kappa; > 0 (kappa > 1 keeps every negative advantage negative)."""

    def validate(self) -> None:
        super().validate()
        where = check.where(self)
        check.number(where, "alpha", self.alpha, low=0.0)
        check.number(where, "kappa", self.kappa, low=0.0, low_open=True)


@register("entropy_adv")
class EntropyAdv(Intervention):
    config_class = EntropyAdvConfig
    config: EntropyAdvConfig

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        cfg = self.config
        adv = credit.advantages
        bonus = torch.minimum(cfg.alpha * facts.entropy.to(adv.dtype), adv.abs() / cfg.kappa)
        bonus = bonus * facts.response_mask.to(adv.dtype)
        mask = facts.response_mask.bool()
        mean_bonus = float(bonus[mask].double().mean()) if bool(mask.any()) else 0.0
        return replace(credit, advantages=adv + bonus).with_info(**{"entropy_adv/bonus_mean": mean_bonus})
