"""branch_credit on a hand-built trie: per-token values computed by hand (in the comments), the exact zero on
shared prefixes under every aggregation, the node nets, the suffix spreads, groups without signal, validation."""

from __future__ import annotations

import math

import pytest
import torch

import interventions  # noqa: F401  (registers every method)
from grpo.checks import ConfigError
from grpo.credit import TokenCredit, TokenFacts, build_intervention
from grpo.prefixes import batch_prefixes

# group 0 (rows 0-3) and group 1 (rows 4-5, both rewards equal: no signal). Row 3 has 3 tokens (padding at t=3).
#   row 0: 1 2 3 4      A = +0.5      trie: t=0 {0,1,2} (row 3 left at t=0), t=1 {0,1,2}, t=2 {0,1}, t=3 alone
#   row 1: 1 2 3 5      A = -0.5
#   row 2: 1 2 6 7      A = +0.5
#   row 3: 8 9 9 .      A = -0.5
#   row 4: 1 2 3 4      A = 0
#   row 5: 1 2 6 6      A = 0
IDS = [[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 6, 7], [8, 9, 9, 0], [1, 2, 3, 4], [1, 2, 6, 6]]
LENGTHS = [4, 4, 4, 3, 4, 4]
ADV = [0.5, -0.5, 0.5, -0.5, 0.0, 0.0]
GROUPS = [0, 0, 0, 0, 1, 1]
AGGREGATIONS = ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]
S = 1 / 6  # Abar({0, 1, 2}) = (0.5 - 0.5 + 0.5) / 3

# uniform, min_support 2, Abar(group 0) = 0:
#   t=0: rows 0-2 node {0,1,2}: 1/6 - 0 = 1/6; row 3 alone at t=0: suffix from t=0, base = group: -0.5 - 0
#   t=1: {0,1,2} continue together: 1/6 - 1/6 = 0 (shared, no branch)
#   t=2: rows 0,1 node {0,1} (Abar 0): 0 - 1/6 = -1/6; row 2 alone: suffix, base Abar({0,1,2}) = 1/6: 0.5 - 1/6
#   t=3: rows 0 and 1 alone: base Abar({0,1}) = 0: +0.5 and -0.5; row 2's suffix continues: 1/3
UNIFORM = [
    [S, 0.0, -S, 0.5],
    [S, 0.0, -S, -0.5],
    [S, 0.0, 1 / 3, 1 / 3],
    [-0.5, -0.5, -0.5, 0.0],
    [0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0],
]


def facts(adv=ADV, logprobs=None, aggregation: str = "token_mean") -> TokenFacts:
    mask = torch.tensor([[t < n for t in range(4)] for n in LENGTHS])
    logp = torch.full((6, 4), math.log(0.5)) if logprobs is None else torch.tensor(logprobs)
    return TokenFacts(
        advantages=torch.tensor(adv)[:, None] * mask.float(),
        entropy=torch.zeros(6, 4),
        behaviour_logprobs=logp * mask,
        old_logprobs=logp * mask,
        response_mask=mask,
        group_ids=torch.tensor(GROUPS),
        rewards=torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0]),
        step=0,
        response_ids=torch.tensor(IDS),
        loss_aggregation=aggregation,
        max_new_tokens=4,
    )


def run(values: dict, batch: TokenFacts) -> TokenCredit:
    method = build_intervention({"name": "branch_credit", **values})
    return method.credit(batch, TokenCredit.grpo_default(batch), torch.Generator().manual_seed(0))


def close(out: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(out.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-7, rtol=0)


def test_uniform_hand_values():
    out = run({"suffix": "uniform"}, facts())
    close(out.advantages, UNIFORM)
    # only the advantages change
    plain = TokenCredit.grpo_default(facts())
    assert torch.equal(out.weights, plain.weights) and torch.equal(out.loss_mask, plain.loss_mask)
    # 23 response tokens; shared (>= 2 members): rows 0-2 at t=0,1 and rows 0,1 at t=2, rows 4,5 at t=0,1, row 4's
    # t=2 is alone (row 5 has 6): 6 + 2 + 4 = 12; exact zeros: t=1 of rows 0-2 and all 8 tokens of group 1
    assert out.info["branch_credit/shared_token_share"] == pytest.approx(12 / 23)
    assert out.info["branch_credit/suffix_token_share"] == pytest.approx(11 / 23)
    assert out.info["branch_credit/zero_token_share"] == pytest.approx(11 / 23)
    # |A'| over group 0's 15 tokens: 3/6 + 0 + 2/6 + 1 + 2/3 + 1.5 = 4; |A| = 15 * 0.5
    assert out.info["branch_credit/mean_abs_ratio"] == pytest.approx(4 / 7.5)


def test_surprisal_hand_values():
    # 1 - pi: row 2's suffix t=2,3: pi 0.75, 0.25 -> 0.25, 0.75 (mean 0.5) -> g = 0.5, 1.5;
    # row 3's suffix is certain (pi = 1): uniform fallback; rows 0, 1: one suffix token each -> g = 1
    logp = [[math.log(0.5)] * 4 for _ in range(6)]
    logp[2][2], logp[2][3] = math.log(0.75), math.log(0.25)
    logp[3] = [0.0, 0.0, 0.0, 0.0]
    out = run({}, facts(logprobs=logp))  # surprisal is the default
    expected = [row[:] for row in UNIFORM]
    expected[2][2], expected[2][3] = (1 / 3) * 0.5, (1 / 3) * 1.5
    close(out.advantages, expected)
    # the suffix keeps its total credit
    assert float(out.advantages[2, 2:].sum()) == pytest.approx(2 / 3)


def test_min_support_three_moves_the_suffix_up():
    # t=2's node {0,1} has 2 < 3 members: rows 0-2 enter their suffix at t=2, base Abar({0,1,2}) = 1/6
    out = run({"suffix": "uniform", "min_support": 3}, facts())
    close(
        out.advantages,
        [
            [S, 0.0, 1 / 3, 1 / 3],
            [S, 0.0, -2 / 3, -2 / 3],
            [S, 0.0, 1 / 3, 1 / 3],
            [-0.5, -0.5, -0.5, 0.0],
            [0.0] * 4,
            [0.0] * 4,
        ],
    )


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_node_nets_are_the_tree_estimate(aggregation):
    """net_n = sum over the node's members of c A' = |N| c (Abar(N) - Abar(P)) on shared nodes, whatever c:
    exactly 0 where the members continue together (t=1), and the branch difference at t=0 and t=2."""
    batch = facts(aggregation=aggregation)
    out = run({"suffix": "uniform"}, batch)
    prefixes = batch_prefixes(batch)
    c = batch.loss_coefficients(out.loss_mask)
    net = prefixes.node_sum(c * out.advantages.double())
    assert float(net[0, 1]) == 0.0 and torch.all(out.advantages[:3, 1] == 0.0)
    # rows 0-2 have equal lengths, hence equal c, in every aggregation
    assert float(net[0, 0]) == pytest.approx(3 * float(c[0, 0]) * S)
    assert float(net[0, 2]) == pytest.approx(2 * float(c[0, 2]) * -S)
    # plain GRPO at t=1 leaves c * (0.5 - 0.5 + 0.5) on the same node
    plain = prefixes.node_sum(c * batch.advantages.double())
    assert float(plain[0, 1]) == pytest.approx(float(c[0, 1]) * 0.5)


def test_row_sums_telescope():
    # shared part: Abar(B_i) - Abar(group); suffix: |suffix| (A_i - Abar(B_i))
    out = run({"suffix": "uniform"}, facts())
    sums = out.advantages.double().sum(-1).tolist()
    assert sums[0] == pytest.approx((0.0 - 0.0) + 1 * 0.5)  # B = {0,1}
    assert sums[2] == pytest.approx((S - 0.0) + 2 * (0.5 - S))  # B = {0,1,2}
    assert sums[3] == pytest.approx(3 * -0.5)  # B = the group


def test_scales_with_the_advantage_and_ignores_a_shift():
    # within a group A is affine in the reward: A' is linear in the scale and blind to a common shift
    doubled = run({"suffix": "uniform"}, facts(adv=[2 * a for a in ADV]))
    close(doubled.advantages, [[2 * v for v in row] for row in UNIFORM])
    shifted = run({"suffix": "uniform"}, facts(adv=[a + 1.0 for a in ADV[:4]] + [3.0, 3.0]))
    close(shifted.advantages, UNIFORM)


def test_padding_and_groups_without_signal_stay_zero():
    out = run({}, facts())
    assert float(out.advantages[3, 3]) == 0.0
    assert torch.all(out.advantages[4:] == 0.0)


@pytest.mark.parametrize(
    "values, field",
    [
        ({"min_support": 1}, "min_support"),
        ({"suffix": "entropy"}, "suffix"),
        ({"min_support": 2.5}, "min_support"),
    ],
)
def test_refuses_bad_values(values, field):
    with pytest.raises(ConfigError, match=field):
        build_intervention({"name": "branch_credit", **values})
