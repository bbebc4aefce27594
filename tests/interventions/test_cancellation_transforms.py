"""min_replace and adv_orthogonal on the hand-built trie of tests/grpo/test_cancellation.py: the guarantee each
docstring states, hand-computed weights, unshared tokens untouched, composition after a mask."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import interventions  # noqa: F401  (registers every method)
from grpo.credit import TokenCredit, TokenFacts, build_intervention
from grpo.prefixes import batch_prefixes
from tests.grpo.test_cancellation import trie_facts

AGGREGATIONS = ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]
ONLY_NEG_LOW = {"name": "quadrant", "scale": {"pos_high": 0.0, "pos_low": 0.0, "neg_high": 0.0}}
# scale 0.5 on positive tokens, 1 on negative ones (every token is low-entropy: entropy 0 in trie_facts)
HALF_POSITIVE = {"name": "quadrant", "scale": {"pos_high": 0.5, "pos_low": 0.5}}
# shared tokens of the trie: t=0,1 of every row, t=2 of rows 0 and 1
SHARED = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]]).bool()


def apply(steps: list[dict], facts: TokenFacts) -> TokenCredit:
    method = build_intervention({"name": "compose", "steps": steps})
    return method.credit(facts, TokenCredit.grpo_default(facts), torch.Generator().manual_seed(0))


def node_net(facts: TokenFacts, credit: TokenCredit, unit_weights: bool = False) -> torch.Tensor:
    """[B, T] net_n = sum over the token's node of c w A (w = 1 with unit_weights)."""
    w = torch.ones_like(credit.weights) if unit_weights else credit.weights
    v = facts.loss_coefficients(credit.loss_mask) * w.double() * credit.advantages.double()
    return batch_prefixes(facts).node_sum(v)


def test_min_replace_hand_weights_after_only_neg_low():
    facts = trie_facts()
    masked = apply([ONLY_NEG_LOW], facts)
    fixed = apply([ONLY_NEG_LOW, {"name": "min_replace"}], facts)
    # t=0,1 mix weight 0 (r0, r1) and 1 (r2, r3): min 0; t=2 {r0, r1} already 0; unshared tokens keep theirs
    assert fixed.weights.tolist() == [
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1],
        [0, 0, 1, 0, 0],
    ]
    assert torch.equal(fixed.weights[~SHARED], masked.weights[~SHARED])
    assert fixed.info["min_replace/changed_share"] == pytest.approx(4 / 15)
    assert fixed.info["min_replace/shared_token_share"] == pytest.approx(10 / 15)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_min_replace_net_is_the_common_weight_times_the_plain_net(aggregation):
    facts = trie_facts(aggregation)
    fixed = apply([HALF_POSITIVE, {"name": "min_replace"}], facts)
    # t=0,1: min(0.5, 0.5, 1, 1) = 0.5; t=2 {r0, r1}: 0.5
    assert fixed.weights[SHARED].unique().tolist() == [0.5]
    net, plain = node_net(facts, fixed), node_net(facts, fixed, unit_weights=True)
    assert torch.equal(net[SHARED], 0.5 * plain[SHARED])  # exact: min is exact, 0.5 a power of two
    if aggregation == "seq_mean_token_mean":  # grpo: plain net at t=0 is 1/80 (test_cancellation), so 1/160
        assert float(net[0, 0]) == pytest.approx(1 / 160, abs=1e-15)
    else:
        assert float(net[0, 0]) == 0.0  # equal coefficients: the whole group cancels again


def test_min_replace_alone_leaves_plain_grpo_unchanged():
    facts = trie_facts()
    assert torch.equal(
        apply([{"name": "min_replace"}], facts).weights, TokenCredit.grpo_default(facts).weights
    )


def test_adv_orthogonal_hand_weights():
    facts = trie_facts("token_mean")
    plain = apply([{"name": "adv_orthogonal"}], facts)
    # c = 1/15; t=2 {r0, r1}: u = (1, 1)/15, w = (1, 1): w - (u.w / u.u) u = 1 - 15 * (1/15) = 0;
    # t=0,1: u.w = 0 already -> unchanged
    assert plain.weights[:, :2].tolist() == [[1.0, 1.0]] * 4
    assert plain.weights[0, 2] == 0.0 and plain.weights[1, 2] == 0.0
    masked = apply([ONLY_NEG_LOW, {"name": "adv_orthogonal"}], facts)
    # t=0,1: w = (0, 0, 1, 1), u = (1, 1, -1, -1)/15: u.w = -2/15, u.u = 4/225 -> w + 7.5 u = 0.5 everywhere
    assert torch.allclose(masked.weights[:, :2], torch.full((4, 2), 0.5), atol=1e-6)
    unshared = ~SHARED & facts.response_mask
    assert torch.equal(masked.weights[unshared], apply([ONLY_NEG_LOW], facts).weights[unshared])


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("before", [[], [ONLY_NEG_LOW], [HALF_POSITIVE], [{"name": "hapo", "alpha": 0.3}]])
def test_adv_orthogonal_zeroes_every_shared_net(aggregation, before):
    facts = trie_facts(aggregation)
    facts = replace(facts, entropy=torch.rand(4, 5, generator=torch.Generator().manual_seed(1)) * 0.5)
    fixed = apply([*before, {"name": "adv_orthogonal"}], facts)
    net = node_net(facts, fixed)
    gross = facts.loss_coefficients(fixed.loss_mask).sum()
    assert float(net[SHARED].abs().max()) <= 1e-7 * float(gross)
    incoming = apply(before, facts) if before else TokenCredit.grpo_default(facts)
    unshared = ~SHARED & facts.response_mask
    assert torch.equal(fixed.weights[unshared], incoming.weights[unshared])
    assert torch.equal(fixed.advantages, incoming.advantages)


def test_adv_orthogonal_sees_grpo_coefficients():
    """Under grpo the projection is against c * A. Against A alone the whole-group nodes (A.w = 0) would be left
    as they are, with net 1/80 (test_cancellation); against c * A they move and reach 0 (float32 weights)."""
    facts = trie_facts("seq_mean_token_mean")
    fixed = apply([{"name": "adv_orthogonal"}], facts)
    assert not torch.allclose(fixed.weights[:, 0], torch.ones(4))  # plain weights do not cancel under grpo
    assert float(node_net(facts, fixed)[0, 0]) == pytest.approx(
        0.0, abs=1e-8
    )  # float32 weights: rounding only


@pytest.mark.parametrize("name", ["min_replace", "adv_orthogonal"])
def test_transforms_need_the_sampled_tokens(name):
    facts = replace(trie_facts(), response_ids=None)
    with pytest.raises(ValueError, match="response_ids"):
        apply([{"name": name}], facts)
