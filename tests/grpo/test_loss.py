"""The GRPO objective on small hand-built tensors, against values computed by hand (in the comments)."""

from __future__ import annotations

import pytest
import torch

from grpo.loss import aggregate, clipped_surrogate, kl_penalty, policy_loss


def test_clipped_surrogate_hand_values():
    # ratios exp(log 1.5)=1.5, exp(log .5)=.5, 1.0; eps .2/.28
    # token0 A=+1, rho 1.5: min(1.5, 1.28) = 1.28 -> loss -1.28
    # token1 A=-1, rho 0.5: min(-0.5, -0.8) = -0.8 -> loss 0.8
    # token2 A=+2, rho 1: -2
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    pg, ratio = clipped_surrogate(logp, old, adv, eps_low=0.2, eps_high=0.28)
    assert torch.allclose(pg, torch.tensor([[-1.28, 0.8, -2.0]]), atol=1e-6)
    unclipped, _ = clipped_surrogate(logp, old, adv, 0.2, 0.28, clip=False)
    assert torch.allclose(unclipped, torch.tensor([[-1.5, 0.5, -2.0]]), atol=1e-6)


def test_kl_estimators():
    # logp - ref = 0.5: k1 = 0.5 ; k3 = exp(-0.5) + 0.5 - 1 = 0.106531
    logp, ref = torch.tensor([0.0]), torch.tensor([-0.5])
    assert torch.allclose(kl_penalty(logp, ref, "k1"), torch.tensor([0.5]))
    assert torch.allclose(kl_penalty(logp, ref, "k3"), torch.tensor([0.1065307]), atol=1e-6)
    assert float(kl_penalty(ref, ref, "k3")) == 0.0


def test_aggregations_hand_values():
    # seq0 tokens 1,2,3 (3 real), seq1 tokens 4,5 (2 real) + pad 100
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    # GRPO: mean(6/3, 9/2) = mean(2, 4.5) = 3.25
    assert aggregate(per_token, mask, "seq_mean_token_mean", 10).item() == pytest.approx(3.25)
    # DAPO: 15 / 5 = 3
    assert aggregate(per_token, mask, "token_mean", 10).item() == pytest.approx(3.0)
    # Dr. GRPO: 15 / (2 * 10) = 0.75
    assert aggregate(per_token, mask, "seq_mean_token_sum_norm", 10).item() == pytest.approx(0.75)


def test_policy_loss_weights_kl_and_clip_fractions():
    logp = torch.log(torch.tensor([[1.5, 0.5], [1.0, 1.0]])).requires_grad_()
    old = torch.zeros(2, 2)
    adv = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    weights = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    ref = logp.detach() - 0.5  # per-token k1 = 0.5
    mask = torch.ones(2, 2, dtype=torch.bool)
    out = policy_loss(
        logp,
        old,
        adv,
        weights,
        mask,
        aggregation="token_mean",
        eps_low=0.2,
        eps_high=0.2,
        max_new_tokens=2,
        beta=0.1,
        ref_logprobs=ref,
        kl_estimator="k1",
    )
    # pg: [-1.2 (clipped), 0.8] x w [1, 0] -> -1.2, 0 ; row 2: -1 x 2, -1 x 1 -> -2, -1
    # + 0.1 * 0.5 each -> sum = -4.2 + 0.2 = -4.0 ; mean over 4 = -1.0
    assert out.loss.item() == pytest.approx(-1.0, abs=1e-6)
    assert out.kl == pytest.approx(0.5)
    assert out.clip_frac_high == pytest.approx(0.25)  # token (0,0): A>0, rho 1.5 > 1.2
    assert out.clip_frac_low == pytest.approx(0.25)  # token (0,1): A<0, rho 0.5 < 0.8
    out.loss.backward()
    # clipped token and zero-weight token get no gradient; KL adds beta/4 = 0.025 per token
    # d/dlogp of -w*rho*A/4 at rho=1 is -w*A/4: (1,0): -0.5+0.025 ; (1,1): -0.25+0.025
    assert torch.allclose(logp.grad, torch.tensor([[0.025, 0.025], [-0.475, -0.225]]), atol=1e-6)


def test_kl_averages_over_response_tokens_when_the_loss_mask_drops_one():
    """A token dropped from the loss mask (quadrant ``renormalize``) keeps its KL penalty."""
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_()
    out = policy_loss(
        logp,
        logp.detach(),
        torch.tensor([[1.0, 1.0]]),
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([[True, False]]),
        aggregation="token_mean",
        eps_low=0.2,
        eps_high=0.2,
        max_new_tokens=2,
        beta=0.1,
        ref_logprobs=logp.detach() - 0.5,  # k1 = 0.5 per token, d k1 / d logp = 1
        kl_estimator="k1",
        response_mask=torch.tensor([[True, True]]),
    )
    # pg over m (1 token): -1 ; KL over r (2 tokens): 0.1 * (0.5 + 0.5) / 2 = 0.05
    assert out.loss.item() == pytest.approx(-0.95, abs=1e-6)
    out.loss.backward()
    # token 0: -1 (pg) + 0.1 / 2 (KL) ; token 1: no pg, its KL gradient 0.1 / 2 stays
    assert torch.allclose(logp.grad, torch.tensor([[-0.95, 0.05]]), atol=1e-6)
