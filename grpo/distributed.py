"""One run on many processes: every collective operation quadrl uses, in one place.

A single process never enters this module's collectives: :class:`World` of size 1 is what every run gets unless
it was started by ``torchrun`` (or by SLURM through ``experiments.train``, which translates SLURM's environment
into torchrun's), and the trainer then takes exactly its single-process code path.

With W > 1 processes (the design, and why):

- **Sampling** -- each rank samples and scores its own whole groups: the step's ``prompts_per_step`` prompts are
  the same list on every rank (one data order), rank r takes the r-th contiguous block of them. The sampler runs on
  a plain, unsharded copy of the policy (:class:`SamplerCopy`), refreshed from the sharded weights before every
  rollout: generation stops when *its own* rows end, so ranks run different numbers of decode steps, which a
  sharded model (one all-gather per layer per forward) cannot do without hanging.
- **Facts** -- each rank computes the model-dependent per-token facts (log-probs, entropies, extra facts) of its
  rows, padded to the global response width; :func:`gather_facts` all-gathers them so that every rank holds the
  global :class:`TokenFacts` in the order one process would have them (rank 0's rows first).
- **Credit** -- the intervention runs on the global facts, identically on every rank (the same intervention
  generator state everywhere), so every batch statistic (entropy quantiles, HAPO's mean and std, KL-Cov's top-k,
  Clip-Cov's covariances and random picks, GTPO's sums, the quadrant diagnostics, the cancellation metrics) is
  the global batch's by construction; no method knows the world size.
- **Loss** -- each rank backpropagates only its own rows, each token weighted by its coefficient c_it of the
  *global* batch (:func:`grpo.loss.token_coefficients`: GRPO's 1/(B sum_t m), DAPO's 1/sum m, Dr. GRPO's
  1/(B L)), so the ranks' losses sum to the one-process loss. FSDP2 averages gradients over ranks; the loss is
  multiplied by W before backward so that the reduced gradient is the sum, i.e. the one-process gradient.
- **Failure** -- the process group has a timeout (``train.collective_timeout_s``); a rank that dies closes its
  gloo connections, so its peers' next collective raises at once rather than at the timeout.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from grpo.checks import ConfigError
from grpo.config import QuadrlConfig
from grpo.credit import TokenFacts
from grpo.rollout import Rollout


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among ``size`` processes (1: a single process, no collectives)."""

    rank: int = 0
    size: int = 1

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def env_world() -> World:
    """The world torchrun's environment describes (``RANK``, ``WORLD_SIZE``); a single process without it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(int(os.environ.get("RANK", "0")), size) if size > 1 else SINGLE


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA tensors, gloo for CPU ones: chosen from the model's device, never configured."""
    return "nccl" if device.type == "cuda" else "gloo"


def init(device: torch.device, timeout_s: float) -> World:
    """Join the process group torchrun's environment describes (no-op for a single process). On CUDA each rank
    takes the GPU of its ``LOCAL_RANK``."""
    world = env_world()
    if not world.active or dist.is_initialized():
        return world
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend_for(device), timeout=timedelta(seconds=timeout_s))
    return world


def local_device(device: torch.device) -> torch.device:
    """``cuda`` becomes this rank's ``cuda:LOCAL_RANK`` in a distributed run (one GPU per process)."""
    if device.type == "cuda" and device.index is None and env_world().active:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ model
def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a Hugging Face model (its ``_no_split_modules`` classes), LoRA-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in base.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"{type(base).__name__} names no decoder layer class (_no_split_modules): cannot shard"
        )
    return layers


def shard(model: torch.nn.Module, device: torch.device) -> None:
    """FSDP2: ``fully_shard`` each decoder layer, then the root (embeddings, final norm, head), in place."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


class SamplerCopy:
    """A plain (unsharded) copy of the policy that generation runs on, refreshed from the sharded weights.

    Made before sharding, so its parameters line up one for one with the sharded model's. Frozen parameters never
    change, so a refresh gathers only the trainable ones (a LoRA adapter, or everything in full fine-tuning).
    It costs one full copy of the weights per process: less than the gradients and the optimiser state that
    sharding saves (12 bytes a parameter with AdamW in float32 against 4)."""

    def __init__(self, model: torch.nn.Module):
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)

    @torch.no_grad()
    def refresh(self, sharded: torch.nn.Module) -> None:
        pairs = zip(sharded.named_parameters(), self.model.named_parameters(), strict=True)
        for (name, source), (copy_name, target) in pairs:
            if name != copy_name:  # a mismatch would load weights into the wrong tensor silently
                raise RuntimeError(f"sampler copy out of step with the model: {name} vs {copy_name}")
            if source.requires_grad:
                target.copy_(source.full_tensor() if hasattr(source, "full_tensor") else source)


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The gathered (unsharded) trainable weights and optimiser state, the same on every rank: a checkpoint any
    world size can load (torch.distributed.checkpoint's state-dict helpers do the gathering)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    weights = {k: v for k, v in get_model_state_dict(model, options=options).items() if k in trainable}
    return weights, get_optimizer_state_dict(model, optimizer, options=options)


def load_full_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optim: dict
) -> None:
    """Load what :func:`full_state` gathered (possibly at another world size) into the sharded model."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)  # frozen weights come from the base model
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optim, options=StateDictOptions(full_state_dict=True))


def named_optimizer_state(model: torch.nn.Module, state: dict) -> dict:
    """A one-process ``optimizer.state_dict()`` (parameters numbered in the order of the model's trainable
    parameters) in the gathered form, keyed by parameter name, that :func:`load_full_state` takes."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {names[i]: v for i, v in state["state"].items()}, "param_groups": groups}


def load_named_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a gathered, name-keyed optimiser state (written by several processes) into one process's optimiser."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


# ------------------------------------------------------------------------------------------------ data
def my_share(items: list, world: World) -> list:
    """Rank r's contiguous block of ``items`` (len divisible by the world size: checked with the config)."""
    n = len(items) // world.size
    return items[world.rank * n : (world.rank + 1) * n]


def comm_device() -> torch.device:
    """Where a collective's tensors must live: this rank's GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def max_int(value: int) -> int:
    """The largest ``value`` over ranks."""
    t = torch.tensor([value], dtype=torch.long, device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def pad_width(x: Tensor, width: int, value: float | int | bool) -> Tensor:
    """Right-pad the time dimension (dim 1) of a [b, T, ...] tensor to ``width``."""
    extra = width - x.shape[1]
    if extra <= 0:
        return x
    filler = torch.full((x.shape[0], extra, *x.shape[2:]), value, dtype=x.dtype, device=x.device)
    return torch.cat([x, filler], dim=1)


def pad_rollout(r: Rollout, width: int, pad_id: int) -> Rollout:
    """The rollout with its responses right-padded to ``width`` tokens (masked): every rank's rows then share the
    global response width, as one process's batch would."""
    return replace(
        r,
        response_ids=pad_width(r.response_ids, width, pad_id),
        response_mask=pad_width(r.response_mask, width, False),
        logprobs=pad_width(r.logprobs, width, 0.0),
        entropy=pad_width(r.entropy, width, 0.0),
    )


def gather_rows(x: Tensor) -> Tensor:
    """Concatenate every rank's rows (dim 0) in rank order; all ranks hold the same shape (checked)."""
    device = x.device
    x = x.to(comm_device())  # e.g. CPU rewards under NCCL
    flag = x.dtype == torch.bool
    work = x.to(torch.uint8) if flag else x.contiguous()  # gloo has no bool all-gather
    parts = [torch.empty_like(work) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, work)
    out = torch.cat(parts)
    return (out.bool() if flag else out).to(device)


def gather_facts(local: TokenFacts, world: World) -> TokenFacts:
    """The global batch's facts from every rank's (rank order = one process's row order). ``group_ids`` are
    shifted by each rank's group offset; every tensor field and every extra fact is gathered."""
    n_groups = int(local.group_ids.max()) + 1 if len(local.group_ids) else 0
    offsets = gather_rows(torch.tensor([n_groups], dtype=torch.long))
    shift = int(offsets[: world.rank].sum())
    values: dict[str, Any] = {}
    for f in fields(local):
        value = getattr(local, f.name)
        if f.name == "group_ids":
            value = gather_rows(value + shift)
        elif isinstance(value, Tensor):
            value = gather_rows(value)
        elif f.name == "extra":
            value = {key: gather_rows(v) for key, v in value.items()}
        values[f.name] = value
    return TokenFacts(**values)


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sums over ranks (float64: a mean built from them does not depend on the world size's
    float32 rounding)."""
    t = torch.tensor(values, dtype=torch.float64, device=comm_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def weighted_mean(pairs: list[tuple[float, float]]) -> list[float]:
    """Global means of per-rank means: ``pairs`` = [(mean, weight)], the weight being what the mean was over."""
    sums = all_sum([m * w for m, w in pairs] + [w for _, w in pairs])
    k = len(pairs)
    return [sums[i] / sums[k + i] if sums[k + i] > 0 else 0.0 for i in range(k)]


def sampling_seed(seed: int, step: int, rank: int) -> int:
    """The seed of rank ``rank``'s sampling generator at ``step`` in a distributed run: a pure function, so a
    run resumes at any step on any world size without saved sampler state (one process keeps its single saved
    stream, unchanged)."""
    return (seed * 1_000_003 + step) * 1009 + rank


def check_config(cfg: QuadrlConfig, world: World) -> None:
    """Refuse, before any model is loaded, what a distributed run cannot do (yet) or cannot split evenly."""
    if not world.active:
        return
    a, w = cfg.algo, world.size
    refusals = [
        (
            a.prompts_per_step % w != 0,
            f"algo.prompts_per_step={a.prompts_per_step} is not divisible by the "
            f"world size {w}: each rank samples an equal share of whole groups",
        ),
        (
            a.minibatches != 1,
            f"algo.minibatches={a.minibatches}: only 1 is supported with several processes "
            "(a minibatch of whole groups could leave a rank no rows, and FSDP needs every rank in every forward)",
        ),
        (
            cfg.diagnostics.every > 0,
            "diagnostics.every > 0 (per-quadrant gradients) is not supported with "
            "several processes yet; set diagnostics.every=0",
        ),
        (
            cfg.probe.every > 0,
            "probe.every > 0 is not supported with several processes yet; set probe.every=0",
        ),
        (cfg.eval.n_prompts < w, f"eval.n_prompts={cfg.eval.n_prompts} is smaller than the world size {w}"),
    ]
    for refused, message in refusals:
        if refused:
            raise ConfigError(message)


def barrier() -> None:
    dist.barrier()


class RootForward(torch.nn.Module):
    """The sharded model behind a plain ``forward``, for the grad-carrying pass of the update.

    grpo/rollout.py runs the backbone and the output head as separate calls (the head in chunks) when a model
    offers ``get_decoder``; on an FSDP2 model that would skip the root's hooks (its parameters, the tied
    embedding and head among them, would stay sharded) and make the number of all-gathers depend on this rank's
    token count. Offering no ``get_decoder``, this wrapper makes every rank run one root forward with full logits.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.inner = model

    def forward(self, **inputs: Any) -> Any:
        return self.inner(**inputs)
