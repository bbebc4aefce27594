"""``intervention=adv_orthogonal``: shared prefix nodes' weights made orthogonal to c * A (arXiv 2604.13088).

An exchangeability-restoring transform for token gradient cancellation (arXiv 2604.13088, "Design Conditions
for Intra-Group Learning of Sequence-Level Rewards"). Only the paper's abstract was available; the name and the
formula below are **quadrl's reading of that abstract, not the paper's text** (docs/background.md, DESIGN §5).

For every node n that two or more responses S_n of a group share (the prefix trie of :mod:`grpo.cancellation`),
with u_it = c_it A_it (c the loss coefficients of the incoming loss mask and the run's aggregation, A the
incoming advantages)::

    w'_it = w_it - (sum_{k in S_n} u_kt w_kt / sum_{k in S_n} u_kt^2) * u_it      for i in S_n, if sum u^2 > 0
    w'_it = w_it                                                               unshared tokens (untouched)

Guarantee (exact up to float rounding; computed in float64): every shared node's policy-gradient coefficient
is zero, net'_n = sum_{i in S_n} c_it w'_it A_it = 0, under every aggregation (grpo's 1/|o_i| included: the
projection is against c * A, not A alone). It is the smallest change of the node's weight vector (Euclidean)
that does so; weights may become negative or exceed 1. A node whose members all have u = 0 (A = 0, or outside
the loss mask) already has net 0 and is left as it is. Stop-gradient: computed from detached facts. Only the
weights change; compose it last (``intervention=compose``, after a mask), since a later change of the weights or
the loss mask can break the guarantee. Logged: ``adv_orthogonal/changed_share``, ``adv_orthogonal/shared_token_share``
and ``adv_orthogonal/weight_change_mean`` (mean |w' - w| over the shared tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from grpo.credit import Intervention, InterventionConfig, TokenCredit, TokenFacts, register
from grpo.prefixes import batch_prefixes


@dataclass
class AdvOrthogonalConfig(InterventionConfig):
    name: str = "adv_orthogonal"
    """Registered name of the method (no parameters beyond the step window)."""


@register("adv_orthogonal")
class AdvOrthogonal(Intervention):
    config_class = AdvOrthogonalConfig

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        prefixes = batch_prefixes(facts)
        shared = prefixes.shared
        w = credit.weights.double()
        u = facts.loss_coefficients(credit.loss_mask) * credit.advantages.double()
        dot, norm2 = prefixes.node_sum(u * w), prefixes.node_sum(u * u)
        project = shared & (norm2 > 0)
        projected = w - dot / torch.where(project, norm2, torch.ones_like(norm2)) * u
        weights = torch.where(project, projected, w).to(credit.weights.dtype)
        n_tokens = max(int(facts.response_mask.sum()), 1)
        n_shared = int(shared.sum())
        change = (weights.double() - w).abs()
        return replace(credit, weights=weights).with_info(
            **{
                "adv_orthogonal/changed_share": float((weights != credit.weights).sum()) / n_tokens,
                "adv_orthogonal/shared_token_share": n_shared / n_tokens,
                "adv_orthogonal/weight_change_mean": float(change[shared].sum()) / n_shared
                if n_shared
                else 0.0,
            }
        )
