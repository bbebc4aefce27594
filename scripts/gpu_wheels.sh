#!/usr/bin/env bash
# Wheels for a CUDA machine that has torch, transformers and peft but no network (such as this workplace's H200
# image): the pure-Python part of quadrl's stack (Hydra, MLflow's client and SQLite store, math-verify, pebble,
# submitit) at the versions in .venv, for CPython 3.12 on x86_64, into .whl/. On that machine:
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   PYTHON=python3 bash scripts/gpu_check.sh
# About 20 MB. vLLM is not among them: its CUDA wheel is hundreds of MB and pins its own torch build.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS="hydra-core omegaconf pebble math-verify latex2sympy2-extended submitit hydra-submitit-launcher mlflow-skinny
 sqlalchemy alembic mako databricks-sdk opentelemetry-api opentelemetry-sdk opentelemetry-proto
 opentelemetry-semantic-conventions gitpython gitdb smmap sqlparse fastapi starlette uvicorn python-dotenv
 importlib-metadata pydantic pydantic-core annotated-types typing-inspection cachetools google-auth pyasn1
 pyasn1-modules greenlet cryptography cffi pycparser"
SPEC=()
for p in $PKGS; do SPEC+=("$p==$(.venv/bin/pip show "$p" | awk '/^Version/{print $2}')"); done
PLATFORMS=()
for tag in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 \
  manylinux1; do PLATFORMS+=(--platform "${tag}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d .whl "${SPEC[@]}"
# omegaconf pins antlr4-python3-runtime 4.9.3, published as a source archive only: build its (pure-Python) wheel
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
echo "gpu_wheels: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/"
