"""Per-sample losses and batch plumbing for the gradient statistics.

A loss function for unlearnx.stats has the signature ``loss_fn(model, batch) -> Tensor[B]``: one
loss per sample, each depending only on its own sample (the statistics differentiate
``loss.sum()`` once per batch, so row b of every layer's output gradient is the gradient of
sample b's loss).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

__all__ = ["default_loss_fn", "move_to", "batch_size", "slice_batch"]

IGNORE_INDEX = -100


def _logits(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        logits = out[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model returned {type(out).__name__}, which has no logits tensor; pass a loss_fn")
    return logits


def default_loss_fn(model: torch.nn.Module, batch) -> torch.Tensor:
    """Per-sample loss [B] for the two standard batch layouts.

    * ``(x, y)`` (tuple or list of two): cross-entropy of ``model(x)`` ([B, C] or [B, C, ...])
      against ``y`` ([B] or [B, ...]), averaged over any extra positions of a sample.
    * a mapping with ``"labels"`` (Hugging Face causal LM): ``model(**batch_without_labels)``
      gives logits [B, T, V]; the token NLL of labels[:, 1:] under logits[:, :-1], averaged over
      a sample's positions with label != -100 (and attention_mask != 0 when given). A sample with
      no such position has loss 0. Ignored and padding positions contribute nothing.
    """
    if isinstance(batch, Mapping):
        if "labels" not in batch:
            raise ValueError("batch is a mapping without 'labels'; pass loss_fn(model, batch) -> Tensor[B]")
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        labels = batch["labels"]
        logits = _logits(model(**inputs))
        if logits.dim() != 3 or labels.dim() != 2:
            raise ValueError(
                f"causal-LM loss expects logits [B, T, V] and labels [B, T], got {list(logits.shape)} and {list(labels.shape)}"
            )
        target = labels[:, 1:]
        valid = target != IGNORE_INDEX
        mask = batch.get("attention_mask")
        if mask is not None:
            valid = valid & (mask[:, 1:] != 0)
        nll = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            torch.where(valid, target, 0).flatten(),
            reduction="none",
        ).view_as(target)
        nll = torch.where(valid, nll, 0.0)
        return nll.sum(1) / valid.sum(1).clamp(min=1)
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        logits = _logits(model(x))
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        return loss.flatten(1).mean(1) if loss.dim() > 1 else loss
    raise TypeError(
        f"no default loss for a batch of type {type(batch).__name__}; batches must be (x, y) or a mapping "
        "with 'labels', or pass loss_fn(model, batch) -> Tensor[B]"
    )


def move_to(batch, device: torch.device):
    """The batch with every tensor moved to `device` (tuples, lists and mappings recursively)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(move_to(v, device) for v in batch)
    if isinstance(batch, list):
        return [move_to(v, device) for v in batch]
    return batch


def _tensors(batch):
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, Mapping):
        for v in batch.values():
            yield from _tensors(v)
    elif isinstance(batch, (tuple, list)):
        for v in batch:
            yield from _tensors(v)


def batch_size(batch) -> int | None:
    """Leading size of the first tensor with at least one dimension, or None."""
    for t in _tensors(batch):
        if t.dim() > 0:
            return int(t.shape[0])
    return None


def slice_batch(batch, i: int, size: int):
    """Sample i of the batch as a batch of one: tensors with leading size `size` are sliced."""
    if isinstance(batch, torch.Tensor):
        return batch[i : i + 1] if batch.dim() > 0 and batch.shape[0] == size else batch
    if isinstance(batch, Mapping):
        return {k: slice_batch(v, i, size) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(slice_batch(v, i, size) for v in batch)
    if isinstance(batch, list):
        return [slice_batch(v, i, size) for v in batch]
    return batch
