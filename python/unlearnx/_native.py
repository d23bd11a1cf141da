"""Loading of the native library `unlearnx._C` and backend selection.

The native library registers every `torch.ops.unlearnx.*` schema and its CPU (and, when built with
CUDA, CUDA) kernels. Without it, unlearnx still works: the typed wrappers in `unlearnx.ops` run every
op's pure-PyTorch reference (one warning at import), but `torch.ops.unlearnx.*` is not defined.
"""
from __future__ import annotations

import json
import os
import warnings
from functools import lru_cache

import torch

BACKENDS = ("auto", "native", "triton", "reference")

_load_error: str | None = None
try:  # importing the extension runs its static initializers, which register the ops
    from unlearnx import _C  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - exercised only without a build
    _C = None
    _load_error = str(exc)
    warnings.warn(
        "unlearnx: the native library could not be loaded "
        f"({exc}); using the pure-PyTorch reference kernels (correct, slower).",
        RuntimeWarning,
        stacklevel=2,
    )


def native_loaded() -> bool:
    """True when `unlearnx._C` was imported and its kernels are registered."""
    return _C is not None


def load_error() -> str | None:
    return _load_error


@lru_cache(maxsize=1)
def build_info() -> dict:
    """What the native library was compiled with: version, CPU ISAs, CUDA archs."""
    if _C is None:
        return {"native": False, "error": _load_error}
    info = json.loads(_C.build_info())
    info["native"] = True
    return info


@lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # triton missing or broken: the GPU path falls back to native/reference
        return False
    return True


def requested_backend() -> str:
    value = os.environ.get("UNLEARNX_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(
            f"UNLEARNX_BACKEND={value!r} is not one of {', '.join(BACKENDS)}"
        )
    return value


def native_has_device(device: torch.device) -> bool:
    if _C is None:
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return bool(build_info().get("cuda"))
    return False


def _triton_usable(device: torch.device) -> bool:
    if not triton_available():
        return False
    if device.type == "cuda":
        return True
    # Triton kernels run on CPU tensors only under the interpreter.
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def select_backend(device: torch.device | str, *, has_triton: bool = True) -> str:
    """The backend an op uses for tensors on `device`.

    auto: the native kernel if compiled for the device; on CUDA without a native kernel, Triton;
    else the reference. An explicit request that cannot be honoured raises instead of silently
    falling back, so benchmarks and tests measure what they claim to.
    """
    device = torch.device(device)
    want = requested_backend()
    if want == "auto":
        if native_has_device(device):
            return "native"
        if device.type == "cuda" and has_triton and _triton_usable(device):
            return "triton"
        return "reference"
    if want == "native" and not native_has_device(device):
        raise RuntimeError(
            f"UNLEARNX_BACKEND=native but the native library has no kernel for {device.type} "
            f"({_load_error or 'not compiled for this device'})"
        )
    if want == "triton" and (not has_triton or not _triton_usable(device)):
        raise RuntimeError(
            f"UNLEARNX_BACKEND=triton but no Triton kernel can run on {device.type} "
            "(Triton missing, no Triton kernel for this op, or CPU without TRITON_INTERPRET=1)"
        )
    return want
