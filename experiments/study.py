"""``quadrl-study`` (``python -m experiments.study``): the Four Quadrant study on the built-in base model, then its report.

    quadrl-study                                   # conf/experiment/quadrant_study.yaml, local, 2 jobs at a time
    quadrl-study --launcher slurm seed=0,1,2,3,4   # extra arguments are Hydra overrides for every job
    quadrl-study --preset quadrant_mechanisms      # cancellation and the optimiser: fixes against masks as is

Steps: (1) resolve the base model once, before any job exists: the shipped one (checksums verified) or, for
other parameters, one built and cached, so that parallel jobs do not all pre-train it; (2) run the sweep as
``python -m experiments.train -m experiment=<preset> hydra/launcher=<launcher>``, which opens a parent MLflow run
and one child run per job; (3) write the report from the parent run's children, log it to the parent, and check
the results against the published ones (docs/results/<preset>.json, the README's tables), condition by
condition. Progress (jobs done, elapsed) is printed as the sweep runs; a failed job does not stop the others, and
the report lists it. The report's control and its paired comparisons are the preset's :data:`STUDY_REPORTS`
entry (the preset's YAML holds the grid; the Hydra schema has no place for report settings).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from experiments.sweep import PARENT_FILE
from experiments.tracking import ensure_experiment

CONF = str(Path(__file__).resolve().parents[1] / "conf")
REFERENCES = Path(__file__).resolve().parents[1] / "docs" / "results"
"""Published results of each preset (``<preset>.json``): the README's tables are generated from them."""


@dataclass(frozen=True)
class StudyReport:
    """How ``quadrl-study`` reports the sweep of one preset."""

    control: str = "intervention=none"
    """The condition the others are compared with (``--control`` overrides it)."""
    pairs: tuple[tuple[str, str], ...] = ()
    """(condition, reference) pairs compared directly, e.g. each fix against its condition as is."""


MECHANISM_MASKS = ("only_pos_low", "only_neg_low", "only_neg_high")
STUDY_REPORTS = {
    "quadrant_study": StudyReport(),
    "quadrant_mechanisms": StudyReport(
        control="+mechanism=baseline",
        pairs=(
            ("+mechanism=sgd", "+mechanism=baseline"),
            *(
                (f"+mechanism={mask}_{fix}", f"+mechanism={mask}")
                for mask in MECHANISM_MASKS
                for fix in ("min_replace", "sgd")
            ),
        ),
    ),
}
"""Report settings per preset of conf/experiment/; a preset not listed gets the defaults of StudyReport."""


def split_sweeps(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the overrides that set one value, {key: values} of the sweeps such as ``seed=0,1`` or ``+mechanism=a,b``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    single: list[str] = []
    sweeps: dict[str, str] = {}
    for text, parsed in zip(overrides, OverridesParser.create().parse_overrides(overrides), strict=True):
        if parsed.is_sweep_override():
            key, _, values = text.partition("=")
            sweeps[key] = values
        else:
            single.append(text)
    return single, sweeps


def study_config(preset: str, overrides: list[str]):
    """The preset's config with the given overrides minus their sweeps: one config (tracking, base model) for the
    whole study (compose refuses sweeps); the sweep itself gets every override."""
    from grpo.config import register_configs

    single, _ = split_sweeps(overrides)
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("config", overrides=[f"experiment={preset}", *single], return_hydra_config=True)


def reference_file(preset: str, given: str | None) -> Path | None:
    """The published results the study is checked against: ``given``, else the shipped docs/results/<preset>.json."""
    if given is not None:
        return None if given.lower() == "none" else Path(given)
    shipped = REFERENCES / f"{preset}.json"
    return shipped if shipped.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="quadrant_study", help="conf/experiment/<preset>.yaml (a grid)")
    parser.add_argument("--launcher", default="local", help="hydra/launcher: local or slurm")
    parser.add_argument("--out", default=None, help="sweep directory (default multirun/<preset>-<time>)")
    parser.add_argument(
        "--control",
        default=None,
        help="condition the others are compared with (default: the preset's, else intervention=none)",
    )
    parser.add_argument(
        "--reference",
        default=None,
        help="results file to check the study against (default: docs/results/<preset>.json when it exists; "
        "'none' skips the check)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every job")
    args = parser.parse_args(argv)

    sweep_dir = Path(args.out or f"multirun/{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    cfg = study_config(args.preset, args.overrides)
    uri, experiment = str(cfg.tracking.uri), str(cfg.tracking.experiment)

    print(
        f"[study] 1/3 base model for task '{cfg.task.name}' (shipped, or built once and cached)", flush=True
    )
    from experiments.train import base_model

    started = time.perf_counter()
    job = cfg.copy()
    with open_dict(job):
        del job["hydra"]
    base = base_model(OmegaConf.to_object(job), OmegaConf.to_container(cfg.task, resolve=True))
    print(f"[study]     {base.tag}: {base.path} ({time.perf_counter() - started:.0f} s)", flush=True)
    if cfg.tracking.enabled:
        ensure_experiment(uri, experiment)  # once, before the jobs fan out

    grid = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=False)
    single, sweeps = split_sweeps(args.overrides)  # command-line values win over the preset's grid
    grid.update({**sweeps, **{k: v for k, _, v in (o.partition("=") for o in single) if k in grid}})
    print(f"[study] 2/3 sweep {grid} on launcher '{args.launcher}' -> {sweep_dir}", flush=True)
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        "-m",
        f"experiment={args.preset}",
        f"hydra/launcher={args.launcher}",
        f"hydra.sweep.dir={sweep_dir}",
        *args.overrides,
    ]
    sweep = subprocess.run(command)
    parent_file = sweep_dir / PARENT_FILE
    if not parent_file.is_file():
        print(
            f"[study] the sweep did not start (exit {sweep.returncode}); nothing to report", file=sys.stderr
        )
        return sweep.returncode or 1
    if sweep.returncode != 0:
        print(f"[study] some jobs failed (exit {sweep.returncode}); the report lists them", flush=True)

    print("[study] 3/3 report", flush=True)
    from analysis.report import ReportOptions, build_report

    settings = STUDY_REPORTS.get(args.preset, StudyReport())

    report = build_report(
        ReportOptions(
            out_dir=sweep_dir / "report",
            tracking_uri=uri,
            parent_run_id=parent_file.read_text().strip(),
            control=args.control or settings.control,
            min_seeds=3,
            pairs=settings.pairs,
            reference=reference_file(args.preset, args.reference),
        )
    )
    print(f"\n[study] report: {report}")
    if uri.startswith("sqlite:"):
        print(
            f"[study] MLflow UI: .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
            f"  (then open http://127.0.0.1:5000, experiment '{experiment}')"
        )
    else:
        print(f"[study] MLflow UI: {uri} (experiment '{experiment}')")
    return 0 if sweep.returncode == 0 else sweep.returncode


if __name__ == "__main__":
    raise SystemExit(main())
