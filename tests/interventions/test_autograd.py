"""Gradients through a tiny LlamaForCausalLM, grpo.rollout.response_logprobs and grpo.loss.policy_loss:
a frozen quadrant contributes exactly zero gradient, and a quadrant scaled by k contributes k times its own."""

from __future__ import annotations

import pytest
import torch

import interventions  # noqa: F401  (registers every method)
from grpo.advantages import group_advantages
from grpo.credit import TokenCredit, TokenFacts, build_intervention
from grpo.entropy_split import EntropySplit
from grpo.loss import policy_loss
from grpo.quadrants import QUADRANTS, split_quadrants
from grpo.rollout import response_logprobs
from tests.conftest import tiny_llama

B, P, T = 8, 3, 6
SPLIT = {"high_fraction": 0.3}


@pytest.fixture(scope="module")
def setup():
    model = tiny_llama(
        0,
        vocab_size=16,
        num_attention_heads=4,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    ).float()
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(1, 16, (B, P), generator=g)
    prompt_mask = torch.ones(B, P, dtype=torch.bool)
    response_ids = torch.randint(1, 16, (B, T), generator=g)
    lengths = torch.tensor([6, 4, 5, 6, 3, 6, 2, 5])
    response_mask = torch.arange(T)[None, :] < lengths[:, None]
    # groups of 2: {0,1} r=(1,0), {2,3} r=(0,1), {4,5} r=(1,1) -> A = 0, {6,7} r=(1,0)
    group_ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    seq_adv = group_advantages(rewards, group_ids)
    with torch.no_grad():
        logp, entropy = response_logprobs(
            model, prompt_ids, prompt_mask, response_ids, response_mask, with_entropy=True, chunk_size=4
        )
    # off-policy by a little noise so that the PPO clip is active on some tokens
    old = (logp + 0.3 * torch.randn(B, T, generator=g)) * response_mask
    facts = TokenFacts(
        advantages=seq_adv[:, None] * response_mask,
        entropy=entropy,
        behaviour_logprobs=old,
        old_logprobs=old,
        response_mask=response_mask,
        group_ids=group_ids,
        rewards=rewards,
        step=0,
    )
    masks = split_quadrants(facts, EntropySplit(**SPLIT))
    for q in QUADRANTS:
        assert bool(masks[q].any()), f"fixture must populate {q}"
    assert bool(masks.zero_adv.any())
    # one forward with grad, shared by every backward below (retain_graph): the loss is linear in the weights,
    # so only the backward differs between the cases
    logp_grad, _ = response_logprobs(
        model, prompt_ids, prompt_mask, response_ids, response_mask, chunk_size=4
    )
    return model, logp_grad, facts, masks


def grad_of(
    setup, credit: TokenCredit, weights: torch.Tensor | None = None, aggregation="seq_mean_token_mean"
):
    model, logp, facts, _ = setup
    terms = policy_loss(
        logp,
        facts.old_logprobs,
        credit.advantages,
        credit.weights if weights is None else weights,
        credit.loss_mask,
        aggregation=aggregation,
        eps_low=0.2,
        eps_high=0.28,
        max_new_tokens=T,
        clip=credit.clip,
    )
    grads = torch.autograd.grad(terms.loss, list(model.parameters()), allow_unused=True, retain_graph=True)
    return [
        torch.zeros_like(p) if gr is None else gr for p, gr in zip(model.parameters(), grads, strict=True)
    ]


def quadrant_credit(setup, scale: dict) -> TokenCredit:
    _, _, facts, _ = setup
    method = build_intervention({"name": "quadrant", "scale": scale, "split": SPLIT})
    return method.credit(facts, TokenCredit.grpo_default(facts), torch.Generator())


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def near(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> bool:
    """allclose with rtol, and an atol of rtol * max|b|: float32 backward passes that scale a weight by k round
    differently, so elements near 0 (cancellations) differ by ~1e-8 absolute, not relatively."""
    return torch.allclose(a, b, rtol=rtol, atol=rtol * float(b.abs().max()))


AGGREGATIONS = ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("frozen", QUADRANTS)
def test_frozen_quadrant_contributes_exactly_zero(setup, frozen, aggregation):
    _, _, facts, masks = setup
    credit = quadrant_credit(setup, {frozen: 0.0})
    # the loss restricted to the frozen quadrant's tokens, after the intervention: gradient exactly 0.0
    restricted = flat(grad_of(setup, credit, credit.weights * masks[frozen], aggregation))
    assert bool((restricted == 0.0).all())
    # sanity: the same quadrant before the intervention does have a gradient
    default = TokenCredit.grpo_default(facts)
    assert float(flat(grad_of(setup, default, default.weights * masks[frozen], aggregation)).abs().max()) > 0
    # the full gradient with the quadrant frozen = the gradient of the loss over the other tokens only
    frozen_full = flat(grad_of(setup, credit, aggregation=aggregation))
    others = default.weights * (~masks[frozen]).float()
    assert torch.equal(frozen_full, flat(grad_of(setup, default, others, aggregation)))
    if aggregation != "seq_mean_token_mean":
        return  # (the part-by-part sum below is the same linearity; checked once to keep the suite fast)
    # ... = the sum of the other parts' gradients computed one by one
    parts = [masks[q] for q in QUADRANTS if q != frozen] + [masks.zero_adv]
    summed = sum(flat(grad_of(setup, default, default.weights * m.float(), aggregation)) for m in parts)
    assert torch.allclose(frozen_full, summed, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("k", [0.5, 3.0])
@pytest.mark.parametrize("scaled", QUADRANTS)
def test_quadrant_scaled_by_k_contributes_k_times(setup, scaled, k):
    only_k = flat(grad_of(setup, quadrant_credit(setup, {q: (k if q == scaled else 0.0) for q in QUADRANTS})))
    only_1 = flat(
        grad_of(setup, quadrant_credit(setup, {q: (1.0 if q == scaled else 0.0) for q in QUADRANTS}))
    )
    assert float(only_1.abs().max()) > 0
    assert near(only_k, k * only_1)
    # inside the full loss: scaling one quadrant by k adds (k - 1) times its gradient
    full_k = flat(grad_of(setup, quadrant_credit(setup, {scaled: k})))
    full_1 = flat(grad_of(setup, quadrant_credit(setup, {})))
    assert near(full_k - full_1, (k - 1) * only_1, rtol=1e-4)


def test_renormalize_divides_by_trained_tokens_only(setup):
    _, _, facts, masks = setup
    keep = quadrant_credit(setup, {"pos_low": 0.0})
    renorm = build_intervention(
        {"name": "quadrant", "scale": {"pos_low": 0.0}, "split": SPLIT, "renormalize": True}
    )
    renorm = renorm.credit(facts, TokenCredit.grpo_default(facts), torch.Generator())
    n_all, n_trained = int(facts.response_mask.sum()), int(renorm.loss_mask.sum())
    assert n_trained == n_all - int(masks.pos_low.sum())
    g_keep = flat(grad_of(setup, keep, aggregation="token_mean"))
    g_renorm = flat(grad_of(setup, renorm, aggregation="token_mean"))
    # token_mean: same numerator, denominators n_all vs n_trained
    assert near(g_renorm, g_keep * n_all / n_trained)
