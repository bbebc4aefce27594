"""The GRPO objective, written out once.

For response i, token t, with importance ratio rho_t = pi_theta(o_t|s_t) / pi_old(o_t|s_t)::

    pg_t  = -min( rho_t * A_t , clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t )     (PPO clip; DAPO clip-higher
                                                                                  is eps_high > eps_low)
    pg_t  = -rho_t * A_t                                                          (when credit.clip is False)

    KL_t  = log pi_theta - log pi_ref                                             (k1)
    KL_t  = exp(log pi_ref - log pi_theta) - (log pi_ref - log pi_theta) - 1      (k3, Schulman; >= 0)

    L  =  agg_m( w_t * pg_t + extra_t )  +  beta * agg_r( k_t * KL_t )

where A_t, w_t (intervention weight), k_t (KL weight) and extra_t come from the intervention's TokenCredit;
for plain GRPO A_t = A_i, w_t = k_t = 1, extra_t = 0. m_t is the loss mask (an intervention may drop tokens
from it to renormalise the policy-gradient term) and r_t the response mask: the KL term always averages over
the response tokens, so dropping a token from m never drops its KL penalty (KL is masked only through k_t).
When m = r this equals agg_m(L_t) with L_t = w_t pg_t + beta k_t KL_t + extra_t. The aggregations are::

    grpo     (seq_mean_token_mean):   agg_m(X) = 1/B * sum_i  sum_t m_it X_it / sum_t m_it
    dapo     (token_mean):            agg_m(X) = sum_it m_it X_it / sum_it m_it
    dr_grpo  (seq_mean_token_sum_norm): agg_m(X) = sum_it m_it X_it / (B * max_new_tokens)

Nothing here knows which intervention produced the credit: masks and amplifications are only numbers in w_t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

LossAggregation = Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]
KLEstimator = Literal["k1", "k3"]


def clipped_surrogate(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    eps_low: float,
    eps_high: float,
    clip: bool = True,
) -> tuple[Tensor, Tensor]:
    """Per-token policy-gradient loss pg_t and the ratio rho_t (both [B, T])."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    if not clip:
        return -unclipped, ratio
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    return -torch.minimum(unclipped, clipped), ratio


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator) -> Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from the sampled tokens."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.exp(-log_ratio) + log_ratio - 1.0
    raise ValueError(f"unknown KL estimator '{estimator}' (k1 or k3)")


def aggregate(per_token: Tensor, mask: Tensor, how: LossAggregation, max_new_tokens: int) -> Tensor:
    """Reduce [B, T] per-token losses to a scalar (see module docstring)."""
    mask = mask.to(per_token.dtype)
    if how == "seq_mean_token_mean":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
        return per_seq.mean()
    if how == "token_mean":
        return (per_token * mask).sum() / mask.sum().clamp_min(1.0)
    if how == "seq_mean_token_sum_norm":
        return (per_token * mask).sum() / (per_token.shape[0] * max_new_tokens)
    raise ValueError(f"unknown loss aggregation '{how}'")


def token_coefficients(mask: Tensor, how: LossAggregation, max_new_tokens: int) -> Tensor:
    """[B, T] c_it with ``aggregate(X, mask, how, L) == (c * X).sum()`` (up to rounding): each token's factor.

    grpo c_it = m_it / (B * sum_t m_it);   dapo c_it = m_it / sum m;   dr_grpo c_it = m_it / (B * L).
    The token's policy-gradient contribution is then c_it * w_it * A_it * grad log pi (on-policy, rho = 1):
    the quantity gradient cancellation on shared prefixes sums (``grpo/cancellation.py``).
    """
    m = mask.to(torch.float64)
    if how == "seq_mean_token_mean":
        return m / (m.shape[0] * m.sum(-1, keepdim=True).clamp_min(1.0))
    if how == "token_mean":
        return m / m.sum().clamp_min(1.0)
    if how == "seq_mean_token_sum_norm":
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 for {how}, got {max_new_tokens}")
        return m / (m.shape[0] * max_new_tokens)
    raise ValueError(f"unknown loss aggregation '{how}'")


@dataclass
class LossTerms:
    loss: Tensor
    """Scalar to backpropagate."""
    pg_loss: float
    """The aggregated policy-gradient term (weights applied, KL and extra terms not included)."""
    kl: float
    """Mean per-token KL over the response tokens (the response mask; the loss mask when none is given), 0 when
    no reference log-probs are given. Logged whatever beta is."""
    clip_frac_low: float
    """Share of masked tokens where the lower clip bound is active (A < 0, rho < 1 - eps_low)."""
    clip_frac_high: float
    """Share of masked tokens where the upper clip bound is active (A > 0, rho > 1 + eps_high)."""
    ratio_mean: float
    """Mean importance ratio rho over the loss mask (1 on-policy)."""


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    weights: Tensor,
    loss_mask: Tensor,
    *,
    aggregation: LossAggregation,
    eps_low: float,
    eps_high: float,
    max_new_tokens: int,
    clip: bool = True,
    beta: float = 0.0,
    ref_logprobs: Tensor | None = None,
    kl_weights: Tensor | None = None,
    kl_estimator: KLEstimator = "k3",
    extra: Tensor | None = None,
    response_mask: Tensor | None = None,
    coefficients: tuple[Tensor, Tensor] | None = None,
) -> LossTerms:
    """L = agg_m(w * pg + extra) + beta * agg_r(k * KL). All [B, T]; ``logprobs`` carries the gradient.

    ``response_mask`` (r) is where the KL term averages; None means the loss mask m.
    ``coefficients``: (c over m, c over r) of a larger batch these rows belong to (:func:`token_coefficients`
    of the whole batch, taken at these rows); the aggregations become sum c * X, so that the losses of the
    parts sum to the whole batch's (grpo/distributed.py). None: the rows are the whole batch.
    """
    pg, ratio = clipped_surrogate(logprobs, old_logprobs, advantages, eps_low, eps_high, clip)
    per_token = weights * pg
    if extra is not None:
        per_token = per_token + extra

    def agg(x: Tensor, mask: Tensor, which: int) -> Tensor:
        if coefficients is None:
            return aggregate(x, mask, aggregation, max_new_tokens)
        return (x * coefficients[which].to(x.dtype)).sum()

    loss = agg(per_token, loss_mask, 0)
    kl_mask = loss_mask if response_mask is None else response_mask
    kl_value = torch.zeros((), dtype=logprobs.dtype)
    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, ref_logprobs, kl_estimator)
        if beta != 0.0:
            k = kl_weights if kl_weights is not None else 1.0
            loss = loss + beta * agg(k * kl, kl_mask, 1)
        kl_value = aggregate(kl.detach(), kl_mask, "token_mean", max_new_tokens)

    with torch.no_grad():
        m = loss_mask.float()
        n = m.sum().clamp_min(1.0)
        low = ((ratio < 1.0 - eps_low) & (advantages < 0)).float() if clip else torch.zeros_like(m)
        high = ((ratio > 1.0 + eps_high) & (advantages > 0)).float() if clip else torch.zeros_like(m)
        pg_mean = agg((weights * pg).detach(), loss_mask, 0)
        return LossTerms(
            loss=loss,
            pg_loss=float(pg_mean),
            kl=float(kl_value),
            clip_frac_low=float((low * m).sum() / n),
            clip_frac_high=float((high * m).sum() / n),
            ratio_mean=float((ratio.detach() * m).sum() / n),
        )
