"""Model wrappers for multi-process training: DDP (small models, LoRA) and FSDP2 (full fine-tuning
of models that do not fit one device), with bf16 parameters / fp32 reductions and optional
activation checkpointing.

The unlearnx loops sum gradients themselves (unlearnx.distributed.reduce), which is exact for any
model that every rank holds whole. A DDP or FSDP2 model already reduces in backward: the loops see
that (`reduces_gradients`) and skip their own all-reduce. DDP and FSDP2 *average* over ranks, so a
wrapped model's loss must be multiplied by the world size to get the global-batch gradient the
loops compute (`gradient_scale`).
"""
from __future__ import annotations

from torch import nn

from unlearnx.distributed.context import DistContext, current

__all__ = ["wrap_model", "reduces_gradients", "gradient_scale", "STRATEGIES"]

STRATEGIES = ("none", "ddp", "fsdp")


def _layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard / checkpoint one by one: the longest nn.ModuleList of the model
    (the decoder layers of a transformers causal LM)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    return max(lists, key=len, default=[])


def wrap_model(model: nn.Module, strategy: str = "ddp", *, mixed_precision: bool = False,
               activation_checkpointing: bool = False, ctx: DistContext | None = None) -> nn.Module:
    """Wrap `model` (already on this rank's device) for multi-process training.

    strategy: "ddp" (torch DistributedDataParallel, every rank holds the whole model), "fsdp"
    (FSDP2 `fully_shard` on each block of the longest ModuleList, then on the root: parameters,
    gradients and optimizer state sharded over ranks) or "none" (unchanged).
    mixed_precision: FSDP2 only: bf16 parameters in forward/backward, fp32 gradient reduction
    (`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`); the fp32 master weights stay sharded.
    activation_checkpointing: recompute each block's activations in backward (non-reentrant
    torch.utils.checkpoint) instead of storing them.
    One process: returns the model with only activation checkpointing applied.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: must be one of {STRATEGIES}, got {strategy!r}")
    if mixed_precision and strategy != "fsdp":
        raise ValueError("mixed_precision: only with strategy='fsdp' (DDP keeps the parameters' dtype)")
    ctx = ctx or current()
    if activation_checkpointing:
        _checkpoint_blocks(model)
    if strategy == "none" or not ctx.initialized:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision \
        else MixedPrecisionPolicy()
    for block in _layers(model):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def _checkpoint_blocks(model: nn.Module) -> None:
    """Activation checkpointing of every block of the longest ModuleList (non-reentrant)."""
    if hasattr(model, "gradient_checkpointing_enable"):  # transformers models do it themselves
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    blocks = {id(b) for b in _layers(model)}
    if not blocks:
        raise ValueError("activation_checkpointing: the model has no nn.ModuleList of blocks to checkpoint")
    apply_activation_checkpointing(model, check_fn=lambda m: id(m) in blocks)


def reduces_gradients(model: nn.Module) -> bool:
    """True when the model reduces its own gradients across ranks (DDP, or FSDP2-sharded)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return True
    return any(type(m).__name__.startswith("FSDP") for m in model.modules())


def gradient_scale(model: nn.Module, ctx: DistContext | None = None) -> float:
    """Factor for the loss of a model that averages gradients over ranks (world size), else 1."""
    ctx = ctx or current()
    return float(ctx.world_size) if reduces_gradients(model) else 1.0
