#!/usr/bin/env bash
# Two FSDP2 training steps on every GPU this machine has: torchrun, one process per GPU, NCCL (chosen by
# grpo/distributed.py from the CUDA device), full fine-tuning and then LoRA, through the CLI as a user runs it.
# Each run must end FINISHED in MLflow with its gathered checkpoint written. Meant to be called by the
# project's GPU check script (scripts/gpu_check.sh); exits non-zero on the first failure.
#   bash scripts/gpu_check_fsdp.sh            # uses .venv/bin/python
#   PYTHON=python bash scripts/gpu_check_fsdp.sh
#   DEVICE=cpu NPROC=2 bash scripts/gpu_check_fsdp.sh   # the same check on CPU (gloo): tests this script itself
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
N=${NPROC:-$("$PY" -c "import torch; print(torch.cuda.device_count())")}
if [ "$N" -lt 1 ]; then
  echo "gpu_check_fsdp: no CUDA device visible to torch" >&2
  exit 1
fi
if [ "$N" -lt 2 ]; then
  # NCCL refuses two ranks on one GPU: with one GPU the run is a single process (no sharding), still checked
  echo "gpu_check_fsdp: 1 GPU: running one process (FSDP2 needs >= 2 GPUs to shard)"
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for variant in full lora; do
  model=tiny
  [ "$variant" = lora ] && model=tiny_lora
  echo "gpu_check_fsdp: $variant fine-tuning, $N process(es)"
  "$PY" -m torch.distributed.run --standalone --nproc_per_node="$N" -m experiments.train \
    model=$model "model.device=$DEVICE" train.steps=2 "algo.prompts_per_step=$((2 * N))" \
    "eval.n_prompts=$((4 * N))" eval.n_samples=0 train.progress=false train.collective_timeout_s=300 \
    "run_dir=$TMP/$variant" "tracking.uri=sqlite:///$TMP/mlflow.db" "tracking.experiment=gpu-fsdp-$variant"
  "$PY" - "$TMP" "$variant" "$N" <<'PY'
import sys
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

tmp, variant, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
runs = client.search_runs([client.get_experiment_by_name(f"gpu-fsdp-{variant}").experiment_id])
assert len(runs) == 1, f"{len(runs)} MLflow runs, expected one"
run = runs[0]
assert run.info.status == "FINISHED", run.info.status
steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
assert steps == [0, 1], steps
state = torch.load(tmp / variant / "checkpoint" / "state.pt", weights_only=True)
assert state["next_step"] == 2 and state["model"], "checkpoint missing or empty"
assert state.get("world_size", 1) == n, (state.get("world_size"), n)
print(f"gpu_check_fsdp: {variant}: OK ({n} process(es), loss {run.data.metrics['train/loss']:.4g}, "
      f"{len(state['model'])} tensors in the checkpoint)")
PY
done
echo "gpu_check_fsdp: all OK"
