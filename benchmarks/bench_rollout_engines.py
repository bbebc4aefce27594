"""Rollout tokens/s of ``rollout=vllm`` against ``rollout=native`` at three model sizes, and the cost of one
weight push as a share of a step. Runs in .venv-vllm (``bash scripts/setup.sh --vllm``)::

    .venv-vllm/bin/python benchmarks/bench_rollout_engines.py                 # tiny, ~20M, ~100M
    .venv-vllm/bin/python benchmarks/bench_rollout_engines.py --sizes tiny --new-tokens 64

Sizes: ``tiny`` is the shipped arith base (models/arith); ``20m`` and ``100m`` are Qwen2-shaped models built
from a config (random weights, 32k vocabulary, float32) in a temp directory. Each size: 8 prompts x G = 8,
``--new-tokens`` new tokens (no stop token: every response runs to the end in both engines), temperature 1; the
two engines alternate ``--rounds`` times and the median wall and CPU tokens/s are printed with their ratio. The
step share of a push: push time / (rollout + update + push), the update being one forward + backward + AdamW step
over the sampled batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from experiments.vllm_engine import VllmEngine  # noqa: E402
from grpo.config import RolloutConfig  # noqa: E402
from grpo.engine import NATIVE  # noqa: E402
from grpo.rollout import response_logprobs  # noqa: E402

QWEN2 = {
    "20m": dict(hidden_size=320, num_hidden_layers=6, num_attention_heads=5, num_key_value_heads=1,
                intermediate_size=1280),
    "100m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=2048),
}  # fmt: skip


def build(size: str, out: Path) -> Path:
    """The model directory of a size (models/arith, or a random Qwen2 written to ``out``)."""
    if size == "tiny":
        return ROOT / "models" / "arith"
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=32000, max_position_embeddings=1024, tie_word_embeddings=True,
                         eos_token_id=31999, bos_token_id=31998, **QWEN2[size])  # fmt: skip
    model = Qwen2ForCausalLM(config)
    path = out / size
    model.save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="tiny,20m,100m")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child:  # one process per size: one vLLM engine per process
        import subprocess

        results = []
        for size in args.sizes.split(","):
            cmd = [sys.executable, __file__, "--child", "--sizes", size, "--new-tokens", str(args.new_tokens)]
            cmd += ["--rounds", str(args.rounds), "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
        table(results)
        return
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            path = build(size, Path(tmp))
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
            n_params = sum(p.numel() for p in model.parameters())
            vocab = model.config.vocab_size
            gen = torch.Generator().manual_seed(0)
            prompts = [torch.randint(3, vocab - 3, (12,), generator=gen).tolist() for _ in range(8)]
            batch = [p for p in prompts for _ in range(8)]
            new_tokens = min(
                args.new_tokens, model.config.max_position_embeddings - 12
            )  # tiny: 256 positions
            kw = {
                "max_new_tokens": new_tokens,
                "eos_id": [],
                "pad_id": 0,
            }  # no stop: every row runs to the end
            started = time.perf_counter()
            engine = VllmEngine(
                path, torch.float32, RolloutConfig(engine="vllm"), seed=0, max_model_len=12 + new_tokens
            )
            start_s = time.perf_counter() - started
            push_s = [engine.push_weights(model)["perf/weight_push_s"] for _ in range(3)]
            timings: dict[str, list[tuple[float, float]]] = {"native": [], "vllm": []}
            rollout = None
            for _ in range(args.rounds):
                for name, eng in (("native", NATIVE), ("vllm", engine)):
                    w0, c0 = time.perf_counter(), time.process_time()
                    roll = eng.generate(model, batch, temperature=1.0, generator=gen, behaviour=False, **kw)
                    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                    tokens = roll.n_tokens
                    timings[name].append((tokens / wall, tokens / cpu))
                    rollout = roll if name == "native" else rollout
            # the update a step would run on this batch: forward + backward + AdamW
            opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
            u0 = time.perf_counter()
            logp, _ = response_logprobs(
                model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask
            )
            (-logp.sum() / rollout.response_mask.sum()).backward()
            opt.step()
            update_s = time.perf_counter() - u0
            native_wall = statistics.median(t[0] for t in timings["native"])
            vllm_wall = statistics.median(t[0] for t in timings["vllm"])
            vllm_step_s = rollout.n_tokens / vllm_wall
            row = {
                "size": size,
                "params_m": round(n_params / 1e6, 1),
                "new_tokens": new_tokens,
                "native_tok_s": round(native_wall, 1),
                "vllm_tok_s": round(vllm_wall, 1),
                "vllm_over_native_wall": round(vllm_wall / native_wall, 2),
                "native_tok_cpu_s": round(statistics.median(t[1] for t in timings["native"]), 1),
                "vllm_tok_cpu_s": round(statistics.median(t[1] for t in timings["vllm"]), 1),
                "engine_start_s": round(start_s, 1),
                "push_s": round(statistics.median(push_s), 3),
                "update_s": round(update_s, 2),
                "push_share_of_vllm_step": round(
                    statistics.median(push_s) / (vllm_step_s + update_s + statistics.median(push_s)), 4
                ),
            }
            print(json.dumps(row), flush=True)


def table(results: list[dict]) -> None:
    print(
        "\n| size | params (M) | native tok/s | vLLM tok/s | vLLM/native | push (s) | push share of a step |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['size']} | {r['params_m']} | {r['native_tok_s']} | {r['vllm_tok_s']} | "
            f"{r['vllm_over_native_wall']}x | {r['push_s']} | {100 * r['push_share_of_vllm_step']:.2f}% |"
        )


if __name__ == "__main__":
    main()
