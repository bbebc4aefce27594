"""Read quadrl runs from MLflow into tidy pandas tables.

Two ways to select runs:
  * all runs of an experiment (by name), sweep parents (tag ``quadrl.role=sweep``) excluded;
  * the child runs of one sweep's parent run (children carry the tag ``mlflow.parentRunId``).

The result is a :class:`RunSet` with two tables:
  * ``runs``: one row per run -- run_id, run_name, status, condition, seed, experiment_id, parent_run_id,
    start_time, end_time, ``tags.<tag>`` for the provenance tags (runrecord.PROVENANCE_TAGS), then
    ``params.<key>`` for every param and ``metrics.<key>`` for each metric's
    last logged value (MLflow's own column naming, so a param called ``status`` cannot clash);
  * ``history``: the full history of every metric, long format with columns
    run_id, condition, seed, metric, step, value (one row per run, metric and step; if a step was logged
    twice, e.g. by a resumed run, the value logged last wins).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from runrecord import (
    CONDITION_TAG,
    DEFAULT_TRACKING_URI,
    OVERRIDES_TAG,
    PARENT_TAG,
    PROVENANCE_TAGS,
    ROLE_TAG,
    SWEEP_ROLE,
    condition_of,
    seed_of,
)

UNKNOWN_CONDITION = "(unknown)"

HISTORY_COLUMNS = ["run_id", "condition", "seed", "metric", "step", "value"]
RUN_COLUMNS = [
    "run_id",
    "run_name",
    "status",
    "condition",
    "seed",
    "experiment_id",
    "parent_run_id",
    "start_time",
    "end_time",
]


@dataclass
class RunSet:
    """Runs selected from MLflow, as tidy tables.

    Attributes:
        runs: one row per run (see module docstring for the columns).
        history: long table of metric histories (run_id, condition, seed, metric, step, value).
        tracking_uri: where the runs were read from.
        experiment_ids: experiments the runs belong to.
        parent_run_id: the sweep parent given, or the one parent shared by all runs (else None).
        shared_overrides: overrides common to every condition, dropped from the condition names (which then
            say only what differs, e.g. ``intervention=hapo``); empty when there is a single condition.
    """

    runs: pd.DataFrame
    history: pd.DataFrame
    tracking_uri: str
    experiment_ids: list[str]
    parent_run_id: str | None = None
    shared_overrides: tuple[str, ...] = ()
    """Overrides every run has (e.g. ``experiment=quadrant_study``), left out of the condition names."""

    @property
    def metric_names(self) -> list[str]:
        """Sorted names of all metrics with at least one logged value."""
        return sorted(self.history["metric"].unique().tolist())

    @property
    def conditions(self) -> list[str]:
        """Sorted condition names."""
        return sorted(self.runs["condition"].unique().tolist())


def shared_overrides(conditions: Iterable[str]) -> tuple[str, ...]:
    """The overrides present in every one of two or more distinct conditions, in the first one's order."""
    distinct = list(dict.fromkeys(conditions))
    if len(distinct) < 2:
        return ()
    common = set.intersection(*(set(c.split()) for c in distinct))
    return tuple(o for o in distinct[0].split() if o in common)


def _overrides(tags: Mapping[str, str]) -> list[str] | None:
    """The JSON list in tag ``quadrl.overrides``, or None when absent or malformed."""
    try:
        overrides = json.loads(tags[OVERRIDES_TAG]) if tags.get(OVERRIDES_TAG) else None
    except json.JSONDecodeError:
        return None
    return [str(o) for o in overrides] if isinstance(overrides, list) else None


def condition_from_tags(tags: Mapping[str, str], params: Mapping[str, str] | None = None) -> str:
    """The condition of a run (``runrecord.condition_of``): from tag ``quadrl.condition`` when present, else
    computed from tag ``quadrl.overrides``; else ``intervention=<param intervention.name>``; else ``(unknown)``."""
    if tags.get(CONDITION_TAG):
        return tags[CONDITION_TAG]
    overrides = _overrides(tags)
    if overrides is not None:
        return condition_of(overrides)
    if params and params.get("intervention.name"):
        return f"intervention={params['intervention.name']}"
    return UNKNOWN_CONDITION


def seed_from(params: Mapping[str, str], tags: Mapping[str, str]) -> int | None:
    """Seed of a run from param ``seed``, else from a ``seed=`` entry of tag ``quadrl.overrides``."""
    value = params.get("seed")
    if value is None:
        value = seed_of(_overrides(tags) or [])
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _wanted(name: str, patterns: Iterable[str] | None) -> bool:
    return patterns is None or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _ms_to_time(ms: int | None) -> pd.Timestamp:
    return pd.to_datetime(ms, unit="ms", utc=True) if ms else pd.NaT


def _run_row(run: Run) -> dict:
    tags, params = run.data.tags, run.data.params
    row = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "condition": condition_from_tags(tags, params),
        "seed": seed_from(params, tags),
        "experiment_id": run.info.experiment_id,
        "parent_run_id": tags.get(PARENT_TAG),
        "start_time": _ms_to_time(run.info.start_time),
        "end_time": _ms_to_time(run.info.end_time),
    }
    row.update({f"tags.{k}": tags.get(k) for k in PROVENANCE_TAGS})
    row.update({f"params.{k}": v for k, v in sorted(params.items())})
    row.update({f"metrics.{k}": v for k, v in sorted(run.data.metrics.items())})
    return row


def _select_runs(
    client: MlflowClient, experiment: str | None, parent_run_id: str | None
) -> tuple[list[Run], list[str]]:
    if (experiment is None) == (parent_run_id is None):
        raise ValueError("give exactly one of experiment= or parent_run_id=")
    if parent_run_id is not None:
        parent = client.get_run(parent_run_id)
        exp_ids = [parent.info.experiment_id]
        runs = _search_all(client, exp_ids, f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
        return runs, exp_ids
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment named {experiment!r}")
    runs = _search_all(client, [exp.experiment_id])
    runs = [r for r in runs if r.data.tags.get(ROLE_TAG) != SWEEP_ROLE]
    return runs, [exp.experiment_id]


def load_runs(
    tracking_uri: str = DEFAULT_TRACKING_URI,
    *,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    metrics: Iterable[str] | None = None,
    max_workers: int = 8,
) -> RunSet:
    """Load runs and their metric histories from MLflow.

    Args:
        tracking_uri: MLflow tracking URI (``sqlite:///...``, ``http://...``, ...).
        experiment: name of the experiment whose runs to load (sweep parents excluded).
        parent_run_id: id of a sweep's parent run whose child runs to load. Give exactly one of the two.
        metrics: optional glob patterns (e.g. ``["eval/*", "quadrant/*"]``) restricting which metric
            histories are fetched; all metrics by default.
        max_workers: threads used for the ``get_metric_history`` calls (one call per run and metric).

    Returns:
        A :class:`RunSet`; ``parent_run_id`` is the one given, or the parent shared by all runs (else None).
    """
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])
        if not db.exists():  # MLflow would silently create an empty database
            raise ValueError(f"no MLflow database at {db} (tracking URI {tracking_uri})")
    client = MlflowClient(tracking_uri=tracking_uri)
    selected, exp_ids = _select_runs(client, experiment, parent_run_id)
    rows = [_run_row(r) for r in selected]
    shared = shared_overrides([row["condition"] for row in rows])
    for row in rows:
        row["condition"] = " ".join(o for o in row["condition"].split() if o not in shared) or "default"
    runs = pd.DataFrame(rows, columns=None if rows else RUN_COLUMNS)
    if not runs.empty:
        runs["seed"] = runs["seed"].astype("Int64")
        runs = runs.sort_values(["condition", "seed", "start_time"], na_position="last").reset_index(
            drop=True
        )

    jobs = [(r, key) for r in selected for key in r.data.metrics if _wanted(key, metrics)]
    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        results = list(pool.map(lambda job: client.get_metric_history(job[0].info.run_id, job[1]), jobs))
    info = {row["run_id"]: (row["condition"], row["seed"]) for row in rows}
    records = [
        (run.info.run_id, *info[run.info.run_id], key, m.step, m.value, m.timestamp)
        for (run, key), hist in zip(jobs, results, strict=True)
        for m in hist
    ]
    history = pd.DataFrame(records, columns=[*HISTORY_COLUMNS, "timestamp"])
    history = (
        history.sort_values(["run_id", "metric", "step", "timestamp"], kind="stable")
        .drop_duplicates(["run_id", "metric", "step"], keep="last")
        .drop(columns="timestamp")
        .reset_index(drop=True)
    )
    history["seed"] = history["seed"].astype("Int64")
    history["step"] = history["step"].astype("int64")
    history["value"] = history["value"].astype("float64")

    if parent_run_id is None and not runs.empty:
        parents = runs["parent_run_id"].dropna().unique()
        if len(parents) == 1 and runs["parent_run_id"].notna().all():
            parent_run_id = str(parents[0])
    return RunSet(
        runs=runs,
        history=history,
        tracking_uri=tracking_uri,
        experiment_ids=exp_ids,
        parent_run_id=parent_run_id,
        shared_overrides=shared,
    )
