"""``intervention=attention_entropy``: anchors and explorers by attention entropy (arXiv 2605.07660).

"Not All Tokens Learn Alike" (arXiv 2605.07660; only the abstract is public). A response token's *attention
entropy* measures how diffuse its contextual support is. Low attention-entropy tokens ("anchors") give stable
gradients aligned with the full update but plateau; high attention-entropy tokens ("explorers") give larger,
volatile gradients, and training on explorers alone is usually unstable; a dynamic soft reweighting of the two
improves on full-token training. Here, for response token t::

    E_t   = mean over the chosen layers l and heads h of  -sum_j a^{lh}_tj log a^{lh}_tj     (nats)
    tau   = the batch's split of E over response tokens (grpo.quadrants' rule: the top ``explorer_fraction``
            of tokens by E are explorers, ties at the boundary count as anchors)
    w'_t  = w_t * (anchor_weight(step)    if E_t <= tau      anchors
                   explorer_weight(step)  if E_t >  tau)     explorers

    schedule=constant:  weight(step) = weight
    schedule=linear:    weight(step) = weight + (weight_end - weight) * min(1, (step - start_step) / schedule_steps)

Weights multiply the policy-gradient term only (the loss normaliser and the KL term are unchanged, as for a
quadrant scale), so a weight of 0 freezes a side: ``condition=attention_anchors_only`` / ``attention_explorers_only``
are the paper's one-sided contrasts.

Logged like the quadrant split (``intervention/attention_entropy/...``): the threshold, and for ``anchors``
and ``explorers`` their share of the response tokens, mean attention entropy, mean predictive entropy H_t,
mean advantage and the weight in force.

quadrl's choices, not the paper's (the abstract gives neither the heads and layers, the split, nor the
reweighting formula): layers and heads averaged (``layers`` / ``heads`` select subsets); the attention
distribution is that of the state s_t that predicts y_t (:mod:`grpo.facts`); a median split
(``explorer_fraction`` 0.5: both sides hold the same number of tokens, so the one-sided presets train on equal
token counts); and the default dynamic schedule, which starts explorers at half weight and ramps them to 1.5
over ``schedule_steps`` while anchors keep weight 1 -- stability first, then the larger explorer updates once the
anchors' plateau sets in.

Needs attention probabilities: the fact pass runs eager attention (:mod:`grpo.facts`); cost one extra no-grad
forward per step that holds every layer's [B, H, S, S] attention at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from grpo import checks as check
from grpo.credit import ConfigError, Intervention, InterventionConfig, TokenCredit, TokenFacts, register
from grpo.entropy_split import EntropySplit, entropy_high_mask

SCHEDULES = ("constant", "linear")
SIDES = ("anchors", "explorers")


@dataclass
class AttentionEntropyConfig(InterventionConfig):
    name: str = "attention_entropy"
    """Registered name of the method."""
    layers: list[int] | None = None
    """Decoder layers (0-based; negative counts from the last) whose attention entropy is averaged; null = all."""
    heads: list[int] | None = None
    """Attention heads averaged; null = all."""
    explorer_fraction: float = 0.5
    """Share of the batch's response tokens called explorers (highest attention entropy), in (0, 1)."""
    anchor_weight: float = 1.0
    """Policy-gradient weight of anchors (low attention entropy) at start_step; >= 0."""
    explorer_weight: float = 0.5
    """Policy-gradient weight of explorers (high attention entropy) at start_step; >= 0."""
    schedule: str = "linear"
    """``constant``: the weights above throughout; ``linear``: each moves to its ``*_end`` value over
    ``schedule_steps`` steps from start_step, then stays."""
    anchor_weight_end: float = 1.0
    """Anchor weight reached after schedule_steps (schedule=linear); >= 0."""
    explorer_weight_end: float = 1.5
    """Explorer weight reached after schedule_steps (schedule=linear); >= 0."""
    schedule_steps: int = 40
    """Length of the linear ramp, in training steps; >= 1."""

    def validate(self) -> None:
        super().validate()
        where = check.where(self)
        for key in ("layers", "heads"):
            value = getattr(self, key)
            if value is None:
                continue
            if not isinstance(value, (list, tuple)) or not value:
                raise ConfigError(
                    f"{where}: {key} must be a non-empty list of integers or null, got {value!r}"
                )
            for item in value:
                check.integer(where, key, item)
        check.number(
            where,
            "explorer_fraction",
            self.explorer_fraction,
            low=0.0,
            high=1.0,
            low_open=True,
            high_open=True,
        )
        for key in ("anchor_weight", "explorer_weight", "anchor_weight_end", "explorer_weight_end"):
            check.number(where, key, getattr(self, key), low=0.0)
        check.choice(where, "schedule", self.schedule, SCHEDULES)
        check.integer(where, "schedule_steps", self.schedule_steps, low=1)

    def weights_at(self, step: int) -> tuple[float, float]:
        """(anchor weight, explorer weight) in force at ``step``."""
        if self.schedule == "constant":
            return self.anchor_weight, self.explorer_weight
        progress = min(1.0, max(0, step - self.start_step) / self.schedule_steps)
        return (
            self.anchor_weight + (self.anchor_weight_end - self.anchor_weight) * progress,
            self.explorer_weight + (self.explorer_weight_end - self.explorer_weight) * progress,
        )


def mean_attention_entropy(per_head: Tensor, layers: list[int] | None, heads: list[int] | None) -> Tensor:
    """[B, T, L, H] attention entropies -> [B, T] mean over the chosen layers and heads (all when None)."""
    chosen = per_head if layers is None else per_head[:, :, list(layers)]
    chosen = chosen if heads is None else chosen[:, :, :, list(heads)]
    return chosen.double().mean(dim=(-1, -2))


def _masked_mean(values: Tensor, mask: Tensor) -> float:
    return float(values.double()[mask].mean()) if bool(mask.any()) else math.nan


@register("attention_entropy")
class AttentionEntropy(Intervention):
    config_class = AttentionEntropyConfig
    config: AttentionEntropyConfig
    needs = ("attention_entropy",)

    def check_model(self, model: torch.nn.Module) -> None:
        config = getattr(model, "config", None)
        for key, size_name in (("layers", "num_hidden_layers"), ("heads", "num_attention_heads")):
            chosen, size = getattr(self.config, key), getattr(config, size_name, None)
            if chosen is None or size is None:
                continue
            bad = [i for i in chosen if not -size <= i < size]
            if bad:
                raise ConfigError(
                    f"intervention 'attention_entropy': {key} {bad} out of range for a model with {size} {key}"
                )

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        cfg = self.config
        mask = facts.response_mask.bool()
        attn = mean_attention_entropy(facts.fact("attention_entropy"), cfg.layers, cfg.heads)
        split = EntropySplit(mode="batch_quantile", high_fraction=cfg.explorer_fraction)
        explorers, threshold = entropy_high_mask(attn, mask, split)
        anchors = mask & ~explorers
        anchor_w, explorer_w = cfg.weights_at(facts.step)
        factor = torch.where(explorers, explorer_w, torch.where(anchors, anchor_w, 1.0))
        weights = credit.weights * factor.to(credit.weights.dtype)
        credit = replace(credit, weights=weights)
        n_resp = max(int(mask.sum()), 1)
        info: dict[str, float] = {"attention_entropy/threshold": threshold}
        for side, members, weight in (("anchors", anchors, anchor_w), ("explorers", explorers, explorer_w)):
            info[f"attention_entropy/{side}/share"] = float(members.sum()) / n_resp
            info[f"attention_entropy/{side}/attention_entropy_mean"] = _masked_mean(attn, members)
            info[f"attention_entropy/{side}/entropy_mean"] = _masked_mean(facts.entropy, members)
            info[f"attention_entropy/{side}/adv_mean"] = _masked_mean(credit.advantages, members)
            info[f"attention_entropy/{side}/weight"] = weight
        return credit.with_info(**info)
