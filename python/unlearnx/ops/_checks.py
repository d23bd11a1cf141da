"""Argument checks shared by the typed op wrappers (errors name the argument and list index)."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def tensor_list(value, name: str) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(value).__name__}")
    for i, t in enumerate(value):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
    return list(value)


def same_length(a: list, a_name: str, b: list, b_name: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{b_name} has {len(b)} tensors but {a_name} has {len(a)}")


def same_shape(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{b_name} has shape {list(b.shape)} but {a_name} has shape {list(a.shape)}")


def dtype_in(t: torch.Tensor, name: str, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        names = " or ".join(str(d).removeprefix("torch.") for d in allowed)
        raise TypeError(f"{name} must be {names}, got {str(t.dtype).removeprefix('torch.')}")


def same_device(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def finite_scalar(value, name: str, *, min_value: float | None = None) -> float:
    """`value` (a real number: int, float, numpy scalar or one-element tensor) as a finite float;
    strings and bools are refused (TypeError), NaN/inf and values below min_value (ValueError)."""
    if isinstance(value, (str, bytes, bool)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {v}")
    if min_value is not None and v < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {v}")
    return v
