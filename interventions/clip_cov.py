"""``intervention=clip_cov``: detach a few random high-covariance tokens from the gradient (arXiv 2505.22617).

Clip-Cov from "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models" (Cui et al.,
arXiv 2505.22617; reference code: verl's ``compute_policy_loss_clip_cov``). Over the batch's N response tokens::

    cov_t = (A_t - mean(A)) * (log pi(o_t|s_t) - mean(log pi))          means over the N response tokens
    C     = { t : lb < cov_t < ub }                                      lb = 1, ub = 5
    n     = min( max(1, floor(r * N)), |C| )                             r = 2e-4   (verl's rounding)
    w'_t  = 0 for n tokens drawn uniformly without replacement from C, w_t elsewhere

Differences from verl, all because quadrl decides the credit once per rollout, before the update:
- log pi is ``facts.old_logprobs`` (the policy before this update; equal to the current policy on the first
  on-policy update), where verl uses the current log-probs of each micro-batch;
- the pool is the whole rollout batch, not a micro-batch;
- verl also excludes tokens the PPO clip is already active on; at credit time rho = 1, so none is.
The draw uses only the ``generator`` passed to ``credit`` (reproducible and resumable). The loss normaliser and
the PPO clip are unchanged. A_t is the incoming ``credit.advantages``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from grpo import checks as check
from grpo.credit import (
    ConfigError,
    Intervention,
    InterventionConfig,
    TokenCredit,
    TokenFacts,
    register,
)


def token_covariance(advantages: Tensor, logprobs: Tensor, response_mask: Tensor) -> Tensor:
    """[B, T] float64 cov_t = (A_t - mean A)(log pi_t - mean log pi), means over response tokens; 0 on padding."""
    mask = response_mask.bool()
    if not bool(mask.any()):
        return torch.zeros(mask.shape, dtype=torch.float64, device=mask.device)
    adv = advantages.double()
    logp = logprobs.double()
    cov = (adv - adv[mask].mean()) * (logp - logp[mask].mean())
    return torch.where(mask, cov, 0.0)


@dataclass
class ClipCovConfig(InterventionConfig):
    name: str = "clip_cov"
    """Registered name of the method."""
    ratio: float = 2e-4
    """r: number of tokens detached = max(1, floor(r * N)) (capped by the candidates), r in (0, 1]."""
    lb: float = 1.0
    """Lower covariance bound (exclusive) of the candidate tokens."""
    ub: float = 5.0
    """Upper covariance bound (exclusive) of the candidate tokens; must be > lb."""

    def validate(self) -> None:
        super().validate()
        where = check.where(self)
        check.number(where, "ratio", self.ratio, low=0.0, high=1.0, low_open=True)
        check.number(where, "lb", self.lb)
        check.number(where, "ub", self.ub)
        if self.ub <= self.lb:
            raise ConfigError(
                f"{where}: ub must be > lb (empty covariance window), got lb={self.lb}, ub={self.ub}"
            )


@register("clip_cov")
class ClipCov(Intervention):
    config_class = ClipCovConfig
    config: ClipCovConfig

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        cfg = self.config
        mask = facts.response_mask.bool()
        cov = token_covariance(credit.advantages, facts.old_logprobs, mask)
        candidates = mask & (cov > cfg.lb) & (cov < cfg.ub)
        flat = torch.nonzero(candidates.flatten()).squeeze(1)
        n_tokens = int(mask.sum())
        n_clip = min(max(1, int(cfg.ratio * n_tokens)), flat.numel())
        clipped = torch.zeros_like(candidates)
        if n_clip > 0:
            order = torch.randperm(flat.numel(), generator=generator, device=generator.device)
            chosen = flat[order[:n_clip].to(flat.device)]
            clipped.view(-1)[chosen] = True
        weights = credit.weights.masked_fill(clipped, 0.0)
        return replace(credit, weights=weights).with_info(
            **{
                "clip_cov/candidates": float(flat.numel()),
                "clip_cov/clipped": float(n_clip),
                "clip_cov/clipped_share": n_clip / max(n_tokens, 1),
            }
        )
