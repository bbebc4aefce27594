"""Two processes (FSDP2, gloo) against one: the update's scaling efficiency and the peak memory per process.

    .venv/bin/python benchmarks/bench_distributed.py                    # both measurements, ~3-5 min
    .venv/bin/python benchmarks/bench_distributed.py --only scaling     # or --only memory

**Scaling.** The same global batch of GRPO rows (``--rows`` x ``--tokens``) through a Llama of ~20M parameters
(``--hidden 512 --layers 6``), forward + backward + AdamW, timed as the median of ``--steps`` steps after a
warm-up: once in one process on all rows, once in two torchrun processes on half the rows each, the model
sharded with ``grpo.distributed.shard`` and the loss through ``RootForward`` (the trainer's update path). Each
process uses one thread (2 cores: 1 x 2 against 2 x 1). Efficiency = t_1 / (2 * t_2): 1.0 is a perfect 2x.

**Memory.** Peak RSS of each process (``ru_maxrss``) above its RSS before the model was built, after two AdamW
steps, for a bigger model (``--mem-hidden 1024 --mem-layers 8``, ~100M parameters, where weights, gradients and
AdamW's two moments are 16 bytes a parameter): one process without sharding against each of two FSDP2
processes that also hold quadrl's unsharded sampler copy (``SamplerCopy``, 4 bytes a parameter), as a training
run does.

Each contender is its own process tree (a fresh interpreter), run one after the other; on a shared machine
other sessions' load falls on them unevenly, so the script prints the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build(hidden: int, layers: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.6875),
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(args: argparse.Namespace) -> None:
    """One contender's process: builds the model, shards it if under torchrun, times the steps."""
    import torch

    from grpo import distributed
    from grpo.rollout import response_logprobs

    torch.set_num_threads(1)
    world = distributed.init(torch.device("cpu"), timeout_s=600)
    hidden, layers = (
        (args.mem_hidden, args.mem_layers) if args.mode == "memory" else (args.hidden, args.layers)
    )
    before = rss_mb()
    model = build(hidden, layers)
    n_params = sum(p.numel() for p in model.parameters())
    forward = model
    if world.active:
        copy = distributed.SamplerCopy(model) if args.mode == "memory" else None
        distributed.shard(model, torch.device("cpu"))
        forward = distributed.RootForward(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    rows = args.rows // world.size
    gen = torch.Generator().manual_seed(world.rank)
    prompt = torch.randint(1, 64, (rows, 16), generator=gen)
    response = torch.randint(1, 64, (rows, args.tokens), generator=gen)
    ones = torch.ones_like
    times = []
    n_steps = args.steps if args.mode == "scaling" else 2
    for step in range(args.warmup + n_steps):
        started = time.perf_counter()
        logp, _ = response_logprobs(forward, prompt, ones(prompt).bool(), response, ones(response).bool())
        loss = -logp.mean() * (world.size if world.active else 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record = {
        "world": world.size,
        "rank": world.rank,
        "params": n_params,
        "median_step_s": statistics.median(times),
        "peak_rss_mb": peak,
        "peak_above_start_mb": peak - before,
    }
    if world.active:
        records = distributed.gather_objects(record)
        del copy
    else:
        records = [record]
    if world.is_main:
        Path(args.out).write_text(json.dumps(records))
    distributed.shutdown()


def contender(args: argparse.Namespace, mode: str, nproc: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        launcher = [sys.executable]
        if nproc > 1:
            launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        flags = [
            f"--{k.replace('_', '-')}={v}"
            for k, v in vars(args).items()
            if k not in ("only", "out", "mode", "worker")
        ]
        cmd = [*launcher, __file__, "--worker", f"--mode={mode}", f"--out={out}", *flags]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"contender {mode} x{nproc} failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="scaling", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["scaling", "memory"], default=None)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--mem-hidden", type=int, default=1024)
    parser.add_argument("--mem-layers", type=int, default=8)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"load average before: {os.getloadavg()}")
    if args.only in (None, "scaling"):
        one = contender(args, "scaling", 1)[0]
        two = contender(args, "scaling", 2)
        t1, t2 = one["median_step_s"], max(r["median_step_s"] for r in two)
        print(
            f"scaling: {one['params'] / 1e6:.1f}M params, {args.rows} x {args.tokens} response tokens a step: "
            f"1 process {t1:.2f} s/step, 2 processes {t2:.2f} s/step -> speed-up {t1 / t2:.2f}x, "
            f"efficiency {t1 / (2 * t2):.2f}"
        )
    if args.only in (None, "memory"):
        one = contender(args, "memory", 1)[0]
        two = contender(args, "memory", 2)
        worst = max(r["peak_above_start_mb"] for r in two)
        print(
            f"memory: {one['params'] / 1e6:.1f}M params, peak RSS above start per process: 1 process (no "
            f"sharding) {one['peak_above_start_mb']:.0f} MB, 2 FSDP2 processes with sampler copy "
            f"{worst:.0f} MB (ratio {worst / one['peak_above_start_mb']:.2f})"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
