"""Shard-parallel training over torch.distributed (launched by torchrun; gloo on CPU, NCCL on GPU).

Rank r trains the shards s with s % world_size == r. Every shard's training is a deterministic
function of the root seed and its data, so the checkpoints (and their hashes) do not depend on the
number of processes. Without torchrun's environment the same code runs as one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized: bool = False

    def owns(self, shard: int) -> bool:
        return shard % self.world_size == self.rank

    def all_gather(self, obj) -> list:
        """Every rank's `obj` (picklable), in rank order."""
        if not self.initialized:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.initialized:
            dist.barrier()


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR...).

    device: "auto" (CUDA with NCCL when available, else CPU with gloo), "cpu" or "cuda".
    One process (no WORLD_SIZE) gives a context that needs no process group.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
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
        return DistContext(device=dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev, initialized=True)


def shutdown(ctx: DistContext) -> None:
    if ctx.initialized and dist.is_initialized():
        dist.destroy_process_group()
