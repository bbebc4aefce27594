"""A 2-process run under torchrun (gloo, FSDP2) through the CLI as a user starts it: it learns, logs one MLflow run
and checkpoints; a rank killed mid-step ends the run FAILED within a bound with its checkpoint kept; the killed run
resumes from that checkpoint and ends bit-identical to the uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.experiments.test_train_e2e import history, only_run

STEPS = 20
FAIL_BOUND_S = 60.0
"""The longest a run may take to end after one of its ranks was killed (collective_timeout_s is 30 here)."""


def torchrun(run_dir: Path, uri: str, *extra: str, nproc: int = 2) -> subprocess.Popen:
    """``experiments.train`` on ``nproc`` processes (1: a plain process, no torchrun)."""
    launcher = (
        ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"] if nproc > 1 else []
    )
    cmd = [
        sys.executable,
        *launcher,
        "-m",
        "experiments.train",
        f"run_dir={run_dir}",
        f"tracking.uri={uri}",
        f"train.steps={STEPS}",
        "train.checkpoint_every=10",
        "train.collective_timeout_s=30",
        "train.progress=false",
        "eval.every=10",
        "eval.n_samples=0",
        "seed=0",
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rank_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    """The pid of the worker torchrun started for ``rank`` (read from its environment)."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
    for pid in children.read_text().split() if children.exists() else []:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


@pytest.mark.slow
@pytest.mark.ci
def test_two_process_run_learns_fails_within_bound_and_resumes_bit_identically(tmp_path):
    straight_uri = f"sqlite:///{tmp_path / 'straight.db'}"
    straight = torchrun(tmp_path / "straight", straight_uri)
    out, _ = straight.communicate(timeout=900)
    assert straight.returncode == 0, out[-4000:]
    rec = only_run(straight_uri)
    assert rec.info.status == "FINISHED"
    h_s = history(straight_uri, rec.info.run_id)
    acc = h_s["eval/accuracy"]
    # measured: 0.46 -> 0.695 on the 200 test prompts (binomial s.e. <= 0.035 each)
    assert acc[STEPS] - acc[0] >= 0.1, acc
    # one run, every step logged once (by rank 0)
    assert sorted(h_s["train/reward_mean"]) == list(range(STEPS))

    # the same run, rank 1 killed once the step-10 checkpoint is written
    broken_dir, broken_uri = tmp_path / "broken", f"sqlite:///{tmp_path / 'broken.db'}"
    launcher = torchrun(broken_dir, broken_uri)
    state_file = broken_dir / "checkpoint" / "state.pt"
    deadline = time.monotonic() + 600
    while not state_file.exists():
        assert launcher.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.2)
    time.sleep(1.0)  # into step 10's rollout or update
    victim = rank_pid(launcher, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    out, _ = launcher.communicate(timeout=FAIL_BOUND_S + 60)
    ended_after = time.monotonic() - killed
    print(f"run ended {ended_after:.1f} s after rank 1 was killed")
    assert launcher.returncode != 0
    assert ended_after <= FAIL_BOUND_S, out[-3000:]
    assert only_run(broken_uri).info.status == "FAILED"
    assert torch.load(state_file, weights_only=True)["next_step"] == 10  # the checkpoint is kept

    resumed = torchrun(broken_dir, broken_uri)  # same run dir: resumes at step 10 into the same MLflow run
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out[-4000:]
    rec_b = only_run(broken_uri)
    assert rec_b.info.status == "FINISHED" and "quadrl.resumed_at" in rec_b.data.tags
    h_b = history(broken_uri, rec_b.info.run_id)
    keys = sorted(k for k in h_s if not k.startswith("perf/"))
    assert keys == sorted(k for k in h_b if not k.startswith("perf/"))
    for key in keys:
        assert h_s[key] == pytest.approx(h_b[key], abs=0, rel=0, nan_ok=True), key
    w_s = torch.load(tmp_path / "straight" / "checkpoint" / "state.pt", weights_only=True)
    w_b = torch.load(state_file, weights_only=True)
    assert w_s["world_size"] == w_b["world_size"] == 2
    assert all(torch.equal(w_s["model"][k], w_b["model"][k]) for k in w_s["model"])


@pytest.mark.slow
@pytest.mark.ci
def test_a_checkpoint_resumes_on_another_number_of_processes(tmp_path):
    """2 processes -> 1 -> 2 on one run directory: each leg resumes the last one's checkpoint (gathered, name-keyed
    after 2 processes; one process's own kind after 1) into the same MLflow run, optimiser state included."""
    run_dir, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    small = ["algo.prompts_per_step=4", "eval.n_prompts=8", "train.checkpoint_every=2", "eval.every=0"]
    for steps, nproc in ((2, 2), (4, 1), (6, 2)):
        leg = torchrun(run_dir, uri, *small, f"train.steps={steps}", nproc=nproc)
        out, _ = leg.communicate(timeout=600)
        assert leg.returncode == 0, out[-4000:]
        state = torch.load(run_dir / "checkpoint" / "state.pt", weights_only=True)
        assert state["next_step"] == steps
        assert state.get("world_size", 1) == nproc
        adam = state["optimizer"]["state"]
        # AdamW counts its steps per parameter: 6 after three legs only if each leg carried the last one's state
        assert {float(v["step"]) for v in adam.values()} == {float(steps)}, (steps, nproc)
    rec = only_run(uri)
    assert rec.info.status == "FINISHED" and "quadrl.resumed_at" in rec.data.tags
    assert sorted(history(uri, rec.info.run_id)["train/loss"]) == list(range(6))
