"""One run on two processes through ``hydra/launcher=slurm`` on the real local SLURM cluster (cluster/slurm_up.sh):
``tasks_per_node=2`` makes one job of two tasks; experiments/distributed_env.py turns SLURM's variables into
torchrun's; the two tasks train one FSDP2 run that logs one MLflow run under the sweep's parent run."""

from __future__ import annotations

import pytest

from tests.experiments.test_grid_launchers import metric_history, output_of, run_cli, train_cli
from tests.experiments.test_grid_slurm import sacct_rows, slurm_cluster, submitit_job_dirs, sweep_runs

__all__ = ["slurm_cluster"]  # the fixture, imported for pytest to find
pytestmark = pytest.mark.slurm


@pytest.mark.slow
@pytest.mark.ci
def test_slurm_two_task_job_is_one_distributed_run(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    steps = 4
    proc = run_cli(
        train_cli(
            "-m",
            "seed=0",
            f"train.steps={steps}",
            "algo.prompts_per_step=4",
            "eval.n_prompts=16",
            "eval.n_samples=0",
            "train.progress=false",
            "train.collective_timeout_s=120",
            "hydra/launcher=slurm",
            f"hydra.sweep.dir={sweep}",
            f"tracking.uri={uri}",
            "tracking.experiment=dist-slurm",
            "hydra.launcher.tasks_per_node=2",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=4",
            "hydra.launcher.timeout_min=20",
        ),
        tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, output_of(proc)
    assert "sweep: 1 jobs, 1 finished, 0 failed, 0 killed" in proc.stdout, output_of(proc)

    (job_dir,) = submitit_job_dirs(sweep)
    script = next(job_dir.glob("*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script, script
    (row,) = sacct_rows(job_dir.name, "JobID", "State", "AllocCPUS")
    assert (row["State"], row["AllocCPUS"]) == ("COMPLETED", "2"), row
    logs = sorted(job_dir.glob("*_log.out"))
    assert len(logs) == 2, logs  # one log per task: two processes ran

    client, parent, children = sweep_runs(uri)
    assert len(children) == 1, [c.info.run_name for c in children]  # one run, not one per process
    (run,) = children
    assert run.info.status == "FINISHED"
    assert sorted(metric_history(client, run.info.run_id, "train/reward_mean")) == list(range(steps))
    assert client.get_run(parent.info.run_id).data.metrics["sweep/finished"] == 1
