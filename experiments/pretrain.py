"""``quadrl-pretrain``: build a base model for a task (SFT until the greedy test accuracy is inside a band).

    quadrl-pretrain --task arith --seed 0 --out runs/base-arith min_digits=3 max_digits=4
    quadrl-pretrain --task countdown --cache            # build into the shared cache (ensure_base_model)
    quadrl-pretrain --task arith --ship                 # (re)build the shipped models/arith (maintainers)
    quadrl-pretrain --task arith --ship --name arith_teacher --low 0.9 --high 1   # ship the built-in teacher

Task parameters are ``key=value`` pairs (values parsed as YAML scalars: ``4`` -> int, ``0.1`` -> float,
``null`` -> None, ``true`` -> bool, anything else a string).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"quadrl-pretrain: task parameter {pair!r} is not key=value")
        params[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return params


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quadrl-pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--task", required=True, help="registered task name (arith, countdown, math_file, ...)")
    p.add_argument("--seed", type=int, default=0, help="model init + data order seed (default 0)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="output directory (model, tokenizer, quadrl_base.json)")
    target.add_argument(
        "--cache", action="store_true", help="build into the cache (QUADRL_CACHE or ~/.cache/quadrl)"
    )
    target.add_argument(
        "--ship",
        action="store_true",
        help="ship into the repository's models/<task> (or models/<--name>) with the sha256 of every file (what "
        "model=tiny loads): this machine's cached build of the same recipe, built first if there is none",
    )
    p.add_argument(
        "--name", default=None, help="with --ship: the directory under models/ (default: the task's name)"
    )
    p.add_argument("--cache-dir", default=None, help="cache root for --cache and --ship")
    p.add_argument(
        "--max-seconds", type=float, default=1800.0, help="fail if the band is not reached (default 1800)"
    )
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--low", type=float, default=None, help="target band low (default: the task's, else 0.2)")
    p.add_argument(
        "--high", type=float, default=None, help="target band high (default: the task's, else 0.6)"
    )
    p.add_argument(
        "--eval-every", type=int, default=None, help="steps between test evals (default: task's hint)"
    )
    p.add_argument(
        "--dense-eval-every",
        type=int,
        default=None,
        help="steps between evals near the band (default: task's hint)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads during the build (default: the recipe's, 1)"
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default sqlite:///mlflow.db); 'none' disables",
    )
    p.add_argument(
        "--allow-out-of-band", action="store_true", help="save the last model even outside the band"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no per-eval progress lines")
    p.add_argument("params", nargs="*", metavar="key=value", help="task parameters")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from experiments.tasks import TASKS

    if args.task not in TASKS:  # refused before torch is imported
        print(
            f"quadrl-pretrain: error: unknown task {args.task!r}; registered tasks: {sorted(TASKS)}",
            file=sys.stderr,
        )
        return 2  # a refused value exits 2, as argparse and the other entry points do
    from experiments.base_model import PretrainError, ensure_base_model, pretrain, recipe_from, ship
    from runrecord import DEFAULT_TRACKING_URI

    if args.name is not None and not args.ship:
        print("quadrl-pretrain: error: --name names a shipped model: it needs --ship", file=sys.stderr)
        return 2
    params = parse_params(args.params)
    uri = args.tracking_uri or DEFAULT_TRACKING_URI
    tracking_uri = None if uri.lower() == "none" else uri
    try:
        band = None  # unset: the task's band (pretrain_hints), else 0.2-0.6
        if args.low is not None or args.high is not None:
            band = (0.2 if args.low is None else args.low, 0.6 if args.high is None else args.high)
        given = {
            "seed": args.seed,
            "target_accuracy": band,
            "eval_every": args.eval_every,
            "dense_eval_every": args.dense_eval_every,
            "max_steps": args.max_steps,
            "allow_out_of_band": args.allow_out_of_band,
            "num_threads": args.threads,
        }
        recipe = recipe_from({k: v for k, v in given.items() if v is not None})  # unset: the recipe's default
        common = {"max_seconds": args.max_seconds, "tracking_uri": tracking_uri, "verbose": not args.quiet}
        if args.cache or args.ship:
            if args.ship:
                path = ship(args.task, params, recipe, name=args.name, cache_dir=args.cache_dir, **common)
            else:
                path = ensure_base_model(args.task, params, recipe, cache_dir=args.cache_dir, **common)
            print(path)
            return 0
        meta = pretrain(args.task, params, args.out, recipe, **common)
    except (PretrainError, ValueError, FileNotFoundError) as exc:
        print(f"quadrl-pretrain: error: {exc}", file=sys.stderr)
        return 1
    summary = {k: meta[k] for k in ("task", "seed", "test_accuracy", "steps", "seconds", "in_band")}
    print(json.dumps({**summary, "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
