"""Cross-rank reductions: gradients, statistic dicts (Fisher, saliency, router counts), scalars, and
the gather of per-item values back into the global order.

Every function is collective when the context is initialized (all ranks must call it, in the same
order, with the same keys/shapes) and the identity in one process.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
import torch.distributed as dist

from unlearnx.distributed.context import DistContext

__all__ = ["all_reduce_tensors_", "all_reduce_gradients_", "all_reduce_stats_", "all_reduce_floats", "owned",
           "owned_items", "owned_count", "gather_ordered", "broadcast_parameters_"]


def all_reduce_tensors_(tensors: list[torch.Tensor], ctx: DistContext) -> list[torch.Tensor]:
    """Sum each tensor over ranks, in place; one collective per (dtype, device) group (coalesced).

    tensors: same shapes/dtypes/order on every rank. Returns `tensors`.
    """
    if not isinstance(tensors, list) or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError("tensors: expected a list of tensors")
    if not ctx.initialized or not tensors:
        return tensors
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
    return tensors


def all_reduce_gradients_(params: list[torch.nn.Parameter], ctx: DistContext) -> None:
    """Sum `.grad` over ranks. A parameter that no rank gave a gradient keeps `.grad = None` (as in
    one process, where optimizers skip it); one that some rank did gets zeros on the others first."""
    if not ctx.initialized:
        return
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)
    dist.all_reduce(present, op=dist.ReduceOp.SUM)
    grads = []
    for p, n in zip(params, present.tolist()):
        if n == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    all_reduce_tensors_(grads, ctx)


def all_reduce_stats_(stats: Mapping[str, torch.Tensor], ctx: DistContext) -> Mapping[str, torch.Tensor]:
    """Sum a {name: tensor} dict of per-rank partial sums (Fisher/saliency accumulators, router
    counts) over ranks, in place, in sorted-key order so that ranks agree on the layout."""
    if not isinstance(stats, Mapping):
        raise TypeError(f"stats: expected a mapping of name -> tensor, got {type(stats).__name__}")
    all_reduce_tensors_([stats[k] for k in sorted(stats)], ctx)
    return stats


def all_reduce_floats(values: Iterable[float], ctx: DistContext) -> list[float]:
    """Sum a list of Python floats over ranks (in float64); the same list on every rank."""
    values = [float(v) for v in values]
    if not ctx.initialized or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def owned(items: Iterable, ctx: DistContext) -> Iterator[tuple[int, object]]:
    """(k, item) for the items k of `items` this rank owns (k % world_size == rank).

    Every rank walks the whole iterable (a seeded DataLoader gives every rank the same sequence),
    so the split depends only on the item index, never on timing.
    """
    for k, item in enumerate(items):
        if ctx.owns(k):
            yield k, item


def owned_items(items: Iterable, ctx: DistContext) -> Iterable:
    """The items of `items` this rank owns, without their index (`items` itself in one process).

    For sums over whole batches (Fisher, saliency, router statistics): each batch is used whole, by
    one rank, and the partial sums are added across ranks, so the result equals one process's up to
    summation order."""
    return items if ctx.world_size == 1 else (item for _, item in owned(items, ctx))


def owned_count(n: int, ctx: DistContext) -> int:
    """How many of n items (indices 0..n-1) this rank owns under `owned` (e.g. a progress bar's total)."""
    return len(range(ctx.rank, n, ctx.world_size))


def gather_ordered(local: Mapping[int, object], ctx: DistContext) -> list:
    """All ranks' {k: value} parts merged and returned as [value for k in sorted order] on every rank.

    local: this rank's values keyed by their global index (e.g. from `owned`); keys must not
    repeat across ranks.
    """
    if not isinstance(local, Mapping):
        raise TypeError(f"local: expected a mapping of global index -> value, got {type(local).__name__}")
    merged: dict[int, object] = {}
    for part in ctx.all_gather(dict(local)):
        overlap = merged.keys() & part.keys()
        if overlap:
            raise ValueError(f"local: index {min(overlap)} was produced by two ranks")
        merged.update(part)
    return [merged[k] for k in sorted(merged)]


def broadcast_parameters_(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (the start state every rank must share).

    DDP broadcasts when it wraps, and FSDP2 shards hold different values by design: for those
    (unlearnx.distributed.wrap.reduces_gradients) this does nothing."""
    from unlearnx.distributed.wrap import reduces_gradients

    if not ctx.initialized or reduces_gradients(module):
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=0)
