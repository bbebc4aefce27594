"""One process against two (real torch.distributed processes, gloo, FSDP2): the same update on the same batch.

The slow test runs every registered intervention for one step on one fixed global batch (and, for a few, under DAPO's and Dr. GRPO's loss normalisers, with a KL
term, with two epochs, and with DAPO's dynamic sampling refilling the batch over several sampling rounds), once as
a single process
(today's code path) and once under ``torchrun --nproc_per_node=2``, and compares the full gradients and every logged
metric but timings. Measured on this machine: the largest gradient difference over all methods is ~1e-8 (float
sums taken in another order: the loss is split into per-rank partial sums, the gradients are reduce-scattered);
the tolerance below is 100 times that.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo import distributed
from grpo.checks import ConfigError
from tests.conftest import REPO, compose_config

GRAD_ATOL = 1e-6
"""Largest allowed |g_2proc - g_1proc| over every parameter entry (gradients here are O(0.1))."""
METRIC_RTOL = 1e-5
"""Allowed relative difference of a logged metric (absolute below 1)."""


def run_worker(out: Path, methods: list[str], nproc: int) -> dict:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"]
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*launcher, "-m", "tests.grpo.distributed_worker", str(out), *methods]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out, weights_only=False)


@pytest.mark.slow
@pytest.mark.ci
def test_two_processes_give_one_process_update_for_every_method(tmp_path):
    import interventions
    from grpo.credit import registered

    interventions.load_all()
    methods = sorted(registered())
    # the other loss normalisers (DAPO's global token count, Dr. GRPO's B x L), a KL term against a frozen
    # reference (its own normaliser, over response tokens), and two epochs (pi_old recomputed, clipping active)
    methods += [
        "none@algo=dapo;algo.dynamic_sampling=false",
        "top_entropy@algo=dapo;algo.dynamic_sampling=false",
        "none@algo=dr_grpo",
        "kl_cov@algo=dr_grpo",
        "hapo@algo.beta=0.05",
        "quadrant@algo.epochs=2",
        # DAPO's dynamic sampling, refilled over rounds by the global count of informative groups (6 rounds here)
        "none@algo=dapo;algo.dynamic_sampling_max_rounds=7;ROUNDS",
        "kl_cov@algo=dapo;algo.dynamic_sampling_max_rounds=7;ROUNDS",
    ]
    one = run_worker(tmp_path / "one" / "out.pt", methods, 1)
    two = run_worker(tmp_path / "two" / "out.pt", methods, 2)
    worst = {}
    for method in methods:
        g1, g2 = one[method]["grads"], two[method]["grads"]
        assert g1.keys() == g2.keys(), method
        assert any(float(g.abs().max()) > 0 for g in g1.values()), f"{method}: no gradient at all"
        worst[method] = max(float((g1[k] - g2[k]).abs().max()) for k in g1)
        m1, m2 = one[method]["metrics"], two[method]["metrics"]
        assert m1.keys() == m2.keys(), (method, set(m1) ^ set(m2))
        for key, value in m1.items():
            other = m2[key]
            if math.isnan(value):
                assert math.isnan(other), (method, key)
                continue
            assert abs(value - other) <= METRIC_RTOL * max(1.0, abs(value)), (method, key, value, other)
    print("max |grad diff| per method:", {k: f"{v:.1e}" for k, v in worst.items()})
    assert max(worst.values()) <= GRAD_ATOL, worst


def test_a_distributed_config_is_refused_before_any_model_is_loaded():
    from omegaconf import OmegaConf

    def cfg(*overrides: str):
        return OmegaConf.to_object(compose_config(*overrides))

    two = distributed.World(rank=0, size=2)
    distributed.check_config(cfg("algo.prompts_per_step=4"), two)  # divisible: accepted
    distributed.check_config(cfg("algo.prompts_per_step=3"), distributed.SINGLE)  # one process: no rule
    with pytest.raises(ConfigError, match="not divisible by the world size 2"):
        distributed.check_config(cfg("algo.prompts_per_step=3"), two)
    with pytest.raises(ConfigError, match="minibatches=2"):
        distributed.check_config(cfg("algo.prompts_per_step=4", "algo.minibatches=2"), two)


def test_slurm_environment_becomes_torchrun_environment():
    from experiments.distributed_env import from_slurm

    env = {
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_ID": "41",
        "SLURM_JOB_NODELIST": "node[3-4]",
        "SLURM_NODEID": "0",
        "SLURM_JOB_NUM_NODES": "2",
    }
    target = dict(env)
    assert from_slurm(target)
    assert (target["RANK"], target["WORLD_SIZE"], target["LOCAL_RANK"]) == ("1", "2", "1")
    assert target["MASTER_ADDR"] == "node3"  # the first node of the expanded list hosts rank 0
    assert not from_slurm({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"})  # one task: a plain process
    assert not from_slurm({**env, "WORLD_SIZE": "2"})  # torchrun inside SLURM: its variables win
