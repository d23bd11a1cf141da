"""Cutting a global batch into this rank's share and into micro-batches, deterministically.

Every rank reads the same global batch (the seeded loaders of unlearnx give every process the same
sequence of batches, whatever the world size), keeps its contiguous block of rows
(`split_sizes(rows, world_size)[rank]` rows, in rank order) and runs it in micro-batches. Rows are
sliced from the collated global batch, so padding (hence every row's numbers) is the padding of
the one-process batch.

A "side" is one batch of aligned rows: a tensor [B, ...], a tuple/list of such tensors ((x, y)),
or a dict of them (input_ids, attention_mask, labels, index). A batch of sides is a dict of
sides ({"forget": side, "retain": side}); their row counts may differ. The number of pieces is set
by the primary side (the one the loss cannot do without), so no piece lacks it; every side is cut
into that many contiguous pieces.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from unlearnx.distributed.context import DistContext, split_sizes

__all__ = ["side_rows", "take_part", "rank_share", "micro_batches", "rank_parts", "count_units", "UNITS"]

# What a loss term is a mean over: the rows of its side, or the scored (label != -100) next tokens.
UNITS = ("samples", "tokens")


def _first_tensor(side):
    if isinstance(side, torch.Tensor):
        return side
    values = side.values() if isinstance(side, dict) else side
    for v in values:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v
    raise ValueError("batch: a side holds no tensor with a batch dimension")


def side_rows(side) -> int:
    """Rows (batch dimension) of a side."""
    return _first_tensor(side).shape[0]


def _slice(side, start: int, stop: int, rows: int):
    if isinstance(side, torch.Tensor):
        return side[start:stop] if side.dim() > 0 and side.shape[0] == rows else side
    if isinstance(side, dict):
        return {k: _slice(v, start, stop, rows) for k, v in side.items()}
    if isinstance(side, (tuple, list)):
        return type(side)(_slice(v, start, stop, rows) for v in side)
    return side


def take_part(side, index: int, parts: int):
    """Part `index` of `parts` contiguous parts of a side's rows (sizes from `split_sizes`)."""
    if not isinstance(index, int) or not 0 <= index < parts:
        raise ValueError(f"index: must be in [0, {parts}), got {index!r}")
    rows = side_rows(side)
    sizes = split_sizes(rows, parts)
    start = sum(sizes[:index])
    return _slice(side, start, start + sizes[index], rows)


def _is_sides(batch) -> bool:
    return isinstance(batch, dict) and bool(batch) and all(isinstance(v, dict) for v in batch.values())


def _cut(batch, primary: str | None, parts_for) -> list:
    """Cut every side into n parts, n = parts_for(rows of the primary side); non-primary sides that
    come out empty in a part are left out of it (their term then contributes nothing)."""
    if not _is_sides(batch):
        n = parts_for(side_rows(batch))
        return [take_part(batch, j, n) for j in range(n)]
    if primary not in batch:
        raise ValueError(f"primary: {primary!r} is not a side of the batch (sides: {sorted(batch)})")
    n = parts_for(side_rows(batch[primary]))
    out = []
    for j in range(n):
        part = {}
        for name, side in batch.items():
            piece = take_part(side, j, n)
            if name == primary or side_rows(piece) > 0:
                part[name] = piece
        out.append(part)
    return out


def rank_share(batch, ctx: DistContext, *, primary: str | None = None):
    """This rank's rows of a global batch, or None when it has none.

    batch: a side, or a dict of sides (then `primary` names the side the loss cannot do without,
    e.g. "forget"). The primary side's rows go to the first min(world_size, rows) ranks, so no rank
    runs an empty primary side; the other sides are cut into as many parts, in the same order.
    """
    parts = _cut(batch, primary, lambda rows: max(1, min(ctx.world_size, rows)))
    if ctx.rank >= len(parts):
        return None
    share = parts[ctx.rank]
    rows = side_rows(share[primary] if _is_sides(share) else share)
    return share if rows > 0 else None


def micro_batches(share, micro_batch_size: int, *, primary: str | None = None) -> list:
    """`share` cut into ceil(rows / micro_batch_size) parts (0: one part), rows counted on the
    primary side (see `rank_share`); None (no rows) gives []."""
    if isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int) or micro_batch_size < 0:
        raise ValueError(f"micro_batch_size: must be an int >= 0, got {micro_batch_size!r}")
    if share is None:
        return []
    return _cut(share, primary, lambda rows: 1 if micro_batch_size == 0 else max(1, -(-rows // micro_batch_size)))


def rank_parts(batch, ctx: DistContext, *, primary: str | None = None, equal_counts: bool = False) -> list:
    """[(part, real)]: this rank's micro-batches (`rank_share` then `micro_batches` with
    ctx.micro_batch_size), all real=True.

    equal_counts: pad the list with (the batch's first row, False) to the largest part count of any
    rank, so that every rank runs as many forward/backward passes as the busiest one. Models that
    communicate inside forward/backward (DDP, FSDP2) need it; the caller gives the filler weight 0.
    """
    mine = [(p, True) for p in micro_batches(rank_share(batch, ctx, primary=primary), ctx.micro_batch_size,
                                             primary=primary)]
    if not equal_counts or ctx.world_size == 1:
        return mine
    most = max(len(micro_batches(rank_share(batch, replace(ctx, rank=r), primary=primary), ctx.micro_batch_size,
                                 primary=primary)) for r in range(ctx.world_size))
    if len(mine) < most:
        filler = {n: take_part(s, 0, max(1, side_rows(s))) for n, s in batch.items()} if _is_sides(batch) \
            else take_part(batch, 0, max(1, side_rows(batch)))
        mine += [(filler, False)] * (most - len(mine))
    return mine


def count_units(side, unit: str) -> int:
    """How many units a side holds: "samples" = rows; "tokens" = next-token targets that are scored,
    i.e. labels[:, 1:] != -100 (the denominator of the mean token NLL of unlearnx.methods.llm.losses)."""
    if unit not in UNITS:
        raise ValueError(f"unit: must be one of {UNITS}, got {unit!r}")
    if side is None:
        return 0
    if unit == "samples":
        return side_rows(side)
    if not isinstance(side, dict) or "labels" not in side:
        raise ValueError("unit: 'tokens' needs a side with 'labels' [B, L]")
    from unlearnx.data.lm_batches import IGNORE_INDEX

    return int((side["labels"][:, 1:] != IGNORE_INDEX).sum())
