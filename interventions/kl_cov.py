"""``intervention=kl_cov``: a KL-like penalty on the highest-covariance tokens (arXiv 2505.22617).

KL-Cov from "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models" (Cui et al.,
arXiv 2505.22617; reference code: verl's ``compute_policy_loss_kl_cov``). Over the batch's N response tokens::

    cov_t = (A_t - mean(A)) * (log pi_old(o_t|s_t) - mean(log pi_old))        (as Clip-Cov)
    S     = the max(1, floor(k * N)) tokens with the largest cov_t             k = 2e-4   (verl's rounding)
    L_t   = -A_t * rho_t + beta * |log pi_theta(o_t|s_t) - log pi_old(o_t|s_t)|   for t in S,  beta = 1
    L_t   = -A_t * rho_t                                                        otherwise (no PPO clip anywhere)

In quadrl terms: ``credit.clip = False`` (unclipped surrogate for every token), S is chosen in ``credit`` and
stored in ``credit.extras["kl_cov/selected"]``, and ``extra_loss`` returns
``beta * kl_weight_t * [t in S] * |log pi_theta - log pi_old|`` for the minibatch rows, with the current
grad-carrying log-probs. The penalty follows ``kl_weights`` (1 on response tokens unless a quadrant step with
``mask_kl`` cleared it), not the policy-gradient ``weights``: like the KL term it is a regulariser.

Notes: the selection uses ``facts.old_logprobs`` at credit time (verl uses the current log-probs per
micro-batch); ties in cov_t are broken by ``torch.topk``. On the first on-policy update log pi_theta = log pi_old,
so the penalty and its (sub)gradient are 0: it acts from the second update on the same rollout onwards.
A_t is the incoming ``credit.advantages``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from grpo import checks as check
from grpo.credit import Intervention, InterventionConfig, TokenCredit, TokenFacts, register
from interventions.clip_cov import token_covariance

SELECTED = "kl_cov/selected"


@dataclass
class KlCovConfig(InterventionConfig):
    name: str = "kl_cov"
    """Registered name of the method."""
    ratio: float = 2e-4
    """k: number of penalised tokens = max(1, floor(k * N)) of the N response tokens, k in (0, 1]."""
    beta: float = 1.0
    """Coefficient of |log pi_theta - log pi_old| on the selected tokens (verl's ppo_kl_coef), >= 0."""

    def validate(self) -> None:
        super().validate()
        where = check.where(self)
        check.number(where, "ratio", self.ratio, low=0.0, high=1.0, low_open=True)
        check.number(where, "beta", self.beta, low=0.0)


@register("kl_cov")
class KlCov(Intervention):
    config_class = KlCovConfig
    config: KlCovConfig

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        mask = facts.response_mask.bool()
        n_tokens = int(mask.sum())
        selected = torch.zeros_like(mask)
        if n_tokens:
            cov = token_covariance(credit.advantages, facts.old_logprobs, mask)
            flat_idx = torch.nonzero(mask.flatten()).squeeze(1)
            n_sel = min(max(1, int(self.config.ratio * n_tokens)), n_tokens)
            top = torch.topk(cov.flatten()[flat_idx], n_sel, largest=True).indices
            selected.view(-1)[flat_idx[top]] = True
        return replace(credit, clip=False, extras={**credit.extras, SELECTED: selected}).with_info(
            **{
                "kl_cov/selected": float(selected.sum()),
                "kl_cov/selected_share": float(selected.sum()) / max(n_tokens, 1),
            }
        )

    def extra_loss(
        self, facts: TokenFacts, credit: TokenCredit, logprobs: Tensor, rows: Tensor
    ) -> Tensor | None:
        selected = credit.extras.get(SELECTED)
        if selected is None:  # credit() did not run on this batch (outside the step window)
            return None
        rows = rows.to(selected.device)
        scale = (
            self.config.beta * selected[rows].to(logprobs.dtype) * credit.kl_weights[rows].to(logprobs.dtype)
        )
        return scale * (logprobs - facts.old_logprobs[rows].to(logprobs.dtype)).abs()
