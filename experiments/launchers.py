"""Hydra launchers on top of hydra-submitit-launcher, used as ``hydra/launcher=local`` and ``hydra/launcher=slurm``.

Hydra only instantiates launcher classes defined under the ``hydra_plugins`` package, so the classes the configs
name are thin subclasses in ``hydra_plugins/quadrl_launcher``; the logic is here.

Two changes to the stock launchers, both about grids that must finish with nothing lost:
- every job's result is collected even when some fail or SLURM kills them (the stock launcher stops at the
  first failure), then :func:`experiments.sweep.finalize` records the outcome on the sweep's parent run;
- ``local`` runs at most ``max_parallel`` jobs at a time (submitit's local executor starts them all at once,
  which on a 2-core machine thrashes); ``slurm`` leaves that to the cluster (``array_parallelism``).
Requeue on preemption is submitit's: on SLURM's signal the job is resubmitted and, on restart, the training
run finds the checkpoint in its own output directory and resumes the same MLflow run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)
POLL_S = 0.2
"""Seconds between checks for finished jobs (a check reads a few files)."""


def _failed(overrides: Sequence[str], error: BaseException) -> JobReturn:
    ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
    ret.return_value = error
    ret.status = JobStatus.FAILED
    return ret


class _CollectingMixin:
    """``launch`` that submits through submitit, collects every result, and finalises the sweep."""

    _EXECUTOR: str
    params: dict[str, Any]
    config: Any
    max_parallel: int = 0

    def _executor(self):
        import submitit

        init = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        skip = {"submitit_folder", "max_num_timeout"}
        executor.update_parameters(
            **{
                k if k in base else f"{self._EXECUTOR}_{k}": v
                for k, v in self.params.items()
                if k not in skip
            }
        )
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        executor = self._executor()
        args = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            args.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = self._submit(executor, args)
        self._wait(jobs)
        results = []
        for job, arg in zip(jobs, args, strict=False):
            try:
                results.append(job.results()[0])
            except Exception as error:  # killed, cancelled, or crashed outside the task: record, keep going
                log.error("job #%d (%s) did not complete: %s", arg[2], " ".join(arg[0]), error)
                results.append(_failed(arg[0], error))
        from experiments.sweep import finalize  # here: the plugin scan imports this module in every Hydra app

        finalize(self.config, results, self._timing())
        return results

    def _poll(self, jobs: list) -> None:
        """Note when each job is first seen done (its wall time as the launcher sees it: submit to done)."""
        now = time.perf_counter()
        for index, job in enumerate(jobs):
            if index not in self._finished and job.done():
                self._finished[index] = now

    def _progress(self, jobs: list, total: int) -> None:
        self._poll(jobs)
        done = len(self._finished)
        if done != getattr(self, "_last_done", -1):
            self._last_done = done
            elapsed = time.perf_counter() - self._started
            print(
                f"[sweep] {done}/{total} jobs done, {len(jobs) - done} running, {elapsed:.0f} s", flush=True
            )

    def _submit(self, executor, args: list[tuple]) -> list:
        self._started = time.perf_counter()
        self._submitted: list[float] = []
        self._finished: dict[int, float] = {}
        if self.max_parallel <= 0:
            return executor.map_array(self, *zip(*args, strict=False))
        jobs: list = []
        for arg in args:  # sliding window: start the next job when one of the running ones ends
            while len(jobs) - len(self._finished) >= self.max_parallel:
                self._progress(jobs, len(args))
                time.sleep(POLL_S)  # a slot left idle costs this much at most
            self._submitted.append(time.perf_counter())
            jobs.append(executor.submit(self, *arg))
        return jobs

    def _wait(self, jobs: list) -> None:
        while len(self._finished) < len(jobs):
            self._progress(jobs, len(jobs))
            time.sleep(POLL_S)
        self._progress(jobs, len(jobs))

    def _timing(self) -> dict[str, Any] | None:
        """Slot use of a local sweep (None when the cluster schedules the jobs: their queue time is not ours)."""
        if self.max_parallel <= 0 or not self._submitted:
            return None
        walls = [self._finished[i] - t for i, t in enumerate(self._submitted)]
        return {
            "slots": self.max_parallel,
            "wall_s": max(self._finished.values()) - self._started,
            "job_wall_s": walls,
        }


class CollectingLocalLauncher(_CollectingMixin, LocalLauncher):
    def __init__(self, max_parallel: int = 2, **params: Any) -> None:
        super().__init__(**params)
        self.max_parallel = int(max_parallel)


class CollectingSlurmLauncher(_CollectingMixin, SlurmLauncher):
    pass
