#!/usr/bin/env bash
# rollout=vllm on a CUDA machine, under 8 minutes: a Qwen2.5-1.5B-shaped model built from a config (28 layers,
# hidden 1536, MLP 8960, 12 heads / 2 KV heads; random weights, bf16, nothing downloaded; the built-in char
# tokenizer, so the vocabulary is its ~40 ids instead of 151,936: the transformer is 1.5B-shaped, the embedding
# is not), 3 GRPO steps on arith with rollout=vllm, intervention=quadrant and gradient diagnostics every step, then
# the same 3 steps with rollout=native. Prints rollout tokens/s of both, peak GPU memory (nvidia-smi, sampled),
# the rollout_corr/* mismatch metrics and the step time. Needs the vLLM environment:
#   QUADRL_CONSTRAINTS= bash scripts/setup.sh --vllm && bash scripts/gpu_check.sh
# Not yet run on a GPU (see README, "Rollouts through vLLM").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv-vllm/bin/python}
TMP=$(mktemp -d)
trap 'kill $SMI 2>/dev/null || true; rm -rf "$TMP"' EXIT
"$PY" - "$TMP/model" <<'PY'
import sys

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from experiments.tasks.tokenizer import build_char_tokenizer

tok = build_char_tokenizer()
cfg = Qwen2Config(vocab_size=len(tok), hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=4096,
                  tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
torch.manual_seed(0)
model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
model.save_pretrained(sys.argv[1])
tok.save_pretrained(sys.argv[1])
print(f"gpu_check: Qwen2-shaped model, {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters")
PY
(while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; sleep 0.5; done \
  > "$TMP/smi.txt") &
SMI=$!
for engine in vllm native; do
  "$PY" -m experiments.train model=local "model.path=$TMP/model" model.dtype=bfloat16 task=arith \
    rollout=$engine intervention=quadrant diagnostics.every=1 train.steps=3 algo.prompts_per_step=8 \
    algo.group_size=8 eval.every=0 eval.n_prompts=16 eval.n_samples=0 train.progress=false \
    "run_dir=$TMP/run-$engine" "tracking.uri=sqlite:///$TMP/mlflow.db" "tracking.experiment=gpu-$engine"
done
kill $SMI
"$PY" - "$TMP" <<'PY'
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

tmp = Path(sys.argv[1])
client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
for engine in ("vllm", "native"):
    (run,) = client.search_runs([client.get_experiment_by_name(f"gpu-{engine}").experiment_id])
    m = run.data.metrics
    keys = ["perf/gen_tokens_per_s", "perf/step_time_s", "perf/rollout_time_s", "perf/update_time_s",
            "perf/weight_push_s"] + sorted(k for k in m if k.startswith("rollout_corr/"))
    print(f"gpu_check [{engine}] status={run.info.status} " + " ".join(f"{k}={m[k]:.4g}" for k in keys if k in m))
peak = max(int(x) for x in (tmp / "smi.txt").read_text().split() if x.strip().isdigit())
print(f"gpu_check: peak GPU memory used (nvidia-smi, whole device) {peak} MiB")
PY
