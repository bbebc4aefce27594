"""The quadrant split (grpo.quadrants): tie rule, modes, padding, zero advantages, statistics."""

from __future__ import annotations

import math

import pytest
import torch

import interventions  # noqa: F401  (registers every method)
from grpo.credit import ConfigError, TokenCredit, TokenFacts, build_intervention
from grpo.entropy_split import EntropySplit, entropy_high_mask
from grpo.quadrants import QUADRANTS, quadrant_stats, split_quadrants


def make_facts(adv_seq, entropy, mask, groups, rewards=None) -> TokenFacts:
    entropy = torch.tensor(entropy, dtype=torch.float32)
    mask = torch.tensor(mask, dtype=torch.bool)
    adv = torch.tensor(adv_seq, dtype=torch.float32)[:, None] * mask.float()
    zeros = torch.zeros_like(entropy)
    return TokenFacts(
        advantages=adv,
        entropy=entropy,
        behaviour_logprobs=zeros,
        old_logprobs=zeros,
        response_mask=mask,
        group_ids=torch.tensor(groups),
        rewards=torch.tensor(rewards if rewards is not None else [0.0] * len(adv_seq)),
        step=0,
    )


# The shared hand-built batch: B=4, T=3. Padding entropies are set to 100 so that any leak shows.
#   seq0 A=+1 H=[0.1, 2.0, 0.5]        seq1 A=-1 H=[1.5, 0.2, pad]
#   seq2 A= 0 H=[3.0, 0.3, 0.4]        seq3 A= 0 H=[0.6, pad, pad]
# 9 response tokens, sorted descending: 3.0 2.0 1.5 | 0.6 0.5 0.4 0.3 0.2 0.1
def batch() -> TokenFacts:
    return make_facts(
        [1.0, -1.0, 0.0, 0.0],
        [[0.1, 2.0, 0.5], [1.5, 0.2, 100.0], [3.0, 0.3, 0.4], [0.6, 100.0, 100.0]],
        [[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]],
        [0, 0, 1, 1],
    )


def as_list(mask: torch.Tensor) -> list[list[int]]:
    return mask.int().tolist()


def test_batch_quantile_split_of_the_hand_built_batch():
    # f = 1/3, n = 9: k = ceil(3) = 3, tau = 4th largest = 0.6, high = {3.0, 2.0, 1.5}
    masks = split_quadrants(batch(), EntropySplit(high_fraction=1 / 3))
    assert masks.threshold == pytest.approx(0.6)
    assert as_list(masks.pos_high) == [[0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert as_list(masks.pos_low) == [[1, 0, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert as_list(masks.neg_high) == [[0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert as_list(masks.neg_low) == [[0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert as_list(masks.zero_adv) == [[0, 0, 0], [0, 0, 0], [1, 1, 1], [1, 0, 0]]
    # the A = 0 token with H = 3.0 is high but in no quadrant; padding (H = 100) is never high
    assert as_list(masks.high) == [[0, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]]


def test_default_fraction_on_the_hand_built_batch():
    # f = 0.2, n = 9: k = ceil(1.8) = 2, tau = 3rd largest = 1.5 -> only 3.0 and 2.0 are high
    masks = split_quadrants(batch(), EntropySplit())
    assert masks.threshold == pytest.approx(1.5)
    assert as_list(masks.high) == [[0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert int(masks.neg_high.sum()) == 0


def _high_count(values, fraction) -> int:
    h = torch.tensor([values], dtype=torch.float32)
    high, _ = entropy_high_mask(h, torch.ones_like(h, dtype=torch.bool), EntropySplit(high_fraction=fraction))
    return int(high.sum())


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [
        (10, 0.2, 2),
        (15, 0.2, 3),
        (5, 0.2, 1),
        (9, 0.2, 2),
        (4, 0.2, 1),
        (100, 0.2, 20),
        (7, 0.5, 4),
        (2, 0.6, 1),
        # k = ceil(f * n) where torch.quantile(..., 1 - f, "lower") with ">" would keep ceil(f * (n - 1)):
        (6, 0.2, 2),  # ceil(1.2) = 2, not ceil(1.0) = 1
        (3, 0.5, 2),  # ceil(1.5) = 2, not 1
        (7, 0.3, 3),  # ceil(2.1) = 3, not ceil(1.8) = 2
    ],
)
def test_distinct_entropies_give_ceil_of_fraction_times_n(n, fraction, expected):
    # 0.2 * 15 = 3.0000000000000004 in floating point: the rule must still give 3, not 4
    values = [0.37 * i for i in range(n)][::-1]
    assert _high_count(values, fraction) == expected


def test_ties_at_the_boundary_count_as_low():
    # f = 0.2, n = 10: k = 2, tau = 3rd largest = 8 -> the three 8s are all low, only 9 is high
    assert _high_count([9, 8, 8, 8, 1, 1, 1, 1, 1, 1], 0.2) == 1
    # ties above the boundary stay high: tau = 3rd largest = 5 -> both 9s high
    assert _high_count([9, 9, 5, 5, 1, 1, 1, 1, 1, 1], 0.2) == 2


def test_all_equal_entropies_give_no_high_token():
    h = torch.full((3, 4), 0.7)
    mask = torch.ones_like(h, dtype=torch.bool)
    for mode in ("batch_quantile", "sequence_quantile"):
        high, threshold = entropy_high_mask(h, mask, EntropySplit(mode=mode, high_fraction=0.5))
        assert int(high.sum()) == 0
        assert threshold == pytest.approx(0.7)


def test_sequence_quantile_uses_each_response_alone():
    # row0 n=5 f=0.4: k=2, tau=3rd largest=3 -> {4, 5};  row1 all equal -> none;
    # row2 n=2: k=ceil(0.8)=1, tau=2nd largest=0.1 -> {5};  row3 empty (all padding) -> ignored
    h = torch.tensor(
        [[1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 10.0, 50, 50, 50], [0.1, 5.0, 50, 50, 50], [50.0] * 5]
    )
    mask = torch.tensor(
        [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool
    )
    high, threshold = entropy_high_mask(h, mask, EntropySplit(mode="sequence_quantile", high_fraction=0.4))
    assert as_list(high) == [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert threshold == pytest.approx((3.0 + 10.0 + 0.1) / 3)  # mean tau over the non-empty rows


def test_sequence_quantile_ties_count_as_low():
    # each row alone, all real tokens:
    #   row0 [3, 2, 2, 2, 1] f=0.4: k = 2, tau = 3rd largest = 2 -> the three 2s are low, only 3 is high
    #   row1 [5, 5, 1, 1]   f=0.4: k = ceil(1.6) = 2, tau = 3rd largest = 1 -> both 5s high
    #   row2 [5, 5, 5, 1]   f=0.4: k = 2, tau = 3rd largest = 5 -> a tie straddling the boundary: none high
    h = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0], [5.0, 5.0, 1.0, 1.0, 9.0], [5.0, 5.0, 5.0, 1.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    high, threshold = entropy_high_mask(h, mask, EntropySplit(mode="sequence_quantile", high_fraction=0.4))
    assert as_list(high) == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert threshold == pytest.approx((2.0 + 1.0 + 5.0) / 3)


def test_absolute_threshold_is_at_or_above():
    # threshold 0.5: 0.5 itself is high (>=), 0.4 is low; padding (100) never
    masks = split_quadrants(batch(), EntropySplit(mode="absolute", threshold=0.5))
    assert masks.threshold == 0.5
    assert as_list(masks.high) == [[0, 1, 1], [1, 0, 0], [1, 0, 0], [1, 0, 0]]
    assert as_list(masks.pos_low) == [[1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert as_list(masks.pos_high) == [[0, 1, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_quadrants_partition_the_nonzero_advantage_tokens():
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(8, 6, generator=g) > 0.2
    adv = torch.randint(-1, 2, (8,), generator=g).float()
    facts = make_facts(
        adv.tolist(), torch.rand(8, 6, generator=g).tolist(), mask.int().tolist(), list(range(8))
    )
    for split in (
        EntropySplit(),
        EntropySplit(mode="sequence_quantile"),
        EntropySplit(mode="absolute", threshold=0.5),
    ):
        masks = split_quadrants(facts, split)
        stacked = torch.stack([masks[q] for q in QUADRANTS]).int()
        assert int(stacked.sum(0).max()) <= 1  # disjoint
        assert torch.equal(stacked.sum(0).bool(), mask & (facts.advantages != 0))
        assert torch.equal(masks.zero_adv, mask & (facts.advantages == 0))


def test_polarity_comes_from_facts_not_from_reshaped_credit():
    # an earlier step that flipped every advantage (credit.advantages = -A) must not move a token between
    # quadrants: the quadrant intervention reads polarity from facts.advantages. f = 1/3: seq0 (A = +1 in
    # facts) has pos_low (0,0), (0,2) and pos_high (0,1); seq1 (A = -1) has neg_high (1,0), neg_low (1,1).
    facts = batch()
    default = TokenCredit.grpo_default(facts)
    flipped = TokenCredit(-default.advantages, default.weights, default.kl_weights, default.loss_mask)
    method = build_intervention(
        {
            "name": "quadrant",
            "scale": {"pos_high": 2.0, "pos_low": 0.0, "neg_high": 0.5, "neg_low": 3.0},
            "split": {"high_fraction": 1 / 3},
        }
    )
    out = method.credit(facts, flipped, torch.Generator())
    # by facts' polarity; reading credit's would give [[3, 0.5, 3], [2, 0, 0], ...]
    assert out.weights.tolist() == [[0.0, 2.0, 0.0], [0.5, 3.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    assert torch.equal(out.advantages, flipped.advantages)  # and the advantages it was given are kept


def test_quadrant_stats_hand_numbers():
    facts = batch()
    masks = split_quadrants(facts, EntropySplit(high_fraction=1 / 3))
    credit = TokenCredit.grpo_default(facts)
    weights = (
        masks.per_token({"pos_high": 2.0, "pos_low": 0.0, "neg_high": 0.5, "neg_low": 3.0})
        * facts.response_mask
    )
    credit = TokenCredit(credit.advantages, weights, credit.kl_weights, credit.loss_mask)
    stats = quadrant_stats(facts, credit, masks)
    expected = {
        "quadrant/entropy_threshold": 0.6,
        "quadrant/pos_high/share": 1 / 9,
        "quadrant/pos_low/share": 2 / 9,
        "quadrant/neg_high/share": 1 / 9,
        "quadrant/neg_low/share": 1 / 9,
        "quadrant/zero_adv/share": 4 / 9,
        "quadrant/pos_high/entropy_mean": 2.0,
        "quadrant/pos_low/entropy_mean": 0.3,  # (0.1 + 0.5) / 2
        "quadrant/neg_high/entropy_mean": 1.5,
        "quadrant/neg_low/entropy_mean": 0.2,
        "quadrant/zero_adv/entropy_mean": 1.075,  # (3.0 + 0.3 + 0.4 + 0.6) / 4
        "quadrant/pos_high/adv_mean": 1.0,
        "quadrant/neg_low/adv_mean": -1.0,
        "quadrant/zero_adv/adv_mean": 0.0,
        "quadrant/pos_high/weight_mean": 2.0,
        "quadrant/pos_low/weight_mean": 0.0,
        "quadrant/neg_high/weight_mean": 0.5,
        "quadrant/neg_low/weight_mean": 3.0,
        "quadrant/zero_adv/weight_mean": 1.0,
    }
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, abs=1e-6), key


def test_quadrant_stats_of_an_empty_quadrant_are_nan_and_share_zero():
    facts = make_facts([1.0, 1.0], [[0.1, 0.2], [0.3, 0.4]], [[1, 1], [1, 1]], [0, 0])
    stats = quadrant_stats(facts, TokenCredit.grpo_default(facts), split_quadrants(facts, EntropySplit()))
    assert stats["quadrant/neg_high/share"] == 0.0
    assert math.isnan(stats["quadrant/neg_high/entropy_mean"])
    assert stats["quadrant/pos_low/share"] == pytest.approx(0.75)  # k = ceil(0.8) = 1 high of 4


@pytest.mark.parametrize(
    ("split", "field"),
    [
        (EntropySplit(mode="median"), "split.mode"),
        (EntropySplit(high_fraction=0.0), "split.high_fraction"),
        (EntropySplit(high_fraction=1.0), "split.high_fraction"),
        (EntropySplit(mode="absolute"), "split.threshold"),
        (EntropySplit(mode="absolute", threshold=-1.0), "split.threshold"),
    ],
)
def test_bad_splits_are_refused_by_field(split, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        split.validate("intervention 'quadrant'")
