"""Group advantages, flat groups, DAPO's overlong penalty: against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from grpo.advantages import group_advantages, informative_groups


@pytest.mark.parametrize("value", [0.1, 0.2, 0.7, 0.9])
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_all_equal_group_gets_exactly_zero(value, scale_by_std):
    # seven rewards of 0.1 have a float32 mean 1 ulp away from 0.1: without care A = +-0.93 for "no signal"
    rewards = torch.tensor([value] * 7 + [1.0, 0.0])
    groups = torch.tensor([0] * 7 + [1, 1])
    adv = group_advantages(rewards, groups, scale_by_std=scale_by_std, eps=0.0)
    assert adv[:7].tolist() == [0.0] * 7
    # the informative group is untouched: +-0.5 / sqrt(0.5) = +-0.707107 (or +-0.5 without std)
    want = 0.5 / math.sqrt(0.5) if scale_by_std else 0.5
    assert adv[7:].tolist() == pytest.approx([want, -want], abs=1e-6)


def test_group_advantages_default_eps_hand_value():
    # rewards 1, 0: mean .5, sample std sqrt(.5) = .7071068 ; A = .5 / (.7071068 + 1e-4) = .7070068
    adv = group_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))
    assert adv.tolist() == pytest.approx([0.7070068, -0.7070068], abs=1e-6)


def test_overlong_penalty_hand_values():
    from grpo.advantages import overlong_penalty

    lengths = torch.tensor([10, 40, 45, 50])
    # L_max 50, buffer 10: free up to 40 tokens, then linear down to -1 at 50
    assert torch.equal(overlong_penalty(lengths, 50, 10), torch.tensor([0.0, 0.0, -0.5, -1.0]))
    assert torch.equal(overlong_penalty(lengths, 50, 10, factor=0.5), torch.tensor([0.0, 0.0, -0.25, -0.5]))
    assert torch.equal(overlong_penalty(lengths, 50, 0), torch.zeros(4))


def test_group_advantages_std_scaled():
    # group 0: rewards 1,0,0,1 -> mean .5, sample std sqrt((4*.25)/3)=0.57735 -> +-0.5/0.57735 = +-0.866025
    # group 1: 1,1,1,1 -> all zero
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv = group_advantages(rewards, groups, scale_by_std=True, eps=0.0)
    expected = torch.tensor([0.866025, -0.866025, -0.866025, 0.866025, 0, 0, 0, 0])
    assert torch.allclose(adv, expected, atol=1e-5)


def test_group_advantages_dr_grpo_no_std():
    # group 0: 1,0,0 -> mean 1/3 -> 2/3, -1/3, -1/3 ; group 1: 0.5, 0 -> 0.25, -0.25
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.0])
    groups = torch.tensor([0, 0, 0, 1, 1])
    adv = group_advantages(rewards, groups, scale_by_std=False)
    assert torch.allclose(adv, torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.25, -0.25]), atol=1e-6)


def test_informative_groups():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    assert informative_groups(rewards, groups).tolist() == [False, False, True, True, False, False]
