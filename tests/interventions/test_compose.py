"""compose applies its steps in order, each in its own step window; a method's window is [start, end)."""

from __future__ import annotations

import torch

import interventions  # noqa: F401  (registers every method)
from grpo.credit import TokenCredit, TokenFacts, build_intervention


def facts_at(step: int) -> TokenFacts:
    # B=3, T=2: seq0 A=+0.4 H=[0.5, 1.5]; seq1 A=-2 H=[1.5, 0.5]; seq2 A=0 H=[0.0, 2.0]
    mask = torch.ones(3, 2, dtype=torch.bool)
    adv = torch.tensor([[0.4, 0.4], [-2.0, -2.0], [0.0, 0.0]])
    zeros = torch.zeros(3, 2)
    return TokenFacts(
        advantages=adv,
        entropy=torch.tensor([[0.5, 1.5], [1.5, 0.5], [0.0, 2.0]]),
        behaviour_logprobs=zeros,
        old_logprobs=zeros,
        response_mask=mask,
        group_ids=torch.tensor([0, 0, 1]),
        rewards=torch.tensor([1.0, 0.0, 1.0]),
        step=step,
    )


def same(a: TokenCredit, b: TokenCredit) -> bool:
    return (
        torch.equal(a.advantages, b.advantages)
        and torch.equal(a.weights, b.weights)
        and torch.equal(a.kl_weights, b.kl_weights)
        and torch.equal(a.loss_mask, b.loss_mask)
        and a.clip == b.clip
    )


def test_hapo_then_quadrant_freeze_equals_applying_them_in_sequence():
    facts = facts_at(0)
    hapo = {"name": "hapo", "alpha": 0.3}
    freeze = {"name": "quadrant", "scale": {"neg_low": 0.0}, "split": {"high_fraction": 0.5}}
    composed = build_intervention({"name": "compose", "steps": [hapo, freeze]})
    gen = torch.Generator()
    by_hand = build_intervention(freeze).credit(
        facts, build_intervention(hapo).credit(facts, TokenCredit.grpo_default(facts), gen), gen
    )
    out = composed.credit(facts, TokenCredit.grpo_default(facts), gen)
    assert same(out, by_hand)
    # and it is really both: HAPO moved the advantages, the freeze zeroed neg_low = seq1's low-entropy token.
    # f = 0.5, n = 6: k = 3, tau = 4th largest of {2.0, 1.5, 1.5, 0.5, 0.5, 0.0} = 0.5 -> seq1 t=1 (H 0.5) low
    assert out.weights.tolist() == [[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
    assert not torch.equal(out.advantages, facts.advantages)
    assert float(out.advantages[1, 0]) < -2.0  # the high-entropy negative token got more (negative) credit


def test_compose_respects_each_steps_window():
    step_cfg = {
        "name": "quadrant",
        "scale": {"pos_high": 0.0, "pos_low": 0.0},
        "start_step": 2,
        "end_step": 4,
    }
    composed = build_intervention({"name": "compose", "steps": [step_cfg]})
    gen = torch.Generator()
    for step in range(6):
        facts = facts_at(step)
        default = TokenCredit.grpo_default(facts)
        out = composed.credit(facts, default, gen)
        if step in (2, 3):
            assert out.weights[0].tolist() == [0.0, 0.0]  # positive tokens frozen
        else:
            assert same(out, default)  # outside [2, 4): untouched


def test_active_window_of_a_method():
    method = build_intervention({"name": "hapo", "start_step": 2, "end_step": 4})
    assert [method.active(s) for s in range(6)] == [False, False, True, True, False, False]
    forever = build_intervention({"name": "hapo", "start_step": 3})
    assert not forever.active(2) and forever.active(3) and forever.active(10**9)


def test_compose_sums_extra_losses_of_active_steps():
    facts = facts_at(0)
    logp_old = torch.tensor([[-1.0, -2.0], [-3.5, -1.5], [-0.5, -0.5]])
    facts = TokenFacts(**{**facts.__dict__, "old_logprobs": logp_old})
    composed = build_intervention(
        {
            "name": "compose",
            "steps": [{"name": "kl_cov", "ratio": 0.2}, {"name": "kl_cov", "ratio": 0.2, "beta": 3}],
        }
    )
    credit = composed.credit(facts, TokenCredit.grpo_default(facts), torch.Generator())
    rows = torch.tensor([0, 1, 2])
    extra = composed.extra_loss(facts, credit, logp_old + 0.25, rows)
    # n = max(1, floor(0.2 * 6)) = 1 selected token, penalty (1 + 3) * 0.25 = 1.0 there, 0 elsewhere
    assert extra is not None and float(extra.sum()) == 1.0 and int((extra != 0).sum()) == 1


def test_compose_leaves_out_the_extra_loss_of_a_step_outside_its_window():
    facts = facts_at(0)
    logp_old = torch.tensor([[-1.0, -2.0], [-3.5, -1.5], [-0.5, -0.5]])
    facts = TokenFacts(**{**facts.__dict__, "old_logprobs": logp_old})
    composed = build_intervention(
        {
            "name": "compose",
            "steps": [
                {"name": "kl_cov", "ratio": 0.2},
                {"name": "kl_cov", "ratio": 0.2, "beta": 3, "start_step": 5},
            ],
        }
    )
    credit = composed.credit(facts, TokenCredit.grpo_default(facts), torch.Generator())
    extra = composed.extra_loss(facts, credit, logp_old + 0.25, torch.tensor([0, 1, 2]))
    # at step 0 only the first step acts: 1 * 0.25 on its one selected token (+ 3 * 0.25 if the second did)
    assert extra is not None and float(extra.sum()) == 0.25 and int((extra != 0).sum()) == 1
