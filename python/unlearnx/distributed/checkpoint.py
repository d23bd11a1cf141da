"""Sharded checkpoints (torch.distributed.checkpoint) and export to one safetensors file, both atomic.

`save_checkpoint(model, path)` is collective: every rank writes its shards (FSDP2) or DCP's
de-duplicated share (replicated DDP / plain models) into a hidden sibling folder
``.<name>.tmp-<token>``; the ranks then agree that all of them finished, and only then does rank 0
fsync the files and rename the folder to `path`. A rank that fails (or is killed by torchrun
because another rank failed) never reaches the agreement, so `path` is either absent or a complete
checkpoint; the hidden folder is what is left behind, and the next save starts a new one.

`export_safetensors(model, path)` gathers the full (unsharded) state dict on rank 0 and writes it
with unlearnx.report.save_state_dict (temp file + fsync + rename).
"""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import torch
from torch import nn

from unlearnx.distributed.context import DistContext, current

__all__ = ["save_checkpoint", "load_checkpoint", "export_safetensors"]


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")


def _model_state(model: nn.Module, *, full: bool) -> dict[str, torch.Tensor]:
    """The model's state dict: sharded DTensors under FSDP2 (full=False) or full CPU tensors (full=True)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=full, cpu_offload=full))


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(model: nn.Module, path, *, ctx: DistContext | None = None) -> Path:
    """Write the model's (possibly sharded) state to the folder `path` with torch.distributed.checkpoint.

    Collective: every rank calls it with the same `path`. An existing `path` is replaced only once
    the new checkpoint is complete on every rank. Returns `path`.
    """
    import torch.distributed.checkpoint as dcp

    _check_model(model)
    ctx = ctx or current()
    path = Path(path)
    # One temp folder name for all ranks: rank 0's random token.
    token = ctx.all_gather(secrets.token_hex(8))[0]
    tmp = path.parent / f".{path.name}.tmp-{token}"
    if ctx.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    dcp.save(_model_state(model, full=False), checkpoint_id=str(tmp))
    # Agreement: a rank passes this barrier only after writing its part. A rank that raised has
    # left (torchrun then stops the others), so no rank below commits an incomplete folder.
    ctx.barrier()
    if ctx.is_main:
        _fsync_tree(tmp)
        if path.exists():
            old = path.parent / f".{path.name}.old-{token}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    ctx.barrier()
    return path


def load_checkpoint(model: nn.Module, path, *, ctx: DistContext | None = None) -> nn.Module:
    """Load a `save_checkpoint` folder into `model` (same wrapping, any world size DCP can reshard to)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    _check_model(model)
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"path: {path} is not a complete checkpoint (no .metadata)")
    state = _model_state(model, full=False)
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state)
    (ctx or current()).barrier()
    return model


def export_safetensors(model: nn.Module, path, *, ctx: DistContext | None = None,
                       metadata: dict[str, str] | None = None) -> Path:
    """Gather the full state dict (FSDP2 shards included) and write it on rank 0 as one safetensors
    file, atomically. Collective. Returns `path` (written by rank 0 only)."""
    from unlearnx.report.io import atomic_write_bytes, safetensors_bytes

    _check_model(model)
    ctx = ctx or current()
    state = _model_state(model, full=True)
    if ctx.is_main:
        # clone: tied weights share storage, which safetensors refuses to write twice.
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
        atomic_write_bytes(path, safetensors_bytes(tensors, metadata))
    ctx.barrier()
    return Path(path)
