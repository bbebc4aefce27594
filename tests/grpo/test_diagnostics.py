"""grpo.diagnostics: gradient decomposition on a tiny model, log-prob change, answer diversity."""

from __future__ import annotations

import math

import pytest
import torch

import interventions  # noqa: F401  (registers every method)
from grpo.advantages import group_advantages
from grpo.credit import TokenCredit, TokenFacts
from grpo.diagnostics import answer_diversity, logprob_change, quadrant_gradient_diagnostics
from grpo.entropy_split import EntropySplit
from grpo.loss import policy_loss
from grpo.quadrants import QUADRANTS, split_quadrants
from grpo.rollout import response_logprobs
from tests.conftest import tiny_llama

B, P, T = 8, 3, 5


@pytest.fixture(scope="module")
def tiny():
    model = tiny_llama(
        0,
        vocab_size=16,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
    ).float()
    g = torch.Generator().manual_seed(5)
    prompt_ids = torch.randint(1, 16, (B, P), generator=g)
    prompt_mask = torch.ones(B, P, dtype=torch.bool)
    response_ids = torch.randint(1, 16, (B, T), generator=g)
    response_mask = torch.arange(T)[None, :] < torch.tensor([5, 3, 5, 4, 2, 5, 5, 1])[:, None]
    group_ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])  # group 2 all wrong: A = 0
    with torch.no_grad():
        logp0, entropy = response_logprobs(
            model, prompt_ids, prompt_mask, response_ids, response_mask, with_entropy=True
        )
    old = (logp0 + 0.2 * torch.randn(B, T, generator=g)) * response_mask
    ref = (logp0 + 0.2 * torch.randn(B, T, generator=g)) * response_mask
    facts = TokenFacts(
        advantages=group_advantages(rewards, group_ids)[:, None] * response_mask,
        entropy=entropy,
        behaviour_logprobs=old,
        old_logprobs=old,
        response_mask=response_mask,
        group_ids=group_ids,
        rewards=rewards,
        step=0,
        ref_logprobs=ref,
    )
    masks = split_quadrants(facts, EntropySplit(high_fraction=0.3))
    assert all(bool(masks[q].any()) for q in QUADRANTS) and bool(masks.zero_adv.any())
    logp, _ = response_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)

    def logp_for_rows(rows: torch.Tensor) -> torch.Tensor:
        return response_logprobs(
            model, prompt_ids[rows], prompt_mask[rows], response_ids[rows], response_mask[rows]
        )[0]

    return model, logp, facts, masks, logp_for_rows


def closure(tiny, scale_kl: bool):
    """The loss with every weight times m; the KL term scaled by m too (linear) or not (affine)."""
    _, logp_graph, facts, _, _ = tiny
    credit = TokenCredit.grpo_default(facts)

    def loss(m: torch.Tensor, logp: torch.Tensor | None = None) -> torch.Tensor:
        return policy_loss(
            logp_graph if logp is None else logp,
            facts.old_logprobs,
            credit.advantages,
            credit.weights * m,
            credit.loss_mask,
            aggregation="seq_mean_token_mean",
            eps_low=0.2,
            eps_high=0.28,
            max_new_tokens=T,
            beta=0.5,
            ref_logprobs=facts.ref_logprobs,
            kl_weights=credit.kl_weights * m if scale_kl else credit.kl_weights,
        ).loss

    return loss


def grad(model, loss) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True, allow_unused=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1)
            for p, g in zip(model.parameters(), grads, strict=True)
        ]
    )


@pytest.mark.parametrize("scale_kl", [True, False])
def test_quadrant_gradients_add_up_to_the_full_gradient(tiny, scale_kl):
    model, logp, facts, masks, logp_for_rows = tiny
    loss = closure(tiny, scale_kl)
    ones, zeros = torch.ones(B, T), torch.zeros(B, T)
    g_full, g_base = grad(model, loss(ones)), grad(model, loss(zeros))
    parts = {q: grad(model, loss(masks[q].float())) - g_base for q in QUADRANTS}
    parts["zero_adv"] = grad(model, loss(masks.zero_adv.float())) - g_base
    # by linearity: sum of the quadrant gradients + the A = 0 tokens' (+ the KL part not scaled by m) = full
    assert torch.allclose(
        sum(parts.values()) + g_base, g_full, rtol=1e-5, atol=1e-6 * float(g_full.abs().max())
    )
    if scale_kl:
        assert float(g_base.abs().max()) == 0.0
        assert float(parts["zero_adv"].abs().max()) > 0.0  # their KL term
    else:
        assert float(g_base.abs().max()) > 0.0  # the KL gradient sits in the base part
        assert float(parts["zero_adv"].abs().max()) == 0.0  # A = 0: no policy-gradient term

    diag = quadrant_gradient_diagnostics(list(model.parameters()), loss, masks, logp_for_rows, logp.detach())
    for q, g in parts.items():
        # the diagnostics differentiate the model on row subsets: the same numbers up to float rounding
        # (measured here: <= 7e-7 relative)
        assert diag[f"quadrant/{q}/grad_norm"] == pytest.approx(float(g.norm()), rel=2e-6)
        # A = 0 tokens have no pg gradient: with the KL unscaled, their part is exactly 0 (cosine reported as 0)
        cos = float(g @ g_full) / (float(g.norm()) * float(g_full.norm())) if float(g.norm()) > 0 else 0.0
        assert diag[f"quadrant/{q}/grad_cos"] == pytest.approx(cos, abs=2e-6)
        assert -1.0 <= diag[f"quadrant/{q}/grad_cos"] <= 1.0
    total = sum(float(parts[q].norm()) for q in QUADRANTS)
    for q in QUADRANTS:
        assert diag[f"quadrant/{q}/grad_norm_share"] == pytest.approx(
            float(parts[q].norm()) / total, rel=2e-6
        )
    assert sum(diag[f"quadrant/{q}/grad_norm_share"] for q in QUADRANTS) == pytest.approx(1.0)
    assert diag["quadrant/full/grad_norm"] == pytest.approx(float(g_full.norm()), rel=2e-6)
    assert diag["quadrant/grad_sum_residual"] < 1e-5


def test_an_empty_quadrant_has_zero_norm_and_cosine(tiny):
    model, logp, facts, masks, logp_for_rows = tiny
    empty = split_quadrants(facts, EntropySplit(mode="absolute", threshold=1e9))  # nothing is high
    diag = quadrant_gradient_diagnostics(
        list(model.parameters()), closure(tiny, True), empty, logp_for_rows, logp.detach()
    )
    for q in ("pos_high", "neg_high"):
        assert diag[f"quadrant/{q}/grad_norm"] == 0.0 and diag[f"quadrant/{q}/grad_cos"] == 0.0
    assert diag["quadrant/pos_low/grad_norm"] > 0.0


def test_logprob_change_hand_numbers():
    # B=2, T=3; seq0 A=+1 (H high at t=0 only), seq1 A=0
    facts = TokenFacts(
        advantages=torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]),
        entropy=torch.tensor([[2.0, 0.1, 0.2], [0.3, 0.4, 0.0]]),
        behaviour_logprobs=torch.zeros(2, 3),
        old_logprobs=torch.zeros(2, 3),
        response_mask=torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool),
        group_ids=torch.tensor([0, 1]),
        rewards=torch.tensor([1.0, 1.0]),
        step=0,
    )
    masks = split_quadrants(facts, EntropySplit(mode="absolute", threshold=1.0))
    before = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    after = torch.tensor([[-0.5, -1.0, -3.5], [-2.0, -1.5, 7.0]])
    out = logprob_change(before, after, masks)
    assert out["quadrant/pos_high/logprob_change"] == pytest.approx(0.5)  # -0.5 - -1
    assert out["quadrant/pos_low/logprob_change"] == pytest.approx(0.25)  # (1.0 + -0.5) / 2
    assert out["quadrant/zero_adv/logprob_change"] == pytest.approx(-0.75)  # (-1 + -0.5) / 2, padding ignored
    assert math.isnan(out["quadrant/neg_low/logprob_change"])


def test_answer_diversity_hand_numbers():
    # group 0: {"3", "4"} of 3 -> 2/3; group 1: {"7"} of 2 (None not an answer) -> 1/2; mean = 7/12
    answers = ["3", "4", "3", "7", None]
    assert answer_diversity(answers, [0, 0, 0, 1, 1]) == pytest.approx(7 / 12)
    assert answer_diversity(["a", "b"], [0, 1]) == 1.0
    assert answer_diversity([None, None], [0, 0]) == 0.0
    assert math.isnan(answer_diversity([], []))
    with pytest.raises(ValueError, match="differ in length"):
        answer_diversity(["a"], [0, 1])


def test_the_model_is_differentiated_only_on_the_rows_each_part_needs(tiny):
    """Positive and negative responses: one forward each over their own rows; the A = 0 group costs nothing when
    its tokens have no gradient; a KL term not scaled by m adds one forward over the rows it touches."""
    model, logp, facts, masks, logp_for_rows = tiny
    seen: list[list[int]] = []

    def spy(rows: torch.Tensor) -> torch.Tensor:
        seen.append(rows.tolist())
        return logp_for_rows(rows)

    quadrant_gradient_diagnostics(list(model.parameters()), closure(tiny, True), masks, spy, logp.detach())
    seq_adv = facts.sequence_advantages
    positive = torch.nonzero(seq_adv > 0).squeeze(-1).tolist()
    negative = torch.nonzero(seq_adv < 0).squeeze(-1).tolist()
    zero = torch.nonzero(seq_adv == 0).squeeze(-1).tolist()
    # scaled KL: the A = 0 rows have a gradient (their KL term), so they get their own forward
    assert sorted(seen) == sorted([positive, negative, zero])
    seen.clear()
    quadrant_gradient_diagnostics(list(model.parameters()), closure(tiny, False), masks, spy, logp.detach())
    assert sorted(seen) == sorted(
        [positive, negative, list(range(B))]
    )  # no A = 0 forward; the KL's, all rows
