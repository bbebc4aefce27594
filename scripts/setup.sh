#!/usr/bin/env bash
# Create .venv and install quadrl with its dev tools and the documentation site's builder (mkdocs-material).
# On a CPU machine torch is pinned to the local CPU wheel (constraints-cpu.txt): an unpinned torch pulls ~2.6 GB
# of CUDA packages. Set QUADRL_CONSTRAINTS= (empty) on a GPU machine to let pip choose the CUDA build.
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
constraints=${QUADRL_CONSTRAINTS-constraints-cpu.txt}
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
args=(-q -e ".[dev,datasets,docs]")
[ -n "$constraints" ] && args+=(-c "$constraints")
.venv/bin/python -m pip install "${args[@]}"
.venv/bin/python -c "import torch, transformers, peft, mlflow, hydra, submitit; print('quadrl set up: torch', torch.__version__, '| transformers', transformers.__version__)"
