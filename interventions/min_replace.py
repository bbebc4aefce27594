"""``intervention=min_replace``: shared prefix nodes get one common weight, their minimum (arXiv 2604.13088).

An exchangeability-restoring transform for token gradient cancellation (arXiv 2604.13088, "Design Conditions
for Intra-Group Learning of Sequence-Level Rewards"). Only the paper's abstract was available: it says that
intra-group objectives must keep gradient exchangeability so that the gradients of tokens a group's responses
share cancel, and that minimal intra-group transformations restore it. The name and the formula below are
**quadrl's reading of that abstract, not the paper's text** (docs/background.md, DESIGN §5).

For every node n = (prompt, y_<t, y_t) that two or more responses S_n of a group share (the prefix trie of
:mod:`grpo.cancellation`, the same one the ``cancel/*`` diagnostics use)::

    w'_it = w_common(n) = min_{k in S_n} w_kt        for every i in S_n
    w'_it = w_it                                     for every token at an unshared node (untouched)

Guarantee (exact; min is exact in floating point): with c_it the loss coefficients of the incoming loss mask
and A the incoming advantages, the node's policy-gradient coefficient becomes

    net'_n = sum_{i in S_n} c_it w'_it A_it = w_common(n) * sum_{i in S_n} c_it A_it

i.e. w_common times the node's net under unit weights ("plain net"). Under dapo or dr_grpo (equal c) a node
shared by the whole group then cancels exactly, as in plain GRPO, whatever mask came before. Compose it after
the transform whose exchangeability it restores, e.g. a quadrant mask::

    intervention=compose 'intervention.steps=[{name: quadrant, scale: {pos_high: 0, pos_low: 0, neg_high: 0}},
                                              {name: min_replace}]'

Under "only neg_low" a node shared by a correct (weight 0) and a wrong (weight 1) response gets weight 0: the
shared steps are no longer pushed down. Stop-gradient: the weights are computed from detached facts and carry
no gradient. Only the weights change (advantages, KL weights and the loss mask pass through); a later step that
changes weights or the loss mask can break the guarantee, so compose it last. Logged: ``min_replace/changed_share``
(response tokens whose weight it changed) and ``min_replace/shared_token_share``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from grpo.credit import Intervention, InterventionConfig, TokenCredit, TokenFacts, register
from grpo.prefixes import batch_prefixes


@dataclass
class MinReplaceConfig(InterventionConfig):
    name: str = "min_replace"
    """Registered name of the method (no parameters beyond the step window)."""


@register("min_replace")
class MinReplace(Intervention):
    config_class = MinReplaceConfig

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        prefixes = batch_prefixes(facts)
        shared = prefixes.shared
        weights = torch.where(shared, prefixes.node_min(credit.weights), credit.weights)
        n_tokens = max(int(facts.response_mask.sum()), 1)
        return replace(credit, weights=weights).with_info(
            **{
                "min_replace/changed_share": float((weights != credit.weights).sum()) / n_tokens,
                "min_replace/shared_token_share": float(shared.sum()) / n_tokens,
            }
        )
