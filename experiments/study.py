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
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from experiments import CONF_DIR
from experiments.sweep import PARENT_FILE, ui_lines
from experiments.tracking import ensure_experiment

REFERENCES = CONF_DIR.parent / "docs" / "results"
"""Published results of each preset (``<preset>.json``): the README's tables are generated from them."""


@dataclass(frozen=True)
class StudyReport:
    """How ``quadrl-study`` reports the sweep of one preset."""

    control: str = "intervention=none"
    """The condition the others are compared with (``--control`` overrides it)."""
    pairs: tuple[tuple[str, str], ...] = ()
    """(condition, reference) pairs compared directly, e.g. each fix against its condition as is."""
    metric: str = "eval/accuracy"
    """The main metric the conditions are compared on (greedy test accuracy unless the preset says why not)."""


MECHANISM_MASKS = ("only_pos_low", "only_neg_low", "only_neg_high")
STUDY_REPORTS = {
    "quadrant_study": StudyReport(),
    # countdown's greedy accuracy on 200 prompts moves by about its own noise; the mean accuracy of 8 samples
    # per prompt (1600 completions, what the paper reports as avg@k) resolves the baseline's gain
    "quadrant_study_countdown": StudyReport(metric="eval/avg_at_8"),
    # ARCA against its rank-matched control (GRPO through the same LoRA adapter), IW-OPD against plain OPD: the
    # comparisons the two papers make
    "credit_methods": StudyReport(
        control="+credit_method=baseline",
        pairs=(
            ("+credit_method=arca", "+credit_method=grpo_lora"),
            ("+credit_method=iw_opd", "+credit_method=opd"),
        ),
    ),
    # quadrl's own method (docs/preregistration/branch_credit.md): against GRPO (the control) and against HAPO
    "branch_credit": StudyReport(pairs=(("intervention=branch_credit", "intervention=hapo"),)),
    "branch_credit_countdown": StudyReport(
        pairs=(("intervention=branch_credit", "intervention=hapo"),), metric="eval/avg_at_8"
    ),
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


def first_values(overrides: list[str]) -> list[str]:
    """The overrides with each sweep (``seed=0,1,2``) replaced by its first value: one config to check."""
    out = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            out.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
        else:
            out.append(override.input_line)
    return out


def study_config(preset: str, overrides: list[str], with_hydra: bool = True):
    """The composed config of the study's first job (with Hydra's own node unless ``with_hydra=False``)."""
    from grpo.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(
            "config",
            overrides=[f"experiment={preset}", *first_values(overrides)],
            return_hydra_config=with_hydra,
        )


def reference_file(preset: str, given: str | None) -> Path | None:
    """The published results the study is checked against: ``given``, else the shipped docs/results/<preset>.json."""
    if given is not None:
        return None if given.lower() == "none" else Path(given)
    shipped = REFERENCES / f"{preset}.json"
    return shipped if shipped.is_file() else None


def is_sweep(override: str) -> bool:
    """``key=a,b``, ``key=range(...)``: swept by the multirun, not one value to compose with (Hydra's parser)."""
    return OverridesParser.create().parse_overrides([override])[0].is_sweep_override()


def sweep_grid(cfg, overrides: list[str]) -> dict[str, list[str]]:
    """The swept keys and their values: the preset's ``hydra.sweeper.params``, with a command-line override of a
    swept key replacing its values (as Hydra does)."""
    grid = {
        str(k): str(v) for k, v in OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=False).items()
    }
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key.lstrip("+") in {k.lstrip("+") for k in grid}:
            grid = {k: (value if k.lstrip("+") == key.lstrip("+") else v) for k, v in grid.items()}
    return {k: [v] if "(" in v else [x.strip() for x in v.split(",")] for k, v in grid.items()}


def conditions(cfg, overrides: list[str]) -> list[list[str]]:
    """One override list per value of each swept key (the preset's grid and the command line's sweeps), the other
    swept keys at their first value: every value a job will run with, each composed once by :func:`check_all`."""
    parser = OverridesParser.create()
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=False)
    lines = [f"{k}={v}" for k, v in params.items()]
    swept = {line.partition("=")[0].lstrip("+") for line in lines}
    # a command-line override of a preset key replaces its values, as Hydra does; a new sweep adds a key
    given = {o.partition("=")[0].lstrip("+") for o in overrides}
    lines = [x for x in lines if x.partition("=")[0].lstrip("+") not in given]
    lines += [o for o in overrides if is_sweep(o) or o.partition("=")[0].lstrip("+") in swept]
    fixed = [o for o in overrides if o not in lines]
    grid: dict[str, list[str]] = {}
    for override in parser.parse_overrides(lines):
        key = override.get_key_element()
        if override.is_sweep_override():
            try:
                grid[key] = [str(v) for v in override.sweep_string_iterator()]
            except Exception:  # noqa: BLE001  a sweep Hydra cannot list (interval): its jobs check their own
                continue
        else:
            grid[key] = [override.get_value_element_as_str()]
    first = {k: f"{k}={v[0]}" for k, v in grid.items()}
    return [
        [*fixed, *(f for other, f in first.items() if other != key), f"{key}={value}"]
        for key, values in grid.items()
        for value in values
    ] or [fixed]


def check_all(preset: str, cfg, overrides: list[str]) -> None:
    """Compose and check every condition of the sweep (:func:`conditions`) before any job or model exists;
    ConfigError naming the condition whose value is refused."""
    from experiments.train import check
    from grpo.checks import ConfigError

    for condition in conditions(cfg, overrides):
        try:
            check(study_config(preset, condition, with_hydra=False))
        except (HydraException, OmegaConfBaseException, ConfigError) as exc:
            # one line: Hydra's "could not find" lists every option on the lines after the first
            first_line = str(exc).strip().splitlines()[0]
            raise ConfigError(f"condition {condition[-1]}: {first_line}") from exc


def teachers(preset: str, overrides: list[str], grid: dict[str, list[str]]) -> list:
    """The configs (one per distinct teacher) of the grid's conditions that distil from the built-in teacher."""
    from experiments.base_model import teacher_recipe

    swept = {k.lstrip("+") for k in grid}
    fixed = [o for o in overrides if not is_sweep(o) and o.partition("=")[0].lstrip("+") not in swept]
    by_recipe = {}  # one config per distinct teacher recipe, in grid order
    for key, values in grid.items():
        if key.lstrip("+") == "seed":
            continue
        for value in values:
            # a Hydra sweep function (range, choice, ...) is not one value: its jobs build their teacher
            if "(" in value:
                continue
            cfg = OmegaConf.to_object(study_config(preset, [*fixed, f"{key}={value}"], with_hydra=False))
            if cfg.algo.advantage == "teacher" and cfg.algo.teacher.source == "builtin":
                by_recipe.setdefault(teacher_recipe(cfg.model.base_seed, cfg.algo.teacher.min_accuracy), cfg)
    return list(by_recipe.values())


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
    from experiments.train import check
    from grpo.checks import ConfigError

    try:  # a refused value costs seconds here, not a base-model build and a sweep of failed jobs
        cfg = study_config(args.preset, args.overrides)
        plain = study_config(args.preset, args.overrides, with_hydra=False)
        check(plain)
        check_all(args.preset, cfg, args.overrides)
    except (HydraException, OmegaConfBaseException, ConfigError) as exc:
        print(f"quadrl-study: error: {exc}", file=sys.stderr)
        return 2
    uri, experiment = str(cfg.tracking.uri), str(cfg.tracking.experiment)

    print(
        f"[study] 1/3 base model for task '{cfg.task.name}' (shipped, or built once and cached)", flush=True
    )
    from experiments.train import base_model, teacher_model

    started = time.perf_counter()
    task = OmegaConf.to_container(cfg.task, resolve=True)
    base = base_model(OmegaConf.to_object(plain), task)
    print(f"[study]     {base.tag}: {base.path} ({time.perf_counter() - started:.0f} s)", flush=True)
    grid = sweep_grid(cfg, args.overrides)
    for condition in teachers(args.preset, args.overrides, grid):
        started = time.perf_counter()  # resolved before the jobs, which would otherwise each build it
        teacher = teacher_model(condition, task)
        print(
            f"[study]     distillation teacher (>= {condition.algo.teacher.min_accuracy:.0%} greedy test "
            f"accuracy) {teacher.tag}: {teacher.path} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    experiment_id = ensure_experiment(uri, experiment) if cfg.tracking.enabled else ""  # once, before fan-out

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

    parent = parent_file.read_text().strip()
    settings = STUDY_REPORTS.get(args.preset, StudyReport())
    report = build_report(
        ReportOptions(
            out_dir=sweep_dir / "report",
            tracking_uri=uri,
            parent_run_id=parent,
            control=args.control or settings.control,
            metric=settings.metric,
            min_seeds=3,
            pairs=settings.pairs,
            reference=reference_file(args.preset, args.reference),
        )
    )
    print(f"\n[study] report: {report} (also on the parent run {parent}, artifact 'report/')")
    for line in ui_lines(uri, experiment_id, parent):
        print(f"[study] {line}", flush=True)
    return 0 if sweep.returncode == 0 else sweep.returncode


if __name__ == "__main__":
    raise SystemExit(main())
