"""Loading of the native library `unlearnx._C` and backend selection, per op and per device.

The native library registers every `torch.ops.unlearnx.*` schema and its native kernels: CPU kernels
for every op, CUDA kernels for the ops that have one when built with CUDA. Which ops have which
native kernel is recorded right after the import (`native_kernels`), before unlearnx.ops.registry
registers the Triton / reference implementations for the devices the native library leaves
uncovered. Without the native library unlearnx still works: the typed wrappers in `unlearnx.ops`
run every op's pure-PyTorch reference (one warning at import), but `torch.ops.unlearnx.*` is not
defined.
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


def _snapshot_native_kernels() -> dict[str, frozenset[str]]:
    """{op name: device types ("cpu", "cuda") with a kernel}, read from the dispatcher now, i.e.
    before any Python registration: the kernels the native library itself registered."""
    if _C is None:
        return {}
    out = {}
    for qualname in torch._C._dispatch_get_all_op_names():
        if qualname.startswith("unlearnx::"):
            out[qualname.split("::", 1)[1]] = frozenset(
                dev for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))
                if torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key))
    return out


_NATIVE_KERNELS = _snapshot_native_kernels()


def native_kernels() -> dict[str, frozenset[str]]:
    """The schemas the native library defines, each with the device types of its native kernels."""
    return dict(_NATIVE_KERNELS)


def native_has_kernel(op: str, device: torch.device | str) -> bool:
    """True when the native library itself has a kernel of `op` for `device`'s type."""
    return torch.device(device).type in _NATIVE_KERNELS.get(op, ())


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


def select_backend(device: torch.device | str, *, has_triton: bool = True, op: str | None = None) -> str:
    """The backend op `op` uses for tensors on `device` (per op and per device, never per build).

    auto: the op's native kernel if the native library has one for the device; else, on CUDA,
    Triton; else the reference. Without `op`, "native" means the library was compiled for the
    device at all. An explicit request that cannot be honoured raises instead of silently falling
    back, so benchmarks and tests measure what they claim to.
    """
    device = torch.device(device)
    want = requested_backend()
    has_native = native_has_kernel(op, device) if op is not None else native_has_device(device)
    if want == "auto":
        if has_native:
            return "native"
        if device.type == "cuda" and has_triton and _triton_usable(device):
            return "triton"
        return "reference"
    if want == "native" and not has_native:
        what = f"{op} on {device.type}" if op is not None else device.type
        raise RuntimeError(
            f"UNLEARNX_BACKEND=native but the native library has no kernel for {what} "
            f"({_load_error or 'not compiled for this device'})"
        )
    if want == "triton" and (not has_triton or not _triton_usable(device)):
        raise RuntimeError(
            f"UNLEARNX_BACKEND=triton but no Triton kernel can run on {device.type} "
            "(Triton missing, no Triton kernel for this op, or CPU without TRITON_INTERPRET=1)"
        )
    return want
