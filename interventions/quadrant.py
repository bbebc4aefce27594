"""``intervention=quadrant``: scale each polarity x entropy quadrant's policy-gradient term (arXiv 2604.11056).

Four Quadrant Decomposition ("Rethinking Token-Level Credit Assignment in RLVR: A Polarity-Entropy Analysis",
arXiv 2604.11056). Every response token with A != 0 is in one quadrant q(t) in {pos_high, pos_low, neg_high,
neg_low} (split: :mod:`grpo.quadrants`, polarity from the unreshaped ``facts.advantages``). With the
scale vector s = (s_pos_high, s_pos_low, s_neg_high, s_neg_low)::

    w'_t  = w_t * s_q(t)                (tokens with A = 0 and padding keep w_t: A = 0 gives no pg gradient)
    k'_t  = k_t * s_q(t)                only with ``mask_kl: true`` (else the KL weight is untouched)
    m'_t  = m_t and not (s_q(t) == 0)   only with ``renormalize: true`` (else the normaliser is untouched)

so s_q = 0 freezes a quadrant (its tokens still count in the loss normaliser unless ``renormalize``), 1 leaves
it, k > 1 amplifies it. "Train on PHR only" is s = (1, 0, 0, 0): ``condition=quadrant/only_pos_high``
(conf/condition/quadrant/only_pos_high.yaml).
The advantages are not changed. Logged in ``credit.info``: the split (mode, fraction, threshold), the scales,
the two switches and the share of response tokens this step froze.

``renormalize`` changes the policy-gradient normaliser only: the core averages the KL term over all response
tokens (``grpo/loss.py``), so a dropped token keeps its KL penalty unless ``mask_kl``. Under
``seq_mean_token_sum_norm`` (Dr. GRPO) the normaliser is B * max_new_tokens, which no mask changes, so there
``renormalize`` has no effect.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

from grpo import checks as check
from grpo.credit import (
    ConfigError,
    Intervention,
    InterventionConfig,
    TokenCredit,
    TokenFacts,
    register,
)
from grpo.entropy_split import SPLIT_MODES, EntropySplit
from grpo.quadrants import QUADRANTS, split_quadrants


@dataclass
class QuadrantScale:
    """Multiplier of each quadrant's policy-gradient weight (>= 0). Unknown quadrant names are refused."""

    pos_high: float = 1.0
    """A > 0, high entropy (the paper's PHR)."""
    pos_low: float = 1.0
    """A > 0, low entropy (PLR)."""
    neg_high: float = 1.0
    """A < 0, high entropy (NHR)."""
    neg_low: float = 1.0
    """A < 0, low entropy (NLR)."""

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


@dataclass
class QuadrantConfig(InterventionConfig):
    name: str = "quadrant"
    """Registered name of the method."""
    scale: QuadrantScale = field(default_factory=QuadrantScale)
    """Per-quadrant weight multipliers: 0 freezes, 1 leaves, k > 1 amplifies."""
    split: EntropySplit = field(default_factory=EntropySplit)
    """How tokens are called high/low entropy (``grpo.quadrants``)."""
    renormalize: bool = False
    """If true, frozen tokens (scale 0) leave ``loss_mask``, so the policy-gradient normaliser counts only the
    others (their KL term stays; no effect on Dr. GRPO's constant normaliser)."""
    mask_kl: bool = False
    """If true, the KL weight is multiplied by the quadrant scale too (default: the KL term is untouched)."""

    def validate(self) -> None:
        super().validate()
        where = check.where(self)
        if not isinstance(self.scale, QuadrantScale):
            raise ConfigError(
                f"{where}: scale must be a mapping of quadrant -> multiplier with keys {list(QUADRANTS)}, "
                f"got {self.scale!r}"
            )
        for name, value in vars(self.scale).items():
            check.number(where, f"scale.{name}", value, low=0.0)
        if not isinstance(self.split, EntropySplit):
            raise ConfigError(f"{where}: split must be a mapping with keys mode, high_fraction, threshold")
        self.split.validate(where)
        check.boolean(where, "renormalize", self.renormalize)
        check.boolean(where, "mask_kl", self.mask_kl)


@register("quadrant")
class Quadrant(Intervention):
    config_class = QuadrantConfig
    config: QuadrantConfig

    def quadrant_split(self) -> EntropySplit:
        return self.config.split

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        cfg = self.config
        masks = split_quadrants(facts, cfg.split)
        scales = cfg.scale.as_dict()
        per_token = masks.per_token(scales).to(credit.weights.dtype)
        weights = credit.weights * per_token
        kl_weights = (
            credit.kl_weights * per_token.to(credit.kl_weights.dtype) if cfg.mask_kl else credit.kl_weights
        )
        frozen = torch.zeros_like(facts.response_mask, dtype=torch.bool)
        for name, mask in masks.items():
            if scales[name] == 0.0:
                frozen = frozen | mask
        loss_mask = credit.loss_mask & ~frozen if cfg.renormalize else credit.loss_mask
        n_resp = max(int(facts.response_mask.sum()), 1)
        info = {
            "quadrant/split_threshold": masks.threshold,
            "quadrant/split_high_fraction": cfg.split.high_fraction
            if cfg.split.mode != "absolute"
            else float("nan"),
            **{f"quadrant/split_mode_{mode}": float(cfg.split.mode == mode) for mode in SPLIT_MODES},
            **{f"quadrant/scale_{name}": value for name, value in scales.items()},
            "quadrant/renormalize": float(cfg.renormalize),
            "quadrant/mask_kl": float(cfg.mask_kl),
            "quadrant/frozen_share": float(frozen.sum()) / n_resp,
        }
        return replace(credit, weights=weights, kl_weights=kl_weights, loss_mask=loss_mask).with_info(**info)
