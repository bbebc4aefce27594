"""The trainer's plumbing adds nothing of its own: with ``intervention=none`` its loss and gradient equal a plain
GRPO loss written out by hand, token by token, from the same batch (off-policy, so clipping acts); and dynamic sampling keeps only informative groups."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from grpo.credit import TokenCredit
from grpo.instruments import quadrant_split
from tests.conftest import make_trainer

AGGREGATION = {
    "grpo": "per response, then over responses",
    "dapo": "over all tokens",
    "dr_grpo": "sum / (B L)",
}


def hand_advantages(rewards: list[float], groups: list[int], scale: bool, eps: float) -> list[float]:
    """GRPO's group-relative advantage, element by element: (r - mean) / (sample std + eps), 0 in a flat group."""
    out = []
    for r, g in zip(rewards, groups, strict=True):
        same = [x for x, h in zip(rewards, groups, strict=True) if h == g]
        mean = sum(same) / len(same)
        std = math.sqrt(sum((x - mean) ** 2 for x in same) / (len(same) - 1)) if len(same) > 1 else 0.0
        out.append(0.0 if max(same) == min(same) else (r - mean) / (std + eps) if scale else r - mean)
    return out


@pytest.mark.parametrize("algo", ["grpo", "dapo", "dr_grpo"])
def test_none_equals_plain_grpo_written_out_by_hand(tmp_path, sft_model_dir, math_jsonl, algo):
    """Off-policy (two epochs, pi_old shifted by -+0.5 nats per token), so the ratio is far from 1 and clipping
    acts on both sides; the hand loss uses no grpo/ helper, only the model's log-probs."""
    trainer = make_trainer(
        tmp_path, sft_model_dir, math_jsonl, f"algo={algo}", "algo.dynamic_sampling=false", "algo.epochs=2"
    )
    a = trainer.cfg.algo
    assert a.beta == 0.0, "the hand loss below has no KL term"
    batch, _ = trainer.rollout()
    assert batch.rewards.min() < batch.rewards.max(), "need a batch with reward variance"
    rows = torch.arange(len(batch.rewards))
    logp = trainer.logprobs(batch, rows)
    r = batch.rollout
    shift = 0.5 * (1 - 2 * (torch.arange(r.response_mask.shape[1]) % 2))  # +0.5, -0.5, ... nats
    facts = trainer.facts(batch, step=0)
    facts = replace(facts, old_logprobs=(logp.detach() - shift).where(r.response_mask.bool(), 0.0))
    credit = trainer.intervention.credit(facts, TokenCredit.grpo_default(facts), torch.Generator())
    got = trainer.loss(facts, credit, batch, rows, logp=logp).loss
    g_got = torch.autograd.grad(got, trainer.params, retain_graph=True)

    # by hand, token by token: rho = exp(shift); loss_t = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)
    adv = hand_advantages(batch.rewards.tolist(), batch.group_ids.tolist(), a.scale_adv_by_std, a.adv_eps)
    mask = r.response_mask.bool()
    clipped = 0
    per_seq, total, n_tokens = [], 0.0, 0
    for i in range(mask.shape[0]):
        terms = []
        for t in torch.nonzero(mask[i]).flatten().tolist():
            rho = torch.exp(logp[i, t] - logp[i, t].detach() + shift[t])
            bounded = min(max(float(rho.detach()), 1 - a.eps_low), 1 + a.eps_high)
            if rho * adv[i] <= bounded * adv[i]:
                terms.append(-rho * adv[i])
            else:  # the clipped side: constant in theta
                terms.append(torch.tensor(-bounded * adv[i]))
                clipped += 1
        total = total + sum(terms)
        n_tokens += len(terms)
        per_seq.append(sum(terms) / max(len(terms), 1))
    if a.loss_aggregation == "seq_mean_token_mean":
        want = sum(per_seq) / len(per_seq)
    elif a.loss_aggregation == "token_mean":
        want = total / n_tokens
    else:
        want = total / (mask.shape[0] * trainer.cfg.sampling.max_new_tokens)
    g_want = torch.autograd.grad(want, trainer.params)

    assert clipped > 0 and clipped < n_tokens, (clipped, n_tokens)  # both sides of the min are exercised
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5, abs=1e-7), AGGREGATION[algo]
    for x, y in zip(g_got, g_want, strict=True):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-7)
    assert any(float(g.abs().sum()) > 0 for g in g_want)


def test_dynamic_sampling_keeps_only_informative_groups(tmp_path, sft_model_dir, math_jsonl):
    trainer = make_trainer(
        tmp_path, sft_model_dir, math_jsonl, "algo=dapo", "algo.dynamic_sampling_max_rounds=3"
    )
    batch, stats = trainer.rollout()
    groups = batch.group_ids.unique()
    assert len(groups) <= trainer.cfg.algo.prompts_per_step
    for g in groups:  # every kept group has reward variance
        rewards = batch.rewards[batch.group_ids == g]
        assert rewards.min() < rewards.max()
    assert "train/groups_informative" in stats


@pytest.mark.parametrize(
    "overrides",
    [
        ["intervention=quadrant", "intervention.split.mode=absolute", "intervention.split.threshold=0.7"],
        [
            "intervention=compose",
            "intervention.steps=[{name: hapo}, {name: quadrant, split: {mode: absolute, threshold: 0.7}}]",
        ],
    ],
    ids=["quadrant", "compose"],
)
def test_diagnostics_describe_the_quadrants_the_intervention_splits(
    tmp_path, tiny_model_dir, math_jsonl, overrides
):
    trainer = make_trainer(tmp_path, tiny_model_dir, math_jsonl, *overrides)
    split = quadrant_split(trainer.cfg, trainer.intervention)
    assert split.mode == "absolute" and split.threshold == 0.7
    assert trainer.step(0)["quadrant/entropy_threshold"] == pytest.approx(0.7)


def test_diagnostics_split_is_the_configured_one_without_a_quadrant_intervention(
    tmp_path, tiny_model_dir, math_jsonl
):
    trainer = make_trainer(
        tmp_path, tiny_model_dir, math_jsonl, "intervention=hapo", "diagnostics.split.high_fraction=0.5"
    )
    split = quadrant_split(trainer.cfg, trainer.intervention)
    assert (split.mode, split.high_fraction) == ("batch_quantile", 0.5)
