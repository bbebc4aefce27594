"""The trainer's plumbing adds nothing of its own: with ``intervention=none`` its loss and gradient equal a plain
GRPO loss written out by hand from the same batch, bit for bit; and dynamic sampling keeps only informative groups."""

from __future__ import annotations

import pytest
import torch

from grpo.advantages import group_advantages
from grpo.credit import TokenCredit
from grpo.loss import aggregate, clipped_surrogate
from grpo.rollout import response_logprobs
from tests.conftest import make_trainer


@pytest.mark.parametrize("algo", ["grpo", "dapo", "dr_grpo"])
def test_none_equals_plain_grpo_bit_for_bit(tmp_path, sft_model_dir, math_jsonl, algo):
    trainer = make_trainer(tmp_path, sft_model_dir, math_jsonl, f"algo={algo}", "algo.dynamic_sampling=false")
    batch, _ = trainer.rollout()
    assert batch.rewards.min() < batch.rewards.max(), "need a batch with reward variance"
    facts = trainer.facts(batch, step=0)
    credit = trainer.intervention.credit(facts, TokenCredit.grpo_default(facts), torch.Generator())
    rows = torch.arange(len(batch.rewards))
    params = trainer.params

    got = trainer.loss(facts, credit, batch, rows).loss
    g_got = torch.autograd.grad(got, params)

    # plain GRPO by hand: same batch, no intervention objects involved
    r, a = batch.rollout, trainer.cfg.algo
    logp, _ = response_logprobs(
        trainer.policy.model,
        r.prompt_ids,
        r.prompt_mask,
        r.response_ids,
        r.response_mask,
        chunk_size=trainer.cfg.train.logits_chunk,
        buckets=trainer.cfg.train.logprob_buckets,
    )
    adv = (
        group_advantages(batch.rewards, batch.group_ids, a.scale_adv_by_std, a.adv_eps)[:, None]
        * r.response_mask
    )
    pg, _ = clipped_surrogate(logp, logp.detach(), adv, a.eps_low, a.eps_high)
    mask = r.response_mask
    want = aggregate(mask.float() * pg, mask, a.loss_aggregation, trainer.cfg.sampling.max_new_tokens)
    g_want = torch.autograd.grad(want, params)

    assert torch.equal(got.detach(), want.detach())
    assert all(torch.equal(x, y) for x, y in zip(g_got, g_want, strict=True))
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
    assert trainer.diag_split.mode == "absolute" and trainer.diag_split.threshold == 0.7
    assert trainer.step(0)["quadrant/entropy_threshold"] == pytest.approx(0.7)


def test_diagnostics_split_is_the_configured_one_without_a_quadrant_intervention(
    tmp_path, tiny_model_dir, math_jsonl
):
    trainer = make_trainer(
        tmp_path, tiny_model_dir, math_jsonl, "intervention=hapo", "diagnostics.split.high_fraction=0.5"
    )
    assert (trainer.diag_split.mode, trainer.diag_split.high_fraction) == ("batch_quantile", 0.5)
