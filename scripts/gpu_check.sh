#!/usr/bin/env bash
# The project's GPU check: one short script (under 8 minutes on one H200) that runs the CUDA paths CI cannot.
#   1. A Qwen2.5-1.5B-shaped model built from a config (28 layers, hidden 1536, MLP 8960, 12 heads / 2 KV heads;
#      random weights, bf16, nothing downloaded; the built-in char tokenizer, so the vocabulary is its ~40 ids
#      instead of 151,936: the transformer is 1.5B-shaped, the embedding is not).
#   2. 3 GRPO steps on arith with intervention=quadrant and per-quadrant gradient diagnostics every step, through
#      each rollout engine this machine has (rollout=vllm where vLLM imports, then rollout=native). Prints rollout
#      tokens/s, step/rollout/update/push times, the rollout_corr/* mismatch metrics and each run's MLflow status.
#   3. Peak GPU memory (nvidia-smi, sampled every 0.5 s, whole device).
#   4. scripts/gpu_check_fsdp.sh: torchrun on every GPU (NCCL), full fine-tuning and LoRA, checkpoints checked.
# Exits non-zero if any run fails. vLLM missing is reported, not an error: a machine without it checks the rest.
#   QUADRL_CONSTRAINTS= bash scripts/setup.sh --vllm && bash scripts/gpu_check.sh    # a CUDA machine with a network
#   PYTHON=python3 bash scripts/gpu_check.sh                                         # an image with torch already
#   PYTHON=.venv/bin/python SHAPE=small DEVICE=cpu NPROC=2 bash scripts/gpu_check.sh # this script itself, on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  PYTHON=.venv/bin/python
  [ -x .venv-vllm/bin/python ] && PYTHON=.venv-vllm/bin/python
fi
export PYTHON SHAPE=${SHAPE:-1.5b} DEVICE=${DEVICE:-cuda}
TMP=$(mktemp -d)
SMI=
trap '[ -n "$SMI" ] && kill $SMI 2>/dev/null; rm -rf "$TMP"' EXIT

"$PYTHON" - <<'PY'
import platform

import torch
import transformers

print(f"gpu_check: python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}")
if torch.cuda.is_available():
    print(f"gpu_check: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
try:
    import vllm

    print(f"gpu_check: vllm {vllm.__version__}")
except Exception as exc:  # noqa: BLE001 - any failure to import means: no vLLM here
    print(f"gpu_check: vllm not importable here ({type(exc).__name__}: {exc}); rollout=vllm is skipped")
PY
ENGINES=native
"$PYTHON" -c "import vllm" 2>/dev/null && ENGINES="vllm native"

"$PYTHON" - "$TMP/model" <<'PY'
import os
import sys
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from experiments.tasks.tokenizer import build_char_tokenizer

shape = {"1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                      num_key_value_heads=2),
         "small": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2)}[os.environ["SHAPE"]]  # fmt: skip
tok = build_char_tokenizer()
cfg = Qwen2Config(vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=True,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **shape)  # fmt: skip
torch.manual_seed(0)
start = time.perf_counter()
device = "cuda" if torch.cuda.is_available() and os.environ["DEVICE"] == "cuda" else "cpu"
with torch.device(device):  # random init on the GPU: seconds instead of a minute on the CPU
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
model.save_pretrained(sys.argv[1])
tok.save_pretrained(sys.argv[1])
n = sum(p.numel() for p in model.parameters())
print(f"gpu_check: Qwen2-shaped model ({os.environ['SHAPE']}), {n / 1e9:.3f}B parameters, built and saved in "
      f"{time.perf_counter() - start:.1f} s")
PY

if command -v nvidia-smi >/dev/null; then
  (while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; sleep 0.5; done \
    > "$TMP/smi.txt") &
  SMI=$!
fi
for engine in $ENGINES; do
  start=$(date +%s)
  "$PYTHON" -m experiments.train model=local "model.path=$TMP/model" "model.device=$DEVICE" model.dtype=bfloat16 \
    task=arith rollout=$engine intervention=quadrant diagnostics.every=1 train.steps=3 algo.prompts_per_step=8 \
    algo.group_size=8 eval.every=0 eval.n_prompts=16 eval.n_samples=0 train.progress=false \
    "run_dir=$TMP/run-$engine" "tracking.uri=sqlite:///$TMP/mlflow.db" "tracking.experiment=gpu-$engine" \
    > "$TMP/train-$engine.log" 2>&1 || { tail -40 "$TMP/train-$engine.log"; echo "gpu_check: $engine FAILED"; exit 1; }
  echo "gpu_check: rollout=$engine run took $(($(date +%s) - start)) s wall, startup included"
done
[ -n "$SMI" ] && kill $SMI && SMI=

"$PYTHON" - "$TMP" $ENGINES <<'PY'
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

tmp = Path(sys.argv[1])
client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
for engine in sys.argv[2:]:
    (run,) = client.search_runs([client.get_experiment_by_name(f"gpu-{engine}").experiment_id])
    m = run.data.metrics
    keys = ["perf/gen_tokens_per_s", "perf/step_time_s", "perf/rollout_time_s", "perf/update_time_s",
            "perf/weight_push_s", "train/reward_mean", "train/loss", "quadrant/grad_sum_residual"]
    keys += sorted(k for k in m if k.startswith("rollout_corr/"))
    assert run.info.status == "FINISHED", (engine, run.info.status)
    print(f"gpu_check [{engine}] status={run.info.status} (last step) "
          + " ".join(f"{k}={m[k]:.4g}" for k in keys if k in m))
    steps = client.get_metric_history(run.info.run_id, "perf/step_time_s")
    print(f"gpu_check [{engine}] step times: " + ", ".join(f"{s.value:.2f} s" for s in sorted(steps, key=lambda s: s.step)))
smi = tmp / "smi.txt"
if smi.exists():
    peak = max(int(x) for x in smi.read_text().split() if x.strip().isdigit())
    print(f"gpu_check: peak GPU memory used (nvidia-smi, whole device) {peak} MiB")
PY

bash scripts/gpu_check_fsdp.sh
echo "gpu_check: all OK"
