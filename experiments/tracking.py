"""MLflow glue: one run per training run, metrics per step through ``log_batch``, resume into the same run.

Facts that shaped this (measured; docs/background.md §5): several processes creating a new SQLite store or the
same experiment at once can corrupt it or misfile runs, so :func:`ensure_experiment` is called once before any
fan-out and runs are always started with an explicit experiment id; child runs in other processes get the
``mlflow.parentRunId`` tag (``nested=True`` only works in-process); one HTTP call costs ~50 ms, so metrics go
in one ``log_batch`` per step. Two processes that open a *new* SQLite file at the same moment race MLflow's schema
migration (measured: ``duplicate column name: step`` in 5 of 6 processes started together), so every client
quadrl opens on a SQLite URI is created under an exclusive file lock beside the database (:func:`store_lock`).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from runrecord import CPU_TAG, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT, RESUMED_TAG

MAX_PARAMS_PER_BATCH = 100


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` tracking URI (None for other stores and in-memory databases)."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    return Path(database) if database and database != ":memory:" else None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """For a SQLite URI, hold an exclusive lock on ``<database>.lock`` (created beside it); else do nothing.
    MLflow creates and migrates the schema when a client first opens the store: doing that under the lock
    serialises it across processes."""
    database = sqlite_file(uri)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tracking_client(uri: str) -> MlflowClient:
    """An ``MlflowClient`` whose store, if it is a new SQLite file, was created under :func:`store_lock`."""
    with store_lock(uri):
        return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str) -> str:
    """Create the store and the experiment if missing; return its id. Call once, before fanning out jobs.

    The experiment is tagged ``mlflow.experimentKind=custom_model_development`` (an existing one that has no
    kind gets the tag), so that MLflow's UI opens it on its runs."""
    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT})
            except Exception:  # another process (e.g. through a server) won the race: use theirs
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)
        return experiment.experiment_id


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo on Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def provenance() -> dict[str, str]:
    """What a result depends on besides its config and code: processor, library versions (tags of every run)."""
    import torch
    import transformers

    return {
        CPU_TAG: cpu_model(),
        "quadrl.cpu_count": str(os.cpu_count()),
        "quadrl.torch": torch.__version__,
        "quadrl.transformers": transformers.__version__,
        "quadrl.python": platform.python_version(),
    }


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'} (lists become JSON)."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    value = json.dumps(tree) if isinstance(tree, list | tuple) else str(tree)
    return {prefix[:-1]: value[:6000]}


class Tracker:
    """A single MLflow run; a no-op when tracking is disabled."""

    def __init__(self, uri: str, experiment: str, enabled: bool = True):
        self.enabled = enabled
        self.uri = uri
        self.experiment_id = ensure_experiment(uri, experiment) if enabled else ""
        self.client = tracking_client(uri) if enabled else None
        self.run_id: str | None = None

    def start(
        self, run_id: str | None, run_name: str, params: dict[str, str], tags: dict[str, str]
    ) -> str | None:
        """Resume ``run_id`` when given (params are not re-logged), else create a run."""
        if not self.enabled:
            return None
        assert self.client is not None
        if run_id is not None:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, RESUMED_TAG, time.strftime("%Y-%m-%dT%H:%M:%S"))
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + MAX_PARAMS_PER_BATCH])
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled or not metrics:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled and tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            self.client.log_text(self.run_id, text, artifact_file)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        if self.enabled and rows:
            columns = {key: [row[key] for row in rows] for key in rows[0]}
            self.client.log_table(self.run_id, data=columns, artifact_file=artifact_file)

    def finish(self, status: str) -> None:
        """status: FINISHED, FAILED or KILLED."""
        if self.enabled and self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
