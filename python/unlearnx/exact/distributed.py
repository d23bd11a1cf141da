"""Shard-parallel training over torch.distributed (launched by torchrun; gloo on CPU, NCCL on GPU).

Rank r trains the shards s with s % world_size == r (`DistContext.owns`). Every shard's training
is a deterministic function of the root seed and its data, so the checkpoints (and their hashes)
do not depend on the number of processes. Without torchrun's environment the same code runs as
one process. The context itself lives in unlearnx.distributed (shared with the gradient loops).
"""
from __future__ import annotations

from unlearnx.distributed.context import DistContext, init_distributed, shutdown

__all__ = ["DistContext", "init_distributed", "shutdown"]
