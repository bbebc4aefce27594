"""MLflow grouping for Hydra multiruns: one parent run per sweep, one child run per job.

:class:`SweepTracking` is a Hydra callback that runs in the submitting process. At sweep start it creates the
tracking store and the experiment (once, before any job exists: concurrent creation corrupts a new SQLite file
and can misfile runs) and opens the parent run, whose id it writes to ``<sweep dir>/mlflow_parent_run_id``; each
job reads that file and tags its run with ``mlflow.parentRunId``. At sweep end :func:`finalize` records on the
parent how many jobs finished, failed or were requeued, marks child runs that SLURM killed, and prints a summary.

For MLflow's UI (3.17): the callback also stores on the experiment a *shared view* of the sweep (MLflow's
``mlflow.sharedViewState.<key>`` experiment tag, the state its own "Share" button saves) that opens the runs page in
chart mode on the sweep's child runs, grouped by condition (``sweep.condition``, the swept values without the
seed; seeds are averaged), with the charts filtered to ``eval/accuracy``; :func:`ui_url` is the direct link to it,
printed when the sweep starts and ends. Each job's run is named after its condition and seed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from experiments.tracking import ensure_experiment, git_commit, tracking_client
from runrecord import (
    OVERRIDES_TAG,
    PARENT_TAG,
    RESUMED_TAG,
    ROLE_TAG,
    SHARED_VIEW_TAG_PREFIX,
    SWEEP_CONDITION_TAG,
    SWEEP_ROLE,
    SWEEP_SUMMARY_TAG,
    condition_of,
    override_key,
)

log = logging.getLogger(__name__)
PARENT_FILE = "mlflow_parent_run_id"
SUMMARY_FILE = "sweep_summary.json"
SWEPT_FILE = "swept_keys.json"
DEFAULT_UI = "http://127.0.0.1:5000"
"""Where ``mlflow ui`` serves a local store by default."""


def parent_run_id(sweep_dir: str | Path) -> str | None:
    path = Path(sweep_dir) / PARENT_FILE
    return path.read_text().strip() if path.is_file() else None


def swept_keys(config: DictConfig) -> list[str]:
    """The keys the sweep varies: those with several values in the preset's grid (``hydra.sweeper.params``) or on
    the command line, where a single command-line value fixes a key the preset sweeps."""
    grid = config.hydra.sweeper.get("params") or {}
    lines = [f"{key}={value}" for key, value in grid.items()] + list(config.hydra.overrides.task)
    keys: dict[str, None] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element().lstrip("+~")
        if override.is_sweep_override():
            keys[key] = None
        else:
            keys.pop(key, None)
    return sorted(keys)


def read_swept_keys(sweep_dir: str | Path) -> list[str] | None:
    path = Path(sweep_dir) / SWEPT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def sweep_condition(overrides: Sequence[str], swept: Sequence[str]) -> str:
    """A job's values of the swept keys other than the seed, e.g. ``intervention=hapo optim.lr=0.001``: the
    condition rule (:func:`runrecord.condition_of`) applied to the swept keys only."""
    return condition_of(o for o in overrides if override_key(o) in swept)


def comparison_view(parent: str, charts: str = "eval/accuracy") -> dict[str, Any]:
    """The shared view that compares a sweep's conditions: the runs page's search facets and chart state, the
    charts filtered to names containing ``charts`` (``eval/`` for a sweep with an evaluation suite: every
    benchmark's ``eval/<name>/*`` and ``eval/suite/mean`` beside ``eval/accuracy``)."""
    return {
        "searchFilter": f"tags.`{PARENT_TAG}` = '{parent}'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "tag", "groupByData": SWEEP_CONDITION_TAG}],
        },
        "chartsSearchFilter": charts,
    }


def charts_filter(config: DictConfig) -> str:
    """What the comparison view's charts show: ``eval/accuracy``, or every ``eval/`` metric when the sweep's
    config has an evaluation suite (its per-benchmark metrics and ``eval/suite/mean``)."""
    suite = (config.get("eval") or {}).get("suite")
    return "eval/" if suite else "eval/accuracy"


def share_key(parent: str) -> str:
    return f"quadrl-sweep-{parent}"


def ui_url(uri: str, experiment_id: str, parent: str) -> str | None:
    """The MLflow UI address of a sweep's comparison view (None for stores no UI address is known for)."""
    if uri.startswith("sqlite:"):
        base = DEFAULT_UI
    elif uri.startswith(("http://", "https://")):
        base = uri.rstrip("/")
    else:
        return None
    return (
        f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={share_key(parent)}"
        "&compareRunsMode=CHART&workflowType=machine_learning"
    )


def ui_lines(uri: str, experiment_id: str, parent: str) -> list[str]:
    """What to print for the UI: the direct link, and for a SQLite store how to start the UI it points at."""
    url = ui_url(uri, experiment_id, parent)
    if url is None:
        return []
    lines = [f"MLflow UI, the conditions' eval/accuracy side by side: {url}"]
    if uri.startswith("sqlite:"):
        from experiments.tracking import sqlite_file

        database = sqlite_file(uri)
        absolute = f"sqlite:///{database.resolve()}" if database else uri
        lines.append(
            f"  (serve it with: mlflow ui --backend-store-uri {absolute} --host 127.0.0.1 --port 5000)"
        )
    return lines


def _tracking(config: DictConfig) -> tuple[bool, str, str]:
    t = config.tracking
    return bool(t.enabled), str(t.uri), str(t.experiment)


class SweepTracking(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        enabled, uri, experiment = _tracking(config)
        if not enabled:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if parent_run_id(sweep_dir):  # re-entered (e.g. a resubmitted sweep): keep the parent
            return
        experiment_id = ensure_experiment(uri, experiment)
        client = tracking_client(uri)
        grid = config.hydra.sweeper.get("params")  # None when the grid is given on the command line only
        params = OmegaConf.to_container(grid, resolve=False) if grid is not None else {}
        tags = {
            ROLE_TAG: SWEEP_ROLE,
            "quadrl.sweep_dir": str(sweep_dir.resolve()),
            "quadrl.grid": json.dumps(params),
            OVERRIDES_TAG: json.dumps(list(config.hydra.overrides.task)),
            "quadrl.git_commit": git_commit(),
            "quadrl.launcher": str(config.hydra.launcher.get("_target_", "basic")),
        }
        run = client.create_run(
            experiment_id, run_name=f"sweep-{sweep_dir.parent.name}-{sweep_dir.name}", tags=tags
        )
        parent = run.info.run_id
        view = json.dumps(comparison_view(parent, charts_filter(config)))
        client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG_PREFIX + share_key(parent), view)
        try:
            (sweep_dir / SWEPT_FILE).write_text(json.dumps(swept_keys(config)))
        except Exception as exc:  # noqa: BLE001 - the jobs then keep their plain names; the sweep still runs
            log.warning(
                "could not tell which keys the sweep varies (%s): jobs keep their plain run names", exc
            )
        (sweep_dir / PARENT_FILE).write_text(parent)
        log.info("MLflow parent run %s (experiment %s, %s)", parent, experiment, uri)
        for line in ui_lines(uri, experiment_id, parent):
            print(line, flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        finalize(config, None)


def finalize(
    config: DictConfig, results: Sequence[JobReturn] | None, timing: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Record the sweep's outcome on its parent run (idempotent: the first call with results wins).

    ``timing`` (local launcher): {"slots", "wall_s", "job_wall_s": [...]}, from which :func:`sweep_efficiency`
    adds the slot use to the summary, the parent's ``sweep/*`` metrics and the printed summary."""
    enabled, uri, _ = _tracking(config)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    parent = parent_run_id(sweep_dir)
    summary_path = sweep_dir / SUMMARY_FILE
    if not enabled or parent is None or summary_path.exists():
        return None
    client = tracking_client(uri)
    parent_run = client.get_run(parent)
    children = client.search_runs(
        [parent_run.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent}'",
        max_results=10000,
    )
    failed_jobs = []
    if results is not None:
        for num, ret in enumerate(results):
            if ret.status != JobStatus.COMPLETED:
                failed_jobs.append(
                    {"job": num, "overrides": list(ret.overrides or []), "error": repr(ret._return_value)}
                )
    for run in children:  # a job SLURM killed never closed its run: it must not look RUNNING forever
        if run.info.status == "RUNNING" and results is not None:
            client.set_terminated(run.info.run_id, status="KILLED")
    children = client.search_runs(
        [parent_run.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent}'",
        max_results=10000,
    )
    statuses = [r.info.status for r in children]
    summary = {
        "jobs": len(results) if results is not None else len(children),
        "runs": len(children),
        "finished": statuses.count("FINISHED"),
        "failed": statuses.count("FAILED"),
        "killed": statuses.count("KILLED"),
        "requeued": sum(1 for r in children if RESUMED_TAG in r.data.tags),
        "failed_jobs": failed_jobs,
    }
    efficiency = sweep_efficiency(timing, children) if timing else None
    if efficiency:
        summary["efficiency"] = efficiency
    for key in ("jobs", "runs", "finished", "failed", "killed", "requeued"):
        client.log_metric(parent, f"sweep/{key}", summary[key])
    for key, value in (efficiency or {}).items():
        client.log_metric(parent, f"sweep/{key}", value)
    client.set_tag(parent, SWEEP_SUMMARY_TAG, json.dumps(summary)[:5000])
    bad = summary["failed"] + summary["killed"] + len(failed_jobs)
    client.set_terminated(parent, status="FAILED" if bad else "FINISHED")
    summary_path.write_text(json.dumps(summary, indent=2))
    line = (
        f"sweep: {summary['jobs']} jobs, {summary['finished']} finished, {summary['failed']} failed, "
        f"{summary['killed']} killed, {summary['requeued']} requeued (parent run {parent})"
    )
    print(line, flush=True)
    if efficiency:
        print(efficiency_line(efficiency), flush=True)
    for job in failed_jobs:
        print(f"  FAILED job #{job['job']}: {' '.join(job['overrides'])}: {job['error'][:300]}", flush=True)
    for line in ui_lines(uri, parent_run.info.experiment_id, parent):
        print(line, flush=True)
    return summary


def sweep_efficiency(timing: dict[str, Any], children: Sequence[Any]) -> dict[str, float]:
    """How well a local sweep used its slots, and what a job spends before it trains.

    efficiency = ideal / wall, ideal = (sum of the jobs' wall times, submit to done) / slots: 1 when no slot is
    ever idle. The start-up inside a job (process start, imports, Hydra, MLflow run and model load; the jobs log
    ``perf/startup_s`` and ``perf/setup_s``) is averaged over the runs that logged it, with its share of a job.
    """
    walls = list(timing["job_wall_s"])
    ideal = sum(walls) / timing["slots"]
    out = {
        "wall_s": float(timing["wall_s"]),
        "ideal_s": ideal,
        "efficiency": ideal / timing["wall_s"] if timing["wall_s"] > 0 else 0.0,
        "job_wall_mean_s": sum(walls) / len(walls),
    }
    for key in ("startup_s", "setup_s"):
        values = [r.data.metrics[f"perf/{key}"] for r in children if f"perf/{key}" in r.data.metrics]
        if values:
            out[f"job_{key.removesuffix('_s')}_mean_s"] = sum(values) / len(values)
    return out


def efficiency_line(e: dict[str, float]) -> str:
    line = (
        f"sweep efficiency {e['efficiency']:.3f}: wall {e['wall_s']:.0f} s, ideal {e['ideal_s']:.0f} s "
        f"(job wall times / slots; a job {e['job_wall_mean_s']:.1f} s on average)"
    )
    if "job_startup_mean_s" in e and "job_setup_mean_s" in e:
        before = e["job_startup_mean_s"] + e["job_setup_mean_s"]
        line += (
            f"; before training a job spends {before:.1f} s ({before / e['job_wall_mean_s']:.0%}): "
            f"{e['job_startup_mean_s']:.1f} s process start + imports, {e['job_setup_mean_s']:.1f} s "
            "MLflow run + model load"
        )
    return line
