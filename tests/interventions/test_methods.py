"""Every method on small hand-built batches, against per-token values computed by hand (in the comments)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import interventions  # noqa: F401  (registers every method)
from grpo.credit import TokenCredit, TokenFacts, build_intervention
from interventions.clip_cov import token_covariance


def make_facts(adv_seq, entropy, mask, groups, rewards=None, old_logprobs=None) -> TokenFacts:
    entropy = torch.tensor(entropy, dtype=torch.float32)
    mask = torch.tensor(mask, dtype=torch.bool)
    adv = torch.tensor(adv_seq, dtype=torch.float32)[:, None] * mask.float()
    logp = (
        torch.tensor(old_logprobs, dtype=torch.float32)
        if old_logprobs is not None
        else torch.zeros_like(entropy)
    )
    return TokenFacts(
        advantages=adv,
        entropy=entropy * mask,
        behaviour_logprobs=logp,
        old_logprobs=logp,
        response_mask=mask,
        group_ids=torch.tensor(groups),
        rewards=torch.tensor(rewards if rewards is not None else [0.0] * len(adv_seq), dtype=torch.float32),
        step=0,
    )


def run(values: dict, facts: TokenFacts, seed: int = 0) -> TokenCredit:
    method = build_intervention(values)
    return method.credit(facts, TokenCredit.grpo_default(facts), torch.Generator().manual_seed(seed))


def close(tensor: torch.Tensor, expected, tol: float = 1e-5) -> bool:
    return torch.allclose(tensor.double(), torch.tensor(expected, dtype=torch.float64), atol=tol, rtol=0)


# Shared batch, B=4, T=3, groups {0, 1} and {2, 3}:
#   seq0 A=+1 r=1 H=[0.1, 2.0, 0.5]        seq1 A=-1 r=0 H=[1.5, 0.2, pad]
#   seq2 A= 0 r=1 H=[3.0, 0.3, 0.4]        seq3 A= 0 r=1 H=[0.6, pad, pad]
def batch() -> TokenFacts:
    return make_facts(
        [1.0, -1.0, 0.0, 0.0],
        [[0.1, 2.0, 0.5], [1.5, 0.2, 0.0], [3.0, 0.3, 0.4], [0.6, 0.0, 0.0]],
        [[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]],
        [0, 0, 1, 1],
        rewards=[1.0, 0.0, 1.0, 1.0],
    )


PAD = [[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]]


# ---------------------------------------------------------------------------------------------- quadrant


def test_quadrant_scales_weights_by_quadrant():
    # split f = 1/3: tau = 0.6; pos_high (0,1); pos_low (0,0),(0,2); neg_high (1,0); neg_low (1,1); A=0: seq2, seq3
    values = {
        "name": "quadrant",
        "scale": {"pos_high": 2.0, "pos_low": 0.0, "neg_high": 0.5, "neg_low": 3.0},
        "split": {"high_fraction": 1 / 3},
    }
    credit = run(values, batch())
    assert credit.weights.tolist() == [[0.0, 2.0, 0.0], [0.5, 3.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    assert credit.advantages.tolist() == batch().advantages.tolist()  # advantages untouched
    assert credit.kl_weights.int().tolist() == PAD  # KL untouched by default
    assert credit.loss_mask.int().tolist() == PAD  # normaliser untouched by default
    assert credit.info["quadrant/split_threshold"] == pytest.approx(0.6)
    assert credit.info["quadrant/frozen_share"] == pytest.approx(2 / 9)
    assert credit.info["quadrant/scale_neg_low"] == 3.0
    assert credit.info["quadrant/split_mode_batch_quantile"] == 1.0


def test_quadrant_renormalize_and_mask_kl():
    values = {
        "name": "quadrant",
        "scale": {"pos_high": 2.0, "pos_low": 0.0, "neg_high": 0.5, "neg_low": 3.0},
        "split": {"high_fraction": 1 / 3},
        "renormalize": True,
        "mask_kl": True,
    }
    credit = run(values, batch())
    # the two frozen pos_low tokens leave the normaliser; nothing else does (A = 0 tokens stay)
    assert credit.loss_mask.int().tolist() == [[0, 1, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert credit.kl_weights.tolist() == [[0.0, 2.0, 0.0], [0.5, 3.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]


SCALES = {"pos_high": 2.0, "pos_low": 0.0, "neg_high": 0.5, "neg_low": 3.0}


def test_quadrant_sequence_quantile_split_is_used():
    # f = 0.5, per response: seq0 n=3, k=2, tau = 3rd largest = 0.1 -> high {2.0, 0.5};
    # seq1 n=2, k=1, tau = 0.2 -> high {1.5}; logged threshold = mean tau over all rows
    # (seq2: k=2, tau = 0.3; seq3: n=1, tau = 0.6) = (0.1 + 0.2 + 0.3 + 0.6) / 4 = 0.3
    values = {
        "name": "quadrant",
        "scale": SCALES,
        "split": {"mode": "sequence_quantile", "high_fraction": 0.5},
    }
    credit = run(values, batch())
    assert credit.weights.tolist() == [[0.0, 2.0, 2.0], [0.5, 3.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    assert credit.info["quadrant/split_threshold"] == pytest.approx(0.3)
    assert credit.info["quadrant/split_mode_sequence_quantile"] == 1.0
    assert credit.info["quadrant/split_mode_batch_quantile"] == 0.0


def test_quadrant_absolute_split_is_used():
    # high <=> H >= 1.0: seq0 [0.1 low, 2.0 high, 0.5 low], seq1 [1.5 high, 0.2 low]
    values = {"name": "quadrant", "scale": SCALES, "split": {"mode": "absolute", "threshold": 1.0}}
    credit = run(values, batch())
    assert credit.weights.tolist() == [[0.0, 2.0, 0.0], [0.5, 3.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    # at the threshold itself: H = 0.5 counts as high (>=)
    values["split"]["threshold"] = 0.5
    assert run(values, batch()).weights[0].tolist() == [0.0, 2.0, 2.0]
    assert credit.info["quadrant/split_threshold"] == 1.0
    assert math.isnan(credit.info["quadrant/split_high_fraction"])  # no fraction in absolute mode


# ---------------------------------------------------------------------------------------------- none


def test_none_returns_the_grpo_credit_unchanged():
    facts = batch()
    credit = run({"name": "none"}, facts)
    assert credit.advantages.tolist() == facts.advantages.tolist()
    assert credit.weights.int().tolist() == PAD
    assert credit.kl_weights.int().tolist() == PAD
    assert credit.loss_mask.int().tolist() == PAD
    assert credit.clip is True and credit.info == {} and credit.extras == {}


# ---------------------------------------------------------------------------------------------- HAPO


# B=3, T=2, groups {0, 1}, {2}; all tokens real.
#   seq0 A=+0.4 H=[0.5, 1.5]    seq1 A=-2 H=[1.5, 0.5]    seq2 A=0 H=[0.0, 2.0]
# batch pool: mean 1, var (4 * 0.25 + 2 * 1) / 6 = 0.5, sigma = 0.70711 -> z(0.5) = -0.70711, z(1.5) = +0.70711
#   seq0: bound |A|/phi = 0.2 -> zc = [-0.2, +0.2] -> A' = 0.4 + 0.2 * zc = [0.36, 0.44]
#   seq1: bound 1.0 -> zc = z = [+0.70711, -0.70711] -> A' = -2 - 0.2 * zc = [-2.141421, -1.858579]
#   seq2: A = 0 -> 0
# group / sequence pool of seq0, seq1: mean 1, sigma 0.5 -> z = +-1
#   seq0 still clipped -> [0.36, 0.44];  seq1: -2 - 0.2 * [+1, -1] = [-2.2, -1.8]
def hapo_batch() -> TokenFacts:
    return make_facts([0.4, -2.0, 0.0], [[0.5, 1.5], [1.5, 0.5], [0.0, 2.0]], [[1, 1]] * 3, [0, 0, 1])


def test_hapo_batch_scope_hand_numbers():
    credit = run({"name": "hapo"}, hapo_batch())
    assert close(credit.advantages, [[0.36, 0.44], [-2.141421, -1.858579], [0.0, 0.0]])
    assert credit.weights.tolist() == [[1.0, 1.0]] * 3


@pytest.mark.parametrize("scope", ["group", "sequence"])
def test_hapo_group_and_sequence_scope_hand_numbers(scope):
    credit = run({"name": "hapo", "scope": scope}, hapo_batch())
    assert close(credit.advantages, [[0.36, 0.44], [-2.2, -1.8], [0.0, 0.0]])


# B=3, T=3, groups {0, 1}, {2}; padding entropies set to 100 so that a leak into mu/sigma would show.
#   seq0 A=+1 H=[0, 2, pad]    seq1 A=-1 H=[1, 1, 1]    seq2 A=+1 H=[4, pad, pad]
# alpha = 0.2, phi = 0.5: bound |A|/phi = 2 clips nothing below, so A' = A + 0.2 * sign(A) * z
# sequence: seq0 mu 1, sigma 1 -> z [-1, 1] -> [0.8, 1.2]; seq1 and seq2 sigma 0 -> unchanged
# group:    group0 pool {0, 2, 1, 1, 1}: mu 1, sigma sqrt(2/5) = 0.632456 -> seq0 z = -+1.581139
#           -> [0.683772, 1.316228]; seq1 z = 0 -> unchanged; group1 = {4}: sigma 0 -> unchanged
# batch:    pool {0, 2, 1, 1, 1, 4}: mu 1.5, sigma sqrt(9.5/6) = 1.258306
#           z(0) = -1.192079, z(2) = 0.397360, z(1) = -0.397360, z(4) = 1.986799
#           seq0 [0.761584, 1.079472]; seq1 -1 + 0.079472 = -0.920528; seq2 1.397360
def hapo_padded_batch() -> TokenFacts:
    facts = make_facts(
        [1.0, -1.0, 1.0],
        [[0.0, 2.0, 0.0], [1.0, 1.0, 1.0], [4.0, 0.0, 0.0]],
        [[1, 1, 0], [1, 1, 1], [1, 0, 0]],
        [0, 0, 1],
    )
    return dataclasses.replace(facts, entropy=facts.entropy + 100.0 * ~facts.response_mask)


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("sequence", [[0.8, 1.2, 0.0], [-1.0, -1.0, -1.0], [1.0, 0.0, 0.0]]),
        ("group", [[0.683772, 1.316228, 0.0], [-1.0, -1.0, -1.0], [1.0, 0.0, 0.0]]),
        ("batch", [[0.761584, 1.079472, 0.0], [-0.920528, -0.920528, -0.920528], [1.397360, 0.0, 0.0]]),
    ],
)
def test_hapo_scopes_differ_and_ignore_padding(scope, expected):
    credit = run({"name": "hapo", "alpha": 0.2, "phi": 0.5, "scope": scope}, hapo_padded_batch())
    assert close(credit.advantages, expected)


def test_hapo_zero_sigma_leaves_advantages():
    # every entropy equal -> sigma = 0 -> z = 0 -> A' = A
    facts = make_facts([0.7, -0.3], [[0.9, 0.9], [0.9, 0.9]], [[1, 1], [1, 1]], [0, 0])
    credit = run({"name": "hapo", "alpha": 0.5, "phi": 1.0}, facts)
    assert close(credit.advantages, [[0.7, 0.7], [-0.3, -0.3]], tol=1e-7)


# ---------------------------------------------------------------------------------------------- top entropy


def test_top_entropy_keeps_tokens_at_or_above_the_linear_quantile():
    # pool sorted ascending: 0.1 0.2 0.3 0.4 0.5 0.6 1.5 2.0 3.0; q = 0.8 at position 6.4
    # tau = 1.5 + 0.4 * (2.0 - 1.5) = 1.7 -> keep 2.0 (0,1) and 3.0 (2,0)
    credit = run({"name": "top_entropy"}, batch())
    assert credit.info["top_entropy/threshold"] == pytest.approx(1.7, abs=1e-6)
    assert credit.weights.tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert credit.loss_mask.int().tolist() == PAD  # normaliser unchanged


def test_top_entropy_ties_and_rho_one_keep_everything():
    equal = make_facts([1.0, -1.0], [[0.4, 0.4], [0.4, 0.4]], [[1, 1], [1, 1]], [0, 0])
    assert run({"name": "top_entropy", "rho": 0.2}, equal).weights.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    # rho = 1 -> tau = the minimum -> every real token kept, padding still 0
    assert run({"name": "top_entropy", "rho": 1.0}, batch()).weights.int().tolist() == PAD


# ---------------------------------------------------------------------------------------------- entropy advantage


def test_entropy_adv_hand_numbers():
    # bonus = min(0.4 H, |A| / 2)
    # seq0 A=+1: H [0.1, 2.0, 0.5] -> [0.04, min(0.8, 0.5)=0.5, 0.2] -> [1.04, 1.5, 1.2]
    # seq1 A=-1: H [1.5, 0.2]      -> [min(0.6, 0.5)=0.5, 0.08]      -> [-0.5, -0.92]
    # A = 0 and padding: bonus min(., 0) = 0
    credit = run({"name": "entropy_adv"}, batch())
    assert close(credit.advantages, [[1.04, 1.5, 1.2], [-0.5, -0.92, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


# ---------------------------------------------------------------------------------------------- Clip-Cov / KL-Cov


# B=2, T=2, one group. A = [+3, -3]; old log-probs [[-1, -2], [-3.5, -1.5]].
# mean A = 0; mean log pi = (-1 - 2 - 3.5 - 1.5) / 4 = -2
# cov = A * (logp + 2): seq0 [3 * 1, 3 * 0] = [3, 0];  seq1 [-3 * -1.5, -3 * 0.5] = [4.5, -1.5]
def cov_batch() -> TokenFacts:
    return make_facts(
        [3.0, -3.0],
        [[1.0, 1.0], [1.0, 1.0]],
        [[1, 1], [1, 1]],
        [0, 0],
        old_logprobs=[[-1.0, -2.0], [-3.5, -1.5]],
    )


def test_token_covariance_hand_numbers():
    f = cov_batch()
    assert close(token_covariance(f.advantages, f.old_logprobs, f.response_mask), [[3.0, 0.0], [4.5, -1.5]])


def test_token_covariance_ignores_padding():
    # seq1's second token is padding with log-prob 999: the means are over the 3 real tokens only
    # mean A = (3 + 3 - 1) / 3 = 5/3, mean log pi = (-1 - 2 - 3) / 3 = -2
    # cov = [(4/3) * 1, (4/3) * 0], [(-8/3) * (-1), pad -> 0]
    f = make_facts(
        [3.0, -1.0],
        [[1.0, 1.0], [1.0, 0.0]],
        [[1, 1], [1, 0]],
        [0, 0],
        old_logprobs=[[-1.0, -2.0], [-3.0, 999.0]],
    )
    assert close(
        token_covariance(f.advantages, f.old_logprobs, f.response_mask), [[4 / 3, 0.0], [8 / 3, 0.0]]
    )


def test_clip_cov_zeroes_one_random_candidate():
    # candidates (1 < cov < 5): (0,0) = 3 and (1,0) = 4.5; n = max(1, floor(2e-4 * 4)) = 1
    chosen = set()
    for seed in range(20):
        credit = run({"name": "clip_cov"}, cov_batch(), seed=seed)
        zeros = [(i, j) for i in range(2) for j in range(2) if credit.weights[i, j] == 0.0]
        assert len(zeros) == 1 and zeros[0] in {(0, 0), (1, 0)}
        assert credit.info["clip_cov/candidates"] == 2.0
        chosen.add(zeros[0])
        assert credit.clip is True and credit.advantages.tolist() == cov_batch().advantages.tolist()
    assert chosen == {(0, 0), (1, 0)}  # the draw really depends on the generator
    same = [run({"name": "clip_cov"}, cov_batch(), seed=7).weights for _ in range(2)]
    assert torch.equal(same[0], same[1])  # and only on it


def test_clip_cov_count_is_capped_by_candidates():
    # ratio 1 -> floor(1 * 4) = 4 wanted, only 2 candidates -> both zeroed
    credit = run({"name": "clip_cov", "ratio": 1.0}, cov_batch())
    assert credit.weights.tolist() == [[0.0, 1.0], [0.0, 1.0]]
    # window (0, 4) excludes 4.5 and admits 3 only
    credit = run({"name": "clip_cov", "ratio": 1.0, "lb": 0.0, "ub": 4.0}, cov_batch())
    assert credit.weights.tolist() == [[0.0, 1.0], [1.0, 1.0]]


def test_kl_cov_selects_top_covariance_and_adds_abs_penalty():
    # n = max(1, floor(2e-4 * 4)) = 1 -> the largest cov, (1,0) = 4.5
    method = build_intervention({"name": "kl_cov"})
    facts = cov_batch()
    credit = method.credit(facts, TokenCredit.grpo_default(facts), torch.Generator())
    assert credit.clip is False
    assert credit.extras["kl_cov/selected"].int().tolist() == [[0, 0], [1, 0]]
    # rows [1], current log-probs [-3.0, -1.0]: |-3.0 - (-3.5)| = 0.5 at the selected token, 0 elsewhere
    extra = method.extra_loss(facts, credit, torch.tensor([[-3.0, -1.0]]), torch.tensor([1]))
    assert close(extra, [[0.5, 0.0]])
    # rows [0]: nothing selected
    assert close(
        method.extra_loss(facts, credit, torch.tensor([[-0.2, -0.1]]), torch.tensor([0])), [[0.0, 0.0]]
    )


def test_kl_cov_ratio_half_beta_two():
    # n = floor(0.5 * 4) = 2 -> (1,0) = 4.5 and (0,0) = 3; penalty 2 * |logp - old|
    method = build_intervention({"name": "kl_cov", "ratio": 0.5, "beta": 2.0})
    facts = cov_batch()
    credit = method.credit(facts, TokenCredit.grpo_default(facts), torch.Generator())
    assert credit.extras["kl_cov/selected"].int().tolist() == [[1, 0], [1, 0]]
    extra = method.extra_loss(facts, credit, torch.tensor([[-1.5, -2.0], [-3.0, -1.0]]), torch.tensor([0, 1]))
    assert close(extra, [[1.0, 0.0], [1.0, 0.0]])  # 2 * 0.5 at (0,0) and (1,0)


def test_kl_cov_penalty_follows_the_kl_weights():
    # a quadrant step with mask_kl freezes neg_low (equal entropies: every token is low) and its KL weight;
    # KL-Cov still selects (1,0) = 4.5, but its penalty is beta * kl_weight * |.| = 0 there
    method = build_intervention(
        {
            "name": "compose",
            "steps": [{"name": "quadrant", "scale": {"neg_low": 0.0}, "mask_kl": True}, {"name": "kl_cov"}],
        }
    )
    facts = cov_batch()
    credit = method.credit(facts, TokenCredit.grpo_default(facts), torch.Generator())
    assert credit.extras["kl_cov/selected"].int().tolist() == [[0, 0], [1, 0]]
    assert credit.kl_weights.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    extra = method.extra_loss(facts, credit, torch.tensor([[-3.0, -1.0]]), torch.tensor([1]))
    assert close(extra, [[0.0, 0.0]])


# ---------------------------------------------------------------------------------------------- polarity-only


@pytest.mark.parametrize(
    ("name", "extra", "expected"),
    [
        # rewards [1, 0, 1, 1]; seq2/seq3 (GRPO A = 0 group) are correct and are trained too
        ("psr", {}, [[1, 1, 1], [0, 0, 0], [1, 1, 1], [1, 0, 0]]),
        ("nsr", {}, [[0, 0, 0], [-1, -1, 0], [0, 0, 0], [0, 0, 0]]),
        ("w_reinforce", {}, [[0.1, 0.1, 0.1], [-1, -1, 0], [0.1, 0.1, 0.1], [0.1, 0, 0]]),
        ("w_reinforce", {"lam": 0.5}, [[0.5, 0.5, 0.5], [-1, -1, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]]),
    ],
)
def test_polarity_only_advantages(name, extra, expected):
    credit = run({"name": name, **extra}, batch())
    assert close(credit.advantages, expected, tol=1e-7)
    assert credit.weights.int().tolist() == PAD


def test_correct_threshold():
    # rewards [0.7, 0.2]: with threshold 0.5 seq0 is correct, with the default 1.0 neither is
    facts = make_facts([0.0, 0.0], [[1.0], [1.0]], [[1], [1]], [0, 0], rewards=[0.7, 0.2])
    assert close(run({"name": "psr", "correct_threshold": 0.5}, facts).advantages, [[1.0], [0.0]])
    assert close(run({"name": "nsr"}, facts).advantages, [[-1.0], [-1.0]])


# ---------------------------------------------------------------------------------------------- GTPO


# Group 0 (T=2):  seq0 A=+1 H=[1, 3]   seq1 A=+1 H=[3, pad]   seq2 A=-1 H=[0.5, 2]   seq3 A=-1 H=[2, 2]
# Group 1:        seq4 A=+0.5 H=[10, 10]                       seq5 A=-0.5 H=[0.1, 0.1]
# alpha1 = 1, alpha2 = 0.1, factor = (1 + 0.1 w) / 1.1
# t=0 positives of group 0: H 1, 3 (sum 4, d=2): w = 2*1/4 = 0.5, 2*3/4 = 1.5 -> 1.05/1.1, 1.15/1.1
# t=1 positives: only seq0 (d=1): w = 1 -> factor 1
# t=0 negatives: 1/H = 2, 0.5 (sum 2.5, h=2): w = 1.6, 0.4 -> 1.16/1.1, 1.04/1.1
# t=1 negatives: 1/H = 0.5, 0.5: w = 1, 1 -> factor 1
# group 1: one token per polarity and position -> w = 1 -> unchanged (a leak from group 0 would change it)
def test_gtpo_hand_numbers():
    facts = make_facts(
        [1.0, 1.0, -1.0, -1.0, 0.5, -0.5],
        [[1.0, 3.0], [3.0, 0.0], [0.5, 2.0], [2.0, 2.0], [10.0, 10.0], [0.1, 0.1]],
        [[1, 1], [1, 0], [1, 1], [1, 1], [1, 1], [1, 1]],
        [0, 0, 0, 0, 1, 1],
    )
    credit = run({"name": "gtpo"}, facts)
    expected = [
        [0.954545, 1.0],
        [1.045455, 0.0],
        [-1.054545, -1.0],
        [-0.945455, -1.0],
        [0.5, 0.5],
        [-0.5, -0.5],
    ]
    assert close(credit.advantages, expected, tol=1e-5)
    # credit conservation within each polarity of group 0: 0.954545 + 1.045455 + 1 = 3
    assert float(credit.advantages[:2].sum()) == pytest.approx(3.0, abs=1e-5)


@pytest.mark.parametrize(
    "scope,expected",
    [
        # group 0 positive w = [0.5, 1, 1.5] -> shaped 1.05, 1.10, 1.15: z = -+sqrt(3/2); negative shaped
        # -1.16, -1.04 at t0 and -1.1, -1.1 at t1: z = -+sqrt(2), 0, 0; group 1 has no spread: 0
        (
            "group",
            [[-1.224745, 0.0], [1.224745, 0.0], [-1.414214, 0.0], [1.414214, 0.0], [0.0, 0.0], [0.0, 0.0]],
        ),
        # batch: group 1's four shaped rewards (all +-1.1) join the pools: z = -+sqrt(5/2), -+sqrt(3)
        (
            "batch",
            [[-1.581139, 0.0], [1.581139, 0.0], [-1.732051, 0.0], [1.732051, 0.0], [0.0, 0.0], [0.0, 0.0]],
        ),
    ],
)
def test_gtpo_paper_normalisation_hand_numbers(scope, expected):
    facts = make_facts(
        [1.0, 1.0, -1.0, -1.0, 0.5, -0.5],
        [[1.0, 3.0], [3.0, 0.0], [0.5, 2.0], [2.0, 2.0], [10.0, 10.0], [0.1, 0.1]],
        [[1, 1], [1, 0], [1, 1], [1, 1], [1, 1], [1, 1]],
        [0, 0, 0, 0, 1, 1],
    )
    credit = run({"name": "gtpo", "normalisation": "paper", "scope": scope}, facts)
    assert close(credit.advantages, expected, tol=1e-5)
    # of the 11 tokens with A != 0, row 0's first (A > 0, now < 0) and row 3's first (A < 0, now > 0) flipped
    assert credit.info["gtpo/sign_flip_frac"] == pytest.approx(2 / 11)
    # alpha1 and alpha2 cancel: w averages 1 over each polarity of every group, so every pool's mean is
    # alpha1 + alpha2 and its deviations alpha2 (w - 1)
    other = run(
        {"name": "gtpo", "normalisation": "paper", "scope": scope, "alpha1": 3.0, "alpha2": 0.7}, facts
    )
    assert close(other.advantages, expected, tol=1e-5)


def test_gtpo_zero_entropies_share_equally_and_zero_advantage_is_untouched():
    facts = make_facts([1.0, 1.0, 0.0], [[0.0], [0.0], [5.0]], [[1], [1], [1]], [0, 0, 1])
    assert close(run({"name": "gtpo", "alpha2": 0.5}, facts).advantages, [[1.0], [1.0], [0.0]], tol=1e-7)
