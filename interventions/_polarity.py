"""Shared part of the polarity-only objectives (PSR, NSR, W-REINFORCE; Zhu et al., arXiv 2506.01347).

"The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning" (Zhu et al., arXiv 2506.01347) trains
with a fixed advantage per polarity and *no group baseline*: every response token gets

    A'_t = a_correct   if the response is correct      (reward >= correct_threshold)
    A'_t = a_wrong     otherwise

replacing the incoming advantage everywhere, also in groups whose GRPO advantage is 0 (all correct / all wrong).
"Correct" is ``reward >= correct_threshold`` (default 1.0: the 0/1 verifiable reward of quadrl's tasks; set e.g.
0.5 for rewards with partial credit). Weights, KL weights and the loss mask are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from grpo import checks as check
from grpo.credit import InterventionConfig, TokenCredit, TokenFacts


@dataclass
class PolarityConfig(InterventionConfig):
    correct_threshold: float = 1.0
    """A response is correct when its reward >= this value (1.0 for 0/1 rewards)."""

    def validate(self) -> None:
        super().validate()
        check.number(check.where(self), "correct_threshold", self.correct_threshold)


def polarity_credit(
    facts: TokenFacts, credit: TokenCredit, threshold: float, correct: float, wrong: float, prefix: str
) -> TokenCredit:
    mask = facts.response_mask.bool()
    is_correct = (facts.rewards >= threshold).to(mask.device)
    per_seq = is_correct.to(credit.advantages.dtype) * (correct - wrong) + wrong
    adv = per_seq[:, None].expand_as(credit.advantages) * mask.to(credit.advantages.dtype)
    n = max(int(facts.rewards.numel()), 1)
    return replace(credit, advantages=adv.contiguous()).with_info(
        **{f"{prefix}/correct_share": float(is_correct.sum()) / n}
    )
