"""The scoreboard (experiments/scoreboard.py): its columns on a hand-made probe, and which methods it scores."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import grpo.credit
from experiments.scoreboard import entries, no_credit, outcome_sign, score_credit, scoreboard
from grpo.credit import Intervention, TokenCredit
from tests.conftest import hand_probe


def credit_with(weights, probe) -> TokenCredit:
    base = TokenCredit.grpo_default(probe.facts)
    return replace(base, weights=torch.tensor(weights, dtype=torch.float32))


def test_columns_hand_values():
    """hand_probe: delta [[0.5, 0, 0.15], [-0.3, 0, -0.1]], se 0.1 (0 on the certain t = 1), A = (+1, -1),
    outcome signs (+1, -1) since V(s_0) = 0.6 and R = (1, 0). Method credit c = A * w, w below."""
    probe = hand_probe()
    assert outcome_sign(probe).tolist() == [1.0, -1.0]
    # no credit: certain tokens, and |delta| <= 2 * 0.1: r0t2 (0.15) and r1t2 (0.1)
    assert no_credit(probe, 2.0).tolist() == [[False, True, True], [False, True, True]]
    s = score_credit(probe, credit_with([[2.0, 0.0, 1.0], [1.0, 0.0, 3.0]], probe), z=2.0)
    # within r0: c = [2, 0, 1] ranks like delta [0.5, 0, 0.15] -> 1; r1: c = [-1, 0, -3] (ranks [2, 3, 1]) vs
    # delta [-0.3, 0, -0.1] (ranks [1, 3, 2]) -> (0*-1 + 1*1 + -1*0) / 2 = 0.5; mean 0.75
    assert s.rho_within == pytest.approx(0.75) and s.n_within == 2
    # pooled along the outcome: c*s = [2, 0, 1, 1, 0, 3] (ranks [5, 1.5, 3.5, 3.5, 1.5, 6]),
    # delta*s = [0.5, 0, 0.15, 0.3, 0, 0.1] (ranks [6, 1.5, 4, 5, 1.5, 3]): cov 10.5, var 16.5 and 17
    assert s.rho_batch == pytest.approx(10.5 / math.sqrt(16.5 * 17))
    # r = c / A = [2, 0, 1, 1, 0, 3], mean 7/6: favoured r0t0 and r1t2 (2 of 6) hold |delta| 0.5 + 0.1 of 1.05
    assert s.favoured == pytest.approx(2 / 6) and s.credit_on_favoured == pytest.approx(0.6 / 1.05)
    # |c| = [2, 0, 1, 1, 0, 3] (7), on no-credit tokens 0 + 1 + 0 + 3 = 4
    assert s.mass_on_no_credit == pytest.approx(4 / 7)


def test_grpo_discriminates_nothing_within_a_response():
    probe = hand_probe()
    s = score_credit(probe, TokenCredit.grpo_default(probe.facts), z=2.0)
    assert math.isnan(s.rho_within) and s.n_within == 0
    assert math.isnan(s.favoured) and math.isnan(s.credit_on_favoured)
    assert s.mass_on_no_credit == pytest.approx(4 / 6)  # |c| = 1 everywhere, 4 of 6 tokens without credit


class Recorded(Intervention):
    """A method registered after the scoreboard was written: it must be scored without any edit there."""

    def credit(self, facts, credit, generator):
        return replace(credit, weights=facts.entropy.clone())


class Broken(Intervention):
    def credit(self, facts, credit, generator):
        raise RuntimeError("needs an adapter")


def test_every_preset_and_every_registered_method_is_scored(monkeypatch):
    monkeypatch.setitem(grpo.credit._REGISTRY, "zz_recorded", Recorded)
    monkeypatch.setitem(grpo.credit._REGISTRY, "zz_broken", Broken)
    methods = entries()
    labels = [e.label for e in methods]
    for preset in ("none", "hapo", "only_pos_high", "freeze_neg_low", "kl_cov", "gtpo", "compose"):
        assert preset in labels
    assert "quadrant" in labels and "zz_recorded" in labels and "zz_broken" in labels
    scores = {s.label: s for s in scoreboard(hand_probe(), methods, z=2.0)}
    assert not math.isnan(scores["zz_recorded"].rho_within)
    assert scores["zz_broken"].note == "cannot score: needs an adapter"
    assert "current log-probs" in scores["kl_cov"].note and "unclipped" in scores["kl_cov"].note
    assert scores["compose"].note == ""  # hapo then quadrant: compose delegates extra_loss, and gets none
    assert labels[0] == "none"  # the reference row first
    assert scores["only_pos_high"].favoured == pytest.approx(1 / 6)  # pos_high: r0t0 under the batch split
    assert math.isnan(scores["none"].favoured)
