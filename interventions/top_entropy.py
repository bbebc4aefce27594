"""``intervention=top_entropy``: train only on the batch's highest-entropy tokens (arXiv 2506.01939).

"Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective RL for LLM Reasoning" (Wang et al.,
arXiv 2506.01939), with TRL's ``top_entropy_quantile`` semantics::

    tau  = quantile_{1 - rho}( H_t over the batch's response tokens )    (linear interpolation, = torch.quantile)
    w'_t = w_t * [H_t >= tau]                                            rho = 0.2, rho in (0, 1]

The loss normaliser is unchanged (a masked token still counts in the denominator), as in TRL. Ties at tau are
kept (>=), so with all entropies equal every token is kept, and rho = 1 keeps every token -- TRL's behaviour.
(The quadrant split in :mod:`grpo.quadrants` uses a different, rank-based rule in which ties count as
low; this baseline follows TRL instead.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from grpo import checks as check
from grpo.credit import Intervention, InterventionConfig, TokenCredit, TokenFacts, register


@dataclass
class TopEntropyConfig(InterventionConfig):
    name: str = "top_entropy"
    """Registered name of the method."""
    rho: float = 0.2
    """Fraction of tokens kept: those with entropy >= the batch's (1 - rho) quantile. In (0, 1]."""

    def validate(self) -> None:
        super().validate()
        check.number(check.where(self), "rho", self.rho, low=0.0, high=1.0, low_open=True)


def linear_quantile(values: Tensor, q: float) -> float:
    """``torch.quantile(values, q)`` (linear interpolation) by sorting, without torch.quantile's size limit."""
    s = values.double().sort().values
    pos = q * (s.numel() - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, s.numel() - 1)
    return float(s[lo] + (pos - lo) * (s[hi] - s[lo]))


@register("top_entropy")
class TopEntropy(Intervention):
    config_class = TopEntropyConfig
    config: TopEntropyConfig

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        mask = facts.response_mask.bool()
        pool = facts.entropy[mask]
        if pool.numel() == 0:
            return credit.with_info(**{"top_entropy/threshold": math.nan, "top_entropy/kept_share": 0.0})
        tau = linear_quantile(pool, 1.0 - self.config.rho)
        keep = (facts.entropy.double() >= tau) & mask
        weights = credit.weights * keep.to(credit.weights.dtype)
        return replace(credit, weights=weights).with_info(
            **{"top_entropy/threshold": tau, "top_entropy/kept_share": float(keep.sum()) / pool.numel()}
        )
