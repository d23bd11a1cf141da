"""The process context of a torchrun launch: rank, world size, device, the process group.

torchrun (``python -m torch.distributed.run``) sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; `init_distributed` joins the group they describe (gloo on CPU, NCCL on CUDA). Without
that environment the same code runs as one process and no process group is created.

`current()` is the context every unlearnx loop consults: the one `init_distributed` set, or (under
torchrun, on first use) one it creates. One process gives `DistContext()`: world_size 1, nothing
initialized, and every loop takes its unchanged single-process path.

Process-count invariance rests on two deterministic functions of the global batch, not of the
rank: `split_sizes` (how many of a batch's rows each rank takes, contiguous, in rank order) and
`rank_seed` (per-rank RNG streams derived from one seed, for randomness that is meant to differ
between ranks). Randomness that must NOT depend on the rank (RL's random labels) is drawn from
`stream_seed(seed, epoch, batch)` for the whole global batch, and each rank keeps its rows.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "shutdown", "current", "set_current", "split_sizes", "rank_seed",
           "stream_seed"]


@dataclass(frozen=True)
class DistContext:
    """Rank, world size and device of this process.

    micro_batch_size: rows of a rank's share of a global batch run per forward/backward (gradient
    accumulation); 0 runs the whole share at once. Any value gives the same step (see
    docs/distributed.md); it only trades memory for time.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized: bool = False
    micro_batch_size: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one process that writes files."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """True when loops must take the sharded path (several processes or micro-batches)."""
        return self.world_size > 1 or self.micro_batch_size > 0

    def owns(self, shard: int) -> bool:
        """Round-robin ownership of work item `shard` (SISA shards, evaluation batches)."""
        return shard % self.world_size == self.rank

    def all_gather(self, obj) -> list:
        """Every rank's `obj` (picklable), in rank order."""
        if not self.initialized:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` (picklable) on every rank: one decision (a cache hit, a record) for all."""
        if not self.initialized:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.initialized:
            dist.barrier()


def split_sizes(n: int, parts: int) -> list[int]:
    """Rows per part when n rows are cut into `parts` contiguous pieces: the first n % parts get one more.

    A pure function of (n, parts): every rank computes the same cut without communicating.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: must be an int >= 0, got {n!r}")
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"parts: must be an int >= 1, got {parts!r}")
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def rank_seed(seed: int, rank: int) -> int:
    """A 63-bit seed for `rank`, derived from one root seed by SHA-256 (independent streams per rank)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: must be an int, got {seed!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank: must be an int >= 0, got {rank!r}")
    digest = hashlib.sha256(f"unlearnx:rank-seed:{seed}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def stream_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the stream named by `keys` (e.g. epoch, global batch index), derived from one
    root seed by SHA-256: the same on every rank, independent across keys."""
    for name, value in (("seed", seed), *((f"keys[{i}]", k) for i, k in enumerate(keys))):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}: must be an int, got {value!r}")
    digest = hashlib.sha256(":".join(["unlearnx:stream-seed", str(seed), *map(str, keys)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


_CURRENT: DistContext | None = None


def _env_micro_batch_size() -> int:
    raw = os.environ.get("UNLEARNX_MICRO_BATCH_SIZE", "0")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"UNLEARNX_MICRO_BATCH_SIZE: must be an int >= 0, got {raw!r}") from None


def init_distributed(device: str = "auto", *, micro_batch_size: int | None = None) -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR...).

    device: "auto" (CUDA with NCCL when available, else CPU with gloo), "cpu" or "cuda".
    micro_batch_size: see `DistContext`; default: $UNLEARNX_MICRO_BATCH_SIZE or 0.
    One process (no WORLD_SIZE) gives a context that needs no process group. The context
    becomes `current()`.
    """
    global _CURRENT
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if micro_batch_size is None:
        micro_batch_size = _env_micro_batch_size()
    if isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int) or micro_batch_size < 0:
        raise ValueError(f"micro_batch_size: must be an int >= 0, got {micro_batch_size!r}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch.cuda.is_available() is False")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
        # cuBLAS needs a fixed workspace for deterministic results.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if world == 1:
        ctx = DistContext(device=dev, micro_batch_size=micro_batch_size)
    else:
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
        ctx = DistContext(rank=rank, world_size=world, local_rank=local, device=dev, initialized=True,
                          micro_batch_size=micro_batch_size)
    _CURRENT = ctx
    return ctx


def current() -> DistContext:
    """The active context: the one set last, else (under torchrun) a new one joined on CPU/gloo or
    CUDA/NCCL, else the single-process context."""
    if _CURRENT is not None:
        return _CURRENT
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return init_distributed("auto")
    micro = _env_micro_batch_size()
    if micro < 0:
        raise ValueError(f"UNLEARNX_MICRO_BATCH_SIZE: must be an int >= 0, got {micro}")
    return DistContext(micro_batch_size=micro)


def set_current(ctx: DistContext | None, **changes) -> DistContext | None:
    """Make `ctx` (with `changes`, e.g. micro_batch_size=4) the active context; None clears it.

    Returns the previous active context (or None), so a caller can restore it.
    """
    global _CURRENT
    if ctx is not None and not isinstance(ctx, DistContext):
        raise TypeError(f"ctx: expected a DistContext or None, got {type(ctx).__name__}")
    previous = _CURRENT
    _CURRENT = replace(ctx, **changes) if ctx is not None and changes else ctx
    return previous


def shutdown(ctx: DistContext | None = None) -> None:
    """Leave the process group (if any) and clear the active context."""
    global _CURRENT
    ctx = ctx or _CURRENT
    if ctx is not None and ctx.initialized and dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = None
