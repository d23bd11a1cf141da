"""Atomic persistence for run directories: bytes, text, JSON and model weights (safetensors).

Every file is written to a temporary sibling, flushed and fsync'ed, then moved over the target
with `os.replace`, so an interrupted run never leaves a truncated results.json or checkpoint:
a reader sees either the old file or the complete new one.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

__all__ = ["fsync_dir", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "read_json", "save_state_dict",
           "load_state_dict", "to_jsonable", "safetensors_bytes"]


def fsync_dir(path) -> None:
    """Make the renames inside folder `path` durable (POSIX; a no-op where folders cannot be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_write_bytes(path, data: bytes, *, sync_dir: bool = True) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder + fsync + os.replace).

    The folder is fsync'ed too, so the rename itself survives a crash; sync_dir=False leaves that
    to a caller who writes several files and fsyncs their folder once (the exact-unlearning store).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(value):
    """Convert tensors, numpy values, tuples and paths to plain JSON types; non-finite floats -> None."""
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":
        return to_jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Inf; None reads back as "missing"
    return value


def atomic_write_json(path, obj) -> Path:
    """Write `obj` (converted by `to_jsonable`) as indented JSON to `path` atomically."""
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path):
    """Read a JSON file; None when it does not exist or is unreadable (an interrupted older writer)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """`safetensors.torch.save(tensors, metadata)` with the metadata keys in sorted order, so equal
    tensors and metadata always give equal bytes.

    safetensors writes `__metadata__` from a hash map whose order changes from process to process
    (two identical runs gave files with different sha256). The tensor entries and the data section
    are already in a fixed order; only the header's `__metadata__` object is rewritten, compact, and
    padded with spaces to a multiple of 8 bytes as safetensors does (tensor offsets are relative to
    the end of the header, so the data section is unchanged).
    """
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    if "__metadata__" in header:
        header = {"__metadata__": dict(sorted(header["__metadata__"].items())),
                  **{k: v for k, v in header.items() if k != "__metadata__"}}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def save_state_dict(model: nn.Module, path, *, metadata: dict[str, str] | None = None) -> Path:
    """Save `model.state_dict()` (parameters and buffers, on CPU) as safetensors, atomically; the
    same weights and metadata always give the same bytes (see `safetensors_bytes`)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return atomic_write_bytes(path, safetensors_bytes(tensors, metadata))


def load_state_dict(model: nn.Module, path) -> nn.Module:
    """Load a safetensors (or torch .pt state dict) file into `model` strictly; returns `model`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        # weights_only: a .pt from an untrusted source cannot run code when loaded.
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match the model architecture: {exc}") from None
    return model
