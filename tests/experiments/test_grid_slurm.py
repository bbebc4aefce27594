"""Grids on the real single-node SLURM cluster (cluster/slurm_up.sh), through the CLI as a user runs them:
``python -m experiments.train -m ... hydra/launcher=slurm``.

- a 4-job grid: launcher settings reach sbatch and SLURM, four FINISHED child runs under one parent;
- preemption: ``scancel --signal=USR2`` mid-run -> submitit requeues -> the job resumes from its checkpoint into
  the same MLflow run, and its metrics equal an uninterrupted run's bit for bit;
- failures: one job fails at its first training step (a NaN checkpoint), one is cancelled by SLURM; the third
  finishes, the sweep reports both and exits non-zero, the runs are FAILED / KILLED / FINISHED.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.experiments.test_grid_launchers import (
    all_histories,
    all_runs,
    metric_history,
    output_of,
    run_cli,
    same_value,
    tiny_overrides,
    train_cli,
)


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return (
            "SLURM client tools (sinfo) not installed; start the test cluster with `bash cluster/slurm_up.sh`"
        )
    try:
        ping = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=20)
        if ping.returncode != 0 or "up" not in ping.stdout:
            return f"SLURM cluster not up (sinfo: {ping.stderr.strip() or ping.stdout.strip()}); run `bash cluster/slurm_up.sh`"
        acct = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True, timeout=20)
        if acct.returncode != 0:
            return f"SLURM accounting (sacct) not answering: {acct.stderr.strip()}; run `bash cluster/slurm_up.sh`"
    except (OSError, subprocess.SubprocessError) as error:
        return f"SLURM not usable: {error}"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)


pytestmark = pytest.mark.slurm


def submitit_job_dirs(sweep_dir: Path) -> list[Path]:
    """The per-job folders submitit made (named by SLURM job id: ``123`` or, for arrays, ``123_4``)."""
    root = sweep_dir / ".submitit"
    return sorted(p for p in root.glob("*") if p.is_dir() and re.fullmatch(r"\d+(_\d+)?", p.name))


def sacct_rows(job_id: str, *fields: str, duplicates: bool = False) -> list[dict[str, str]]:
    """sacct's rows for a finished job, once accounting has caught up: slurmdbd records a job's end
    asynchronously, so for a moment after the job has exited the last attempt can still read RUNNING."""
    cmd = ["sacct", "-j", job_id, "-X", "-P", "-n", "-o", ",".join(("State", *fields))]
    if duplicates:
        cmd.append("-D")
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
        rows = [line.split("|") for line in out.splitlines() if line.strip()]
        if (
            all(row[0] not in ("PENDING", "RUNNING", "COMPLETING") for row in rows)
            or time.monotonic() > deadline
        ):
            return [dict(zip(fields, row[1:], strict=True)) for row in rows]
        time.sleep(0.5)


def sweep_runs(uri: str) -> tuple:
    """(parent run, its child runs) of the one sweep in this store."""
    client = MlflowClient(tracking_uri=uri)
    runs = all_runs(client)
    parents = [r for r in runs if r.data.tags.get("quadrl.role") == "sweep"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, parent, children


def test_slurm_grid_four_jobs(slurm_cluster, tiny_model_dir, tmp_path):
    sweep = tmp_path / "sweep"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    steps = 6
    proc = run_cli(
        train_cli(
            "-m",
            *tiny_overrides(tiny_model_dir, steps),
            "seed=0,1",
            "intervention=none,hapo",
            "hydra/launcher=slurm",
            f"hydra.sweep.dir={sweep}",
            f"tracking.uri={uri}",
            "tracking.experiment=grid-test",
            "hydra.launcher.partition=debug",
            "hydra.launcher.timeout_min=20",
            "hydra.launcher.mem_gb=1",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.signal_delay_s=45",
            "hydra.launcher.array_parallelism=2",
            "hydra.launcher.max_num_timeout=2",
            "hydra.launcher.comment=quadrl-grid-test",
            'hydra.launcher.setup=["echo setup-ran > setup_$SLURM_ARRAY_TASK_ID.txt"]',
        ),
        tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, output_of(proc)
    assert "sweep: 4 jobs, 4 finished, 0 failed, 0 killed" in proc.stdout, output_of(proc)

    # the launcher settings are in the batch file and SLURM applied them
    scripts = list((sweep / ".submitit").glob("*/*_submission.sh"))
    assert len(scripts) == 1, scripts
    text = scripts[0].read_text().splitlines()
    for line in (
        "#SBATCH --partition=debug",
        "#SBATCH --time=20",
        "#SBATCH --mem=1GB",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --signal=USR2@45",
        "#SBATCH --array=0-3%2",
        "#SBATCH --comment=quadrl-grid-test",
        "echo setup-ran > setup_$SLURM_ARRAY_TASK_ID.txt",
    ):
        assert line in text, f"{line!r} not in {scripts[0]}:\n" + "\n".join(text)
    array_id = scripts[0].parent.name
    rows = sacct_rows(array_id, "JobID", "State", "Partition", "Timelimit", "ReqMem", "AllocCPUS")
    assert sorted(r["JobID"] for r in rows) == [f"{array_id}_{i}" for i in range(4)], rows
    for row in rows:
        assert (row["State"], row["Partition"], row["Timelimit"]) == ("COMPLETED", "debug", "00:20:00"), row
        assert row["ReqMem"] in ("1G", "1024M", "1Gn", "1024Mn"), row
        assert row["AllocCPUS"] == "1", row
    assert sorted(p.name for p in tmp_path.glob("setup_*.txt")) == [f"setup_{i}.txt" for i in range(4)]

    # MLflow: one parent, four FINISHED children in the named experiment, each with all its metrics and tags
    client, parent, children = sweep_runs(uri)
    experiment = client.get_experiment_by_name("grid-test")
    assert parent.info.experiment_id == experiment.experiment_id
    assert len(children) == 4
    combos = set()
    for run in children:
        assert run.info.status == "FINISHED", run.info
        assert run.info.experiment_id == experiment.experiment_id
        tags = run.data.tags
        combos.add((tags["override.intervention"], tags["override.seed"]))
        assert tags["quadrl.intervention"] == tags["override.intervention"]
        assert json.loads(tags["quadrl.overrides"])
        assert sorted(metric_history(client, run.info.run_id, "train/reward_mean")) == list(range(steps))
        assert sorted(metric_history(client, run.info.run_id, "eval/accuracy")) == [0, steps]
        assert "quadrl.resumed_at" not in tags
    assert combos == {(i, s) for i in ("none", "hapo") for s in ("0", "1")}
    parent = client.get_run(parent.info.run_id)
    assert parent.data.metrics["sweep/finished"] == 4
    assert parent.data.metrics["sweep/failed"] == 0
    assert parent.data.metrics["sweep/killed"] == 0
    assert parent.data.metrics["sweep/requeued"] == 0
    assert json.loads(parent.data.tags["quadrl.sweep_summary"])["finished"] == 4
    assert parent.info.status == "FINISHED"
    assert not client.search_runs(["0"]), "runs misfiled into the Default experiment"


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended (exit {proc.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _child_run(uri: str):
    """The training run of the one-job sweep once it exists (None before). Call only once the store exists."""
    runs = [r for r in all_runs(MlflowClient(tracking_uri=uri)) if "mlflow.parentRunId" in r.data.tags]
    return runs[0] if runs else None


@pytest.mark.slow
@pytest.mark.ci
def test_slurm_preemption_requeues_and_resumes_bit_identical(slurm_cluster, tiny_model_dir, tmp_path):
    # ~20 steps/s on an idle core: 300 steps leave a window of seconds between the 4th checkpoint and the end
    steps, every = 300, 5
    config = [
        *tiny_overrides(tiny_model_dir, steps),
        f"train.checkpoint_every={every}",
        "eval.every=50",
        "seed=3",
    ]
    sweep = tmp_path / "sweep"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ref_uri = f"sqlite:///{tmp_path / 'reference.db'}"
    logs = tmp_path / "sweep.log"
    with open(logs, "w") as out:
        sweep_proc = subprocess.Popen(
            train_cli(
                "-m", *config, "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}", f"tracking.uri={uri}"
            ),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    # the same config without SLURM and without interruption, meanwhile (one core each)
    reference = subprocess.Popen(
        train_cli(*config, f"run_dir={tmp_path / 'reference'}", f"tracking.uri={ref_uri}"),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        job_dir = sweep / "0"

        def mid_run():
            # Files first: opening the store before the sweep has created it races its schema migration
            # (docs/background.md §5), which can leave this process's store unusable for the whole test.
            if (
                not (job_dir / "mlflow_run_id").is_file()
                or not (job_dir / "checkpoint" / "state.pt").is_file()
            ):
                return None
            run = _child_run(uri)
            if run is None:
                return None
            logged = metric_history(MlflowClient(uri), run.info.run_id, "train/reward_mean")
            return run if len(logged) >= 4 * every else None

        run = _wait_for(mid_run, 120, "the job to log steps and checkpoint", sweep_proc)
        (job,) = submitit_job_dirs(sweep)
        subprocess.run(["scancel", "--signal=USR2", job.name], check=True, timeout=30)
        # the interrupted attempt closes its run as KILLED; the requeued one (>= 10 s later) reopens it
        _wait_for(
            lambda: MlflowClient(uri).get_run(run.info.run_id).info.status == "KILLED",
            60,
            "the interrupted attempt to mark its run KILLED",
            sweep_proc,
        )
        sweep_proc.wait(timeout=300)
        _, ref_err = reference.communicate(timeout=300)
    finally:
        for p in (sweep_proc, reference):
            if p.poll() is None:
                p.kill()
    output = logs.read_text()
    assert sweep_proc.returncode == 0, output[-6000:]
    assert reference.returncode == 0, ref_err[-6000:]
    assert "sweep: 1 jobs, 1 finished, 0 failed, 0 killed, 1 requeued" in output, output[-3000:]

    # SLURM requeued it (accounting keeps the first attempt) and submitit says why
    attempts = sacct_rows(job.name, "JobID", "State", duplicates=True)
    assert [a["State"] for a in attempts] == ["REQUEUED", "COMPLETED"], attempts
    job_log = "".join(p.read_text(errors="replace") for p in job.glob("*_log.out"))
    assert "this job is preempted" in job_log and "Requeued job" in job_log, job_log[-3000:]

    # one MLflow run, resumed from its checkpoint (not restarted: step 0's eval was logged once)
    client = MlflowClient(uri)
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert "quadrl.resumed_at" in run.data.tags
    children = [r.info.run_id for r in all_runs(client) if "mlflow.parentRunId" in r.data.tags]
    assert children == [run.info.run_id]
    assert len(client.get_metric_history(run.info.run_id, "eval/accuracy")) == len(range(0, steps + 1, 50))
    logged = len(client.get_metric_history(run.info.run_id, "train/reward_mean"))
    assert steps <= logged < steps + every + 1, logged  # at most the steps since the last checkpoint redone

    # bit for bit the uninterrupted run's metrics, step by step (timings excluded)
    ref_client = MlflowClient(ref_uri)
    (ref_run,) = all_runs(ref_client)
    got, want = all_histories(client, run), all_histories(ref_client, ref_run)
    assert sorted(got) == sorted(want)
    assert sorted(got["train/reward_mean"]) == list(range(steps))
    for key in want:
        assert got[key].keys() == want[key].keys(), key
        diff = [s for s in want[key] if not same_value(got[key][s], want[key][s])]
        assert not diff, (
            f"{key} differs at steps {diff[:10]}: {[(got[key][s], want[key][s]) for s in diff[:3]]}"
        )


def nan_model(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose final norm is NaN, like a checkpoint saved after training diverged: it loads
    and evaluates (greedy argmax), and the first sampled rollout raises."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(dst)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, dst / name)
    return dst


@pytest.mark.slow
def test_slurm_failed_and_cancelled_jobs(slurm_cluster, tiny_model_dir, tmp_path):
    """Grid over model.path = a good copy, a diverged one (NaN weights), the good one. Job 0 is cancelled by
    SLURM while it runs; job 1 fails in its first rollout; job 2 finishes. The sweep waits for all three (it
    notices the cancelled job through sacct), records them on the parent run and exits non-zero."""
    victim_model = tmp_path / "good-copy"
    shutil.copytree(tiny_model_dir, victim_model)
    broken = nan_model(tiny_model_dir, tmp_path / "diverged")
    # SLURM's cancel is SIGTERM (submitit ignores it), then SIGKILL KillWait=10 s later: job 0 must still be
    # training then. 300 steps take ~25 s on an idle core here (~12 steps/s), longer under load.
    steps = 300
    sweep = tmp_path / "sweep"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logs = tmp_path / "sweep.log"
    config = [o for o in tiny_overrides(tiny_model_dir, steps) if not o.startswith("model.path=")]
    with open(logs, "w") as out:
        sweep_proc = subprocess.Popen(
            train_cli(
                "-m",
                *config,
                f"model.path={victim_model},{broken},{tiny_model_dir}",
                "hydra/launcher=slurm",
                f"hydra.sweep.dir={sweep}",
                f"tracking.uri={uri}",
            ),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def victim_running():
            if not (sweep / "mlflow_parent_run_id").is_file():  # the sweep has not created the store yet
                return None
            runs = all_runs(MlflowClient(uri))
            for r in runs:
                if r.data.tags.get("override.model.path") == str(victim_model) and r.info.status == "RUNNING":
                    return r
            return None

        victim = _wait_for(victim_running, 180, "job 0's run to start", sweep_proc)
        array_id = submitit_job_dirs(sweep)[0].name.split("_")[0]
        subprocess.run(["scancel", f"{array_id}_0"], check=True, timeout=30)
        sweep_proc.wait(timeout=300)
    finally:
        if sweep_proc.poll() is None:
            sweep_proc.kill()
    output = logs.read_text()
    assert sweep_proc.returncode != 0, output[-6000:]
    assert "sweep: 3 jobs, 1 finished, 1 failed, 1 killed" in output, output[-6000:]
    assert re.search(r"FAILED job #0: .*good-copy", output), output[-6000:]
    assert re.search(r"FAILED job #1: .*diverged", output), output[-6000:]
    assert "probability tensor contains either `inf`, `nan` or element < 0" in output, output[-6000:]

    states = {r["JobID"]: r["State"] for r in sacct_rows(array_id, "JobID", "State")}
    assert states[f"{array_id}_0"].startswith("CANCELLED") and states[f"{array_id}_2"] == "COMPLETED", states

    client, parent, children = sweep_runs(uri)
    by_model = {r.data.tags["override.model.path"]: r for r in children}
    assert set(by_model) == {str(victim_model), str(broken), str(tiny_model_dir)}
    killed, failed, ok = by_model[str(victim_model)], by_model[str(broken)], by_model[str(tiny_model_dir)]
    assert ok.info.status == "FINISHED"
    assert sorted(metric_history(client, ok.info.run_id, "train/reward_mean")) == list(range(steps))
    assert failed.info.status == "FAILED"
    # it got as far as training: the step-0 evaluation ran, the first rollout raised
    assert sorted(metric_history(client, failed.info.run_id, "eval/accuracy")) == [0]
    assert not metric_history(client, failed.info.run_id, "train/reward_mean")
    assert killed.info.run_id == victim.info.run_id and killed.info.status == "KILLED"
    assert 1 <= len(metric_history(client, killed.info.run_id, "train/reward_mean")) < steps
    parent = client.get_run(parent.info.run_id)
    metrics = parent.data.metrics
    assert (metrics["sweep/finished"], metrics["sweep/failed"], metrics["sweep/killed"]) == (1, 1, 1), metrics
    summary = json.loads(parent.data.tags["quadrl.sweep_summary"])
    assert sorted(j["job"] for j in summary["failed_jobs"]) == [0, 1]
    assert parent.info.status == "FAILED"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
