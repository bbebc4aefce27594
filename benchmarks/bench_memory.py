"""Peak memory: quadrl's log-prob + entropy pass against a naive full log_softmax, and quadrl's training step
against TRL's.

    .venv/bin/python benchmarks/bench_memory.py                # 128k vocabulary, 16 x 512 tokens, hidden 256
    .venv/bin/python benchmarks/bench_memory.py --no-step      # only the log-prob pass
    .venv/bin/python benchmarks/bench_memory.py --no-logprob   # only quadrl's step against TRL's
    .venv/bin/python benchmarks/bench_memory.py --vocab 151936 --rows 8 --tokens 1024

1. The log-prob + entropy pass, with gradient. A one-layer Llama (hidden 256, untied head) scores ``rows`` x
   ``tokens`` response tokens over a ``vocab``-sized vocabulary, and backward runs on the sum of the log-probs:
   - quadrl: ``grpo.rollout.response_logprobs(..., with_entropy=True)``: the head runs on at most ``--chunk``
     tokens at a time and is recomputed in backward;
   - naive: the model's full logits [rows, tokens, vocab] in float32, ``log_softmax``, the entropy from it,
     the sampled tokens' log-probs gathered.
   Each runs alone in a fresh process; the peak is the process's peak resident memory (VmHWM, reset with
   /proc/self/clear_refs after the set-up) minus its resident memory after the set-up (model, inputs). If the
   naive pass would not fit in the memory available now, it is measured at 1/8 and 1/4 of the tokens and the
   full-size peak extrapolated (it is linear in the token count: nothing in it is chunked), and the output says so.
2. The training step: quadrl's and TRL's peak RSS in ``bench_trl.py``'s step benchmark (each framework alone in a
   child process for a few steps; ``bench_trl.py --help``), unless ``--no-step`` (needs ``pip install trl``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

MB = 2**20


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024.0
    return float("inf")


def child(kind: str, vocab: int, rows: int, tokens: int, hidden: int, chunk: int) -> dict[str, float]:
    """Run one pass in this (fresh) process; peak resident memory above the set-up's, in MB."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    from grpo.rollout import response_logprobs

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=tokens + 8,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    prompt = torch.randint(0, vocab, (rows, 1))
    response = torch.randint(0, vocab, (rows, tokens))
    ones = torch.ones_like
    setup = _status_mb("VmRSS")
    try:  # reset the high-water mark to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    t0 = time.perf_counter()
    if kind == "quadrl":
        logp, entropy = response_logprobs(
            model, prompt, ones(prompt, dtype=torch.bool), response, ones(response, dtype=torch.bool),
            chunk_size=chunk, with_entropy=True,
        )  # fmt: skip
    else:
        logits = model(torch.cat([prompt, response], 1)).logits[:, :-1].float()
        logp_all = F.log_softmax(logits, dim=-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1).detach()
        logp = logp_all.gather(-1, response[..., None]).squeeze(-1)
    logp.sum().backward()
    seconds = time.perf_counter() - t0
    assert entropy is not None and torch.isfinite(entropy).all()
    peak = _status_mb("VmHWM")
    return {"setup_mb": setup, "peak_mb": peak, "delta_mb": peak - setup, "seconds": seconds, "reset": reset}


def run_child(kind: str, args: argparse.Namespace, tokens: int) -> dict[str, float]:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", kind, "--vocab", str(args.vocab),
        "--rows", str(args.rows), "--tokens", str(tokens), "--hidden", str(args.hidden), "--chunk", str(args.chunk),
        "--threads", str(args.threads),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("BENCH_MEMORY ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{kind} child failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].split(" ", 1)[1])


def logprob_pass(args: argparse.Namespace) -> None:
    n = args.rows * args.tokens
    print(
        f"log-prob + entropy pass with gradient: vocab {args.vocab}, {args.rows} x {args.tokens} = {n} tokens, "
        f"hidden {args.hidden}, quadrl chunk {args.chunk} tokens; {args.threads} thread(s)",
        flush=True,
    )
    quadrl = run_child("quadrl", args, args.tokens)
    print(f"  quadrl: peak {quadrl['delta_mb']:.0f} MB above set-up ({quadrl['seconds']:.1f} s)", flush=True)
    # naive: a [tokens, vocab] float32 tensor is n * vocab * 4 bytes; a few of them live at once
    small = [run_child("naive", args, max(1, args.tokens // k)) for k in (8, 4)]
    t_small = [max(1, args.tokens // k) for k in (8, 4)]
    slope = (small[1]["delta_mb"] - small[0]["delta_mb"]) / (t_small[1] - t_small[0])
    predicted = small[1]["delta_mb"] + slope * (args.tokens - t_small[1])
    if args.naive_full or predicted * 1.3 + 1024 < available_mb():
        naive = run_child("naive", args, args.tokens)
        how = "measured"
        print(f"  naive:  peak {naive['delta_mb']:.0f} MB above set-up ({naive['seconds']:.1f} s)")
        naive_mb = naive["delta_mb"]
        print(f"          (the line through 1/8 and 1/4 of the tokens predicted {predicted:.0f} MB)")
    else:
        how = "extrapolated"
        naive_mb = predicted
        print(
            f"  naive:  peak {predicted:.0f} MB above set-up, EXTRAPOLATED: would not fit in the "
            f"{available_mb():.0f} MB available now; measured {small[0]['delta_mb']:.0f} MB at {t_small[0]} and "
            f"{small[1]['delta_mb']:.0f} MB at {t_small[1]} tokens per row (linear in tokens); --naive-full "
            "measures it anyway"
        )
    print(f"  quadrl / naive peak memory: {quadrl['delta_mb'] / naive_mb:.3f}  (goal <= 0.5; naive {how})\n")


def step_rss(args: argparse.Namespace) -> None:
    import bench_trl

    print(
        f"training step (bench_trl.py's configuration, model '{args.model}'), each framework alone, 3 steps:"
    )
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        model_dir = bench_trl.prepare_model(args.model, Path(tmp))
        out = {}
        for fw in ("quadrl", "trl"):
            cmd = [
                sys.executable, str(Path(bench_trl.__file__).resolve()), "--child", fw, "--model-dir", str(model_dir),
                "--memory-steps", "3", "--threads", str(args.threads),
            ]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("BENCH_MEMORY ")]
            if proc.returncode or not lines:
                print(f"  {fw} child failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
                return
            out[fw] = json.loads(lines[-1].split(" ", 1)[1])
    q, t = out["quadrl"], out["trl"]
    for label, key in (
        ("after imports", "after_imports"),
        ("after set-up", "after_setup"),
        ("after steps", "after_steps"),
    ):
        print(
            f"  peak RSS {label:<14} quadrl {q[key]:7.0f} MB   TRL {t[key]:7.0f} MB   ratio {q[key] / t[key]:.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=128256, help="vocabulary size (Llama 3's 128,256)")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--tokens", type=int, default=512, help="response tokens per row")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--chunk", type=int, default=4096, help="quadrl's train.logits_chunk")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--naive-full", action="store_true", help="measure the naive pass at full size regardless")
    p.add_argument(
        "--step", action=argparse.BooleanOptionalAction, default=True, help="quadrl vs TRL step RSS"
    )
    p.add_argument("--logprob", action=argparse.BooleanOptionalAction, default=True, help="the log-prob pass")
    p.add_argument("--model", default="tiny", help="bench_trl.py's --model for the step comparison")
    p.add_argument("--child", choices=["quadrl", "naive"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        result = child(args.child, args.vocab, args.rows, args.tokens, args.hidden, args.chunk)
        print("BENCH_MEMORY " + json.dumps(result))
        return
    if args.logprob:
        logprob_pass(args)
    if args.step:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        step_rss(args)


if __name__ == "__main__":
    main()
