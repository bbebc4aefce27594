"""SLURM's view of a multi-task job, translated into torchrun's environment (``RANK``, ``WORLD_SIZE``, ...).

grpo/distributed.py reads torchrun's variables only; a job that ``hydra/launcher=slurm`` starts with
``tasks_per_node`` x ``nodes`` > 1 has one process per task (srun, through submitit) and SLURM's variables
instead. The rendezvous is rank 0's node, on a port derived from the job id, so that two jobs sharing a node do
not collide (and a requeued job, which keeps its id, gets the same port back).
"""

from __future__ import annotations

import os

PORT_BASE = 20_000
PORT_SPAN = 20_000


def from_slurm(environ: os._Environ | dict[str, str] | None = None) -> bool:
    """Set torchrun's variables from SLURM's when this is one task of a multi-task SLURM job step and torchrun
    did not already set them; True when it did."""
    env = os.environ if environ is None else environ
    tasks = int(env.get("SLURM_NTASKS", "1") or 1)
    if tasks <= 1 or "WORLD_SIZE" in env or "SLURM_PROCID" not in env:
        return False
    # submitit's parser of SLURM's compressed node lists (node[3-4] -> node3, node4); rank 0 is on the first
    from submitit.slurm.slurm import _parse_node_list

    hosts = _parse_node_list(env.get("SLURM_JOB_NODELIST", "")) or ["127.0.0.1"]
    job = env.get("SLURM_ARRAY_JOB_ID") or env["SLURM_JOB_ID"]
    task = env.get("SLURM_ARRAY_TASK_ID", "0")
    env.update(
        {
            "RANK": env["SLURM_PROCID"],
            "WORLD_SIZE": str(tasks),
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "LOCAL_WORLD_SIZE": str(tasks // max(1, len(hosts))),
            "MASTER_ADDR": hosts[0],
            "MASTER_PORT": str(PORT_BASE + (int(job) * 31 + int(task)) % PORT_SPAN),
        }
    )
    return True
