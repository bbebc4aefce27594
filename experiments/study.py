"""``quadrl-study`` (``python -m experiments.study``): the Four Quadrant study on the built-in base model, then its report.

    quadrl-study                                   # conf/experiment/quadrant_study.yaml, local, 2 jobs at a time
    quadrl-study --launcher slurm seed=0,1,2,3,4   # extra arguments are Hydra overrides for every job

Steps: (1) build the base model once, before any job exists, so that parallel jobs do not all pre-train it;
(2) run the sweep as ``python -m experiments.train -m experiment=<preset> hydra/launcher=<launcher>``, which
opens a parent MLflow run and one child run per job; (3) write the report from the parent run's children and log
it to the parent. Progress (jobs done, elapsed) is printed as the sweep runs; a failed job does not stop the
others, and the report lists it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.sweep import PARENT_FILE
from experiments.tracking import ensure_experiment

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def study_config(preset: str, overrides: list[str]):
    from grpo.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("config", overrides=[f"experiment={preset}", *overrides], return_hydra_config=True)


def is_sweep(override: str) -> bool:
    """``key=a,b`` or ``key=range(...)``-style: swept by the multirun, not one value to compose with."""
    value = override.partition("=")[2].strip()
    if value.startswith(("[", "{", "'", '"')):
        return False
    return "," in value or value.startswith(("range(", "choice(", "interval(", "glob("))


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


def default_control(grid: dict[str, list[str]]) -> str | None:
    """The first value of the first swept key other than the seed (``intervention=none``)."""
    for key, values in grid.items():
        if key.lstrip("+") != "seed" and values:
            return f"{key}={values[0]}"
    return None


def teachers(preset: str, overrides: list[str], grid: dict[str, list[str]], base_seed: int) -> list:
    """The built-in distillation teachers the grid's conditions train with (their SFT recipes, each once)."""
    from experiments.base_model import teacher_recipe

    swept = {k.lstrip("+") for k in grid}
    fixed = [o for o in overrides if not is_sweep(o) and o.partition("=")[0].lstrip("+") not in swept]
    recipes = []
    for key, values in grid.items():
        if key.lstrip("+") == "seed":
            continue
        for value in values:
            # a Hydra sweep function (range, choice, ...) is not one value: its jobs build their teacher
            if "(" in value:
                continue
            algo = study_config(preset, [*fixed, f"{key}={value}"]).algo
            if algo.advantage == "teacher" and algo.teacher.source == "builtin":
                recipe = teacher_recipe(base_seed, algo.teacher.min_accuracy)
                if recipe not in recipes:
                    recipes.append(recipe)
    return recipes


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
        help="condition the others are compared with (default: the first value of the grid's first swept "
        "key, e.g. intervention=none)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every job")
    args = parser.parse_args(argv)

    sweep_dir = Path(args.out or f"multirun/{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    cfg = study_config(args.preset, [o for o in args.overrides if not is_sweep(o)])  # sweeps go to the jobs
    uri, experiment = str(cfg.tracking.uri), str(cfg.tracking.experiment)

    print(f"[study] 1/3 base model for task '{cfg.task.name}' (built once, then cached)", flush=True)
    from experiments.base_model import SFTRecipe, ensure_base_model

    task = OmegaConf.to_container(cfg.task, resolve=True)
    task_name = task.pop("name")

    def build(recipe: SFTRecipe, what: str) -> None:
        started = time.perf_counter()
        path = ensure_base_model(
            task_name,
            task,
            recipe,
            tracking_uri=uri if cfg.tracking.enabled else None,
            max_seconds=float(cfg.model.base_max_seconds),
        )
        print(f"[study]     {what}: {path} ({time.perf_counter() - started:.0f} s)", flush=True)

    base_seed = int(cfg.model.base_seed)
    build(SFTRecipe(seed=base_seed), "base model")
    grid = sweep_grid(cfg, args.overrides)
    for recipe in teachers(args.preset, args.overrides, grid, base_seed):  # before the jobs, which would wait
        build(recipe, f"distillation teacher (>= {recipe.target_accuracy[0]:.0%} greedy test accuracy)")
    if cfg.tracking.enabled:
        ensure_experiment(uri, experiment)  # once, before the jobs fan out

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

    report = build_report(
        ReportOptions(
            out_dir=sweep_dir / "report",
            tracking_uri=uri,
            parent_run_id=parent_file.read_text().strip(),
            control=args.control or default_control(grid),
            min_seeds=3,
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
