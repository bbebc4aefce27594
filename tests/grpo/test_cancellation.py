"""The prefix trie of a group and gradient cancellation on it, against values computed by hand (comments)."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from fractions import Fraction

import pytest
import torch

from grpo.cancellation import NODE_KINDS, cancellation_metrics
from grpo.credit import TokenCredit, TokenFacts
from grpo.entropy_split import EntropySplit
from grpo.loss import aggregate, token_coefficients
from grpo.prefixes import batch_prefixes, group_members, shared_prefixes
from grpo.quadrants import split_quadrants

# One group of four responses (0 = padding id, also a real token id elsewhere: padding must never match):
#   r0: 7 8 2        A = +1  (len 3)
#   r1: 7 8 2 3      A = +1  (len 4)
#   r2: 7 8 5 4 5    A = -1  (len 5)
#   r3: 7 8 6        A = -1  (len 3)
# shared nodes: t=0 {0,1,2,3}, t=1 {0,1,2,3} (the whole group), t=2 {0,1} (both positive); 10 of 15 tokens.
IDS = [[7, 8, 2, 0, 0], [7, 8, 2, 3, 0], [7, 8, 5, 4, 5], [7, 8, 6, 0, 0]]
LENGTHS = [3, 4, 5, 3]
ADV = [1.0, 1.0, -1.0, -1.0]
LOW = EntropySplit(mode="absolute", threshold=1.0)  # every token below 1 nat is low-entropy


def trie_facts(aggregation: str = "token_mean", entropy: float = 0.0) -> TokenFacts:
    mask = torch.tensor([[t < n for t in range(5)] for n in LENGTHS])
    adv = torch.tensor(ADV)[:, None] * mask.float()
    zeros = torch.zeros(4, 5)
    return TokenFacts(
        advantages=adv,
        entropy=torch.full((4, 5), entropy) * mask,
        behaviour_logprobs=zeros,
        old_logprobs=zeros,
        response_mask=mask,
        group_ids=torch.zeros(4, dtype=torch.long),
        rewards=torch.tensor([1.0, 1.0, 0.0, 0.0]),
        step=0,
        response_ids=torch.tensor(IDS),
        loss_aggregation=aggregation,
        max_new_tokens=5,
    )


def metrics(facts: TokenFacts, credit: TokenCredit | None = None) -> dict[str, float]:
    credit = credit or TokenCredit.grpo_default(facts)
    return cancellation_metrics(facts, credit, split_quadrants(facts, LOW))


def test_trie_nodes_by_hand():
    facts = trie_facts()
    p = batch_prefixes(facts)
    assert p.size.tolist() == [[4, 4, 2, 0, 0], [4, 4, 2, 1, 0], [4, 4, 1, 1, 1], [4, 4, 1, 0, 0]]
    # node sums of the row index: t=0,1 -> 0+1+2+3 = 6 ; t=2 {0,1} -> 1
    s = p.node_sum(torch.arange(4.0)[:, None].expand(4, 5))
    assert s[:, :2].tolist() == [[6.0, 6.0]] * 4 and s[0, 2] == s[1, 2] == 1.0 and s[2, 2] == 2.0


def test_group_members_with_unordered_groups_of_unequal_size():
    assert group_members(torch.tensor([5, 2, 5, 2, 5])).tolist() == [
        [0, 2, 4],
        [1, 3, -1],
        [0, 2, 4],
        [1, 3, -1],
        [0, 2, 4],
    ]
    # identical responses in different groups share nothing; padding ids never match
    ids = torch.tensor([[1, 2, 0], [1, 2, 0], [1, 2, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0]]).bool()
    p = shared_prefixes(ids, mask, torch.tensor([0, 1, 0]))
    assert p.size.tolist() == [[2, 2, 0], [1, 1, 0], [2, 2, 0]]


def brute_force_sizes(ids: list[list[int]], lengths: list[int], groups: list[int]) -> list[list[int]]:
    """A dictionary trie: how many responses of the group share each token's prefix."""
    width = len(ids[0])
    out = [[0] * width for _ in ids]
    for i, (row, n) in enumerate(zip(ids, lengths, strict=True)):
        for t in range(n):
            out[i][t] = sum(
                1
                for k, (other, m) in enumerate(zip(ids, lengths, strict=True))
                if groups[k] == groups[i] and m > t and other[: t + 1] == row[: t + 1]
            )
    return out


@pytest.mark.parametrize("seed", range(5))
def test_trie_matches_a_dictionary_trie_on_random_batches(seed):
    rng = random.Random(seed)
    width, rows = 7, 24
    groups = [rng.randrange(5) for _ in range(rows)]
    lengths = [rng.randint(0, width) for _ in range(rows)]
    # a 3-token vocabulary makes long shared prefixes likely; padding uses a real id
    ids = [[rng.randrange(3) if t < n else 0 for t in range(width)] for n in lengths]
    mask = torch.tensor([[t < n for t in range(width)] for n in lengths])
    p = shared_prefixes(torch.tensor(ids), mask, torch.tensor(groups))
    assert p.size.tolist() == brute_force_sizes(ids, lengths, groups)


def test_token_coefficients_are_those_of_aggregate():
    x = torch.randn(4, 5, dtype=torch.float64)
    mask = trie_facts().response_mask
    for how in ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"):
        c = token_coefficients(mask, how, 5)
        assert float((c * x).sum()) == pytest.approx(float(aggregate(x, mask, how, 5)), abs=1e-12)
    assert token_coefficients(mask, "seq_mean_token_mean", 5)[:, 0].tolist() == pytest.approx(
        [1 / 12, 1 / 16, 1 / 20, 1 / 12]
    )


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_sum_norm"])
def test_full_group_prefix_cancels_exactly_under_equal_coefficients(aggregation):
    facts = trie_facts(aggregation)
    p = batch_prefixes(facts)
    v = facts.loss_coefficients(facts.response_mask) * facts.advantages.double()
    net = p.node_sum(v)
    assert net[:, :2].abs().max() == 0.0  # the whole group's nodes: exactly zero
    # t=2 {r0, r1}: both +1, c equal -> net = 2c; dapo c = 1/15, dr_grpo c = 1/(4*5)
    c = 1 / 15 if aggregation == "token_mean" else 1 / 20
    assert float(net[0, 2]) == pytest.approx(2 * c, abs=1e-15)
    m = metrics(facts)
    # sum|net| = 2c over the 10 shared tokens' gross 10c -> 0.2; shared mass 10 of 15 tokens' equal mass
    assert m["cancel/uncancelled_ratio"] == pytest.approx(0.2, abs=1e-12)
    assert m["cancel/uncancelled_ratio_plain"] == pytest.approx(0.2, abs=1e-12)
    assert m["cancel/shared_token_share"] == pytest.approx(10 / 15)
    assert m["cancel/shared_mass_share"] == pytest.approx(10 / 15, abs=1e-12)


def test_grpo_length_normalisation_leaves_a_residue():
    facts = trie_facts("seq_mean_token_mean")
    # c_i = 1/(B |o_i|) = 1/12, 1/16, 1/20, 1/12
    # t=0,1: net = 1/12 + 1/16 - 1/20 - 1/12 = 1/80 each, gross 67/240 each; t=2: net = gross = 7/48
    v = facts.loss_coefficients(facts.response_mask) * facts.advantages.double()
    net = batch_prefixes(facts).node_sum(v)
    assert float(net[0, 0]) == pytest.approx(1 / 80, abs=1e-15)
    assert float(net[3, 1]) == pytest.approx(1 / 80, abs=1e-15)
    ratio = Fraction(2, 80) + Fraction(7, 48)  # 41/240
    gross = 2 * Fraction(67, 240) + Fraction(7, 48)  # 169/240; all tokens' gross = 4 * 1/4 = 1
    m = metrics(facts)
    assert m["cancel/uncancelled_ratio"] == pytest.approx(float(ratio / gross), abs=1e-12)  # 41/169
    assert m["cancel/shared_mass_share"] == pytest.approx(float(gross), abs=1e-12)


def test_quadrant_mask_residue_and_node_kinds():
    """only neg_low (every token low-entropy): positive responses' weight 0, negative ones' 1."""
    facts = trie_facts("token_mean")
    masks = split_quadrants(facts, LOW)
    weights = masks.neg_low.float()
    credit = replace(TokenCredit.grpo_default(facts), weights=weights)
    v = facts.loss_coefficients(credit.loss_mask) * weights.double() * facts.advantages.double()
    net = batch_prefixes(facts).node_sum(v)
    # t=0,1: (0 + 0 - 1 - 1)/15 = -2/15 where plain GRPO had 0; t=2: {r0, r1} both frozen -> 0
    assert float(net[0, 0]) == pytest.approx(-2 / 15, abs=1e-15) and float(net[0, 2]) == 0.0
    m = cancellation_metrics(facts, credit, masks)
    # sum|net| = 4/15 = sum gross at shared nodes: nothing cancels; plain GRPO: 0.2 (test above)
    assert m["cancel/uncancelled_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert m["cancel/uncancelled_ratio_plain"] == pytest.approx(0.2, abs=1e-12)
    # kinds: t=0,1 mix pos_low and neg_low members -> mixed (8 tokens); t=2 {r0, r1} -> pos_low (2 tokens)
    assert m["cancel/mixed/shared_token_share"] == pytest.approx(8 / 15)
    assert m["cancel/pos_low/shared_token_share"] == pytest.approx(2 / 15)
    assert m["cancel/neg_low/shared_token_share"] == 0.0
    assert m["cancel/mixed/uncancelled_ratio"] == pytest.approx(1.0)
    assert m["cancel/mixed/uncancelled_ratio_plain"] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(m["cancel/pos_low/uncancelled_ratio"])  # frozen: no gross mass at its node
    assert m["cancel/pos_low/uncancelled_ratio_plain"] == pytest.approx(1.0)
    # mass: only the 4 negative tokens at t=0,1 carry weight out of 8 negative tokens (r2: 5, r3: 3)
    assert m["cancel/shared_mass_share"] == pytest.approx(4 / 8)
    assert m["cancel/mixed/shared_mass_share"] == pytest.approx(4 / 8)
    shares = sum(m[f"cancel/{k}/shared_token_share"] for k in NODE_KINDS)
    assert shares == pytest.approx(m["cancel/shared_token_share"])


def test_flat_group_nodes_are_zero_adv_and_carry_no_mass():
    facts = trie_facts()
    facts = replace(facts, advantages=torch.zeros_like(facts.advantages))
    m = metrics(facts)
    assert m["cancel/zero_adv/shared_token_share"] == pytest.approx(10 / 15)
    assert math.isnan(m["cancel/uncancelled_ratio"]) and math.isnan(m["cancel/shared_mass_share"])
    assert "cancel/zero_adv/uncancelled_ratio" not in m


def test_missing_response_ids_is_refused_by_name():
    facts = replace(trie_facts(), response_ids=None)
    with pytest.raises(ValueError, match="response_ids"):
        batch_prefixes(facts)


def test_trainer_logs_cancellation_every_step(tmp_path, sft_model_dir, math_jsonl):
    from tests.grpo.test_trainer import make_trainer

    trainer = make_trainer(tmp_path, sft_model_dir, math_jsonl)
    m = trainer.step(0)
    assert 0.0 < m["cancel/shared_token_share"] <= 1.0  # an SFT model's samples of one sum agree often
    assert m["perf/cancel_time_s"] > 0.0
    # plain GRPO credit: the ratio of the credit used is the plain one
    assert m["cancel/uncancelled_ratio"] == m["cancel/uncancelled_ratio_plain"]
    off = make_trainer(tmp_path / "off", sft_model_dir, math_jsonl, "diagnostics.cancellation=false")
    assert not any(k.startswith("cancel/") or k == "perf/cancel_time_s" for k in off.step(0))
