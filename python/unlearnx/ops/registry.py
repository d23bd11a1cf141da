"""The one list of unlearnx ops, and the registration it drives.

Every op defined in csrc/registration.cpp has one `OpSpec` in `OPS`: where its fake (meta) kernel,
autograd formula, pure-PyTorch reference and Triton implementation live, each with the op's own
schema signature. `register_all()` (run once when unlearnx.ops is imported) registers, for every
op of the list:

* the fake kernel (torch.compile / export; also the dispatcher's Meta kernel),
* the autograd formula where the op is differentiable,
* a CPU and a CUDA kernel wherever the native library has none for that op and device: the Triton
  implementation where the op has one and Triton can run, else the reference, chosen at call time
  by `unlearnx._native.select_backend` (so `UNLEARNX_BACKEND` applies to `torch.ops.unlearnx.*`
  as to the typed wrappers).

So the backend is chosen per op and per device, never per build: a CUDA build whose native
library has CUDA kernels for some ops still runs the others on CUDA through Triton (or the
reference). `check_coverage()` asserts the result (CI runs it after importing the CUDA build),
and `backend_table()` says what each op uses on each device (`unlearnx info` prints it).
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass

import torch

from unlearnx import _native

__all__ = ["OPS", "OpSpec", "backend_table", "check_coverage", "format_backend_table", "op_spec", "register_all",
           "resolve"]

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class OpSpec:
    """One op of namespace `unlearnx` and the Python pieces registered for it.

    Callables are "module:attribute" strings, resolved on use, so a Triton module is imported only
    when a Triton kernel actually runs. `reference` and `triton` take the op's schema arguments.
    """

    name: str
    fake: str
    reference: str
    triton: str | None = None
    autograd: tuple[str, str] | None = None  # (backward, setup_context)

    @property
    def qualname(self) -> str:
        return f"unlearnx::{self.name}"


_SSD, _SEL, _GS, _TS, _RS, _LD = (f"unlearnx.ops.{m}" for m in
                                   ("ssd", "select", "grad_stats", "token_stats", "router_stats", "logit_diff"))
_K = "unlearnx.kernels."

OPS: tuple[OpSpec, ...] = (
    OpSpec("ssd_dampen_", f"{_SSD}:_ssd_dampen_fake", f"{_SSD}:ssd_dampen_reference",
           f"{_K}ssd:ssd_dampen_triton"),
    OpSpec("global_select", f"{_SEL}:_global_select_fake", f"{_SEL}:global_select_reference",
           f"{_K}select:global_select_triton"),
    OpSpec("threshold_masks", f"{_SEL}:_threshold_masks_fake", f"{_SEL}:threshold_masks_reference",
           f"{_K}select:threshold_masks_triton"),
    OpSpec("mask_counts", f"{_SEL}:_mask_counts_fake", f"{_SEL}:mask_counts_reference",
           f"{_K}select:mask_counts_triton"),
    OpSpec("masked_restore_", f"{_SEL}:_masked_restore_fake", f"{_SEL}:masked_restore_reference_",
           f"{_K}select:masked_restore_triton_"),
    OpSpec("linear_sq_grad_accum_", f"{_GS}:_linear_sq_grad_accum_fake", f"{_GS}:linear_sq_grad_accum_reference",
           f"{_K}grad_stats:linear_sq_grad_accum_triton"),
    OpSpec("linear_grad_sq_norm_accum_", f"{_GS}:_linear_grad_sq_norm_accum_fake",
           f"{_GS}:linear_grad_sq_norm_accum_reference", f"{_K}grad_stats:linear_grad_sq_norm_accum_triton"),
    OpSpec("token_stats", f"{_TS}:_token_stats_fake", f"{_TS}:token_stats_reference",
           f"{_K}token_stats:token_stats_triton",
           autograd=(f"{_TS}:_token_stats_backward", f"{_TS}:_token_stats_setup_context")),
    OpSpec("moe_router_stats_", f"{_RS}:_moe_router_stats_fake", f"{_RS}:_moe_router_stats_op_reference",
           f"{_K}router_stats:moe_router_stats_triton"),
    OpSpec("logit_diff_sample", f"{_LD}:_logit_diff_sample_fake", f"{_LD}:_logit_diff_sample_op_reference",
           f"{_K}logit_diff:logit_diff_sample_triton"),
    OpSpec("logit_diff_logprobs", f"{_LD}:_logit_diff_logprobs_fake", f"{_LD}:_logit_diff_logprobs_op_reference",
           f"{_K}logit_diff:logit_diff_logprobs_triton"),
)

_BY_NAME = {spec.name: spec for spec in OPS}


def op_spec(name: str) -> OpSpec:
    """The OpSpec of op `name` (with or without the "unlearnx::" prefix)."""
    short = name.split("::", 1)[-1]
    if short not in _BY_NAME:
        raise KeyError(f"unknown unlearnx op {name!r}; known: {', '.join(_BY_NAME)}")
    return _BY_NAME[short]


def resolve(path: str):
    """The object a "module:attribute" string names."""
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


def _schema_args(spec: OpSpec) -> list[tuple[str, bool]]:
    """(name, is tensor-like) of each schema argument, in order."""
    schema = getattr(torch.ops.unlearnx, spec.name).default._schema
    return [(a.name, "Tensor" in str(a.type)) for a in schema.arguments]


def _check_tensor_args(spec: OpSpec, names: list[tuple[str, bool]], device_type: str, args, kwargs) -> None:
    """Dense tensors on `device_type`, as the native kernels require; errors name the argument."""
    values = list(zip((n for n, _ in names), args)) + list(kwargs.items())
    tensor_arg = dict(names)
    for name, value in values:
        if not tensor_arg.get(name) or value is None:
            continue
        items = [(name, value)] if isinstance(value, torch.Tensor) else \
            [(f"{name}[{i}]", t) for i, t in enumerate(value)]
        for label, t in items:
            if t.device.type != device_type:
                raise ValueError(f"unlearnx::{spec.name}: {label} is on {t.device} but the op runs on "
                                 f"{device_type}; put every tensor on one device")
            if not t.is_contiguous():
                raise ValueError(f"unlearnx::{spec.name}: {label} must be contiguous (call .contiguous() or use "
                                 "unlearnx.ops, which handles strides)")


def _python_kernel(spec: OpSpec, device_type: str):
    """The kernel registered for `device_type` when the native library has none for the op."""

    names = _schema_args(spec)

    def kernel(*args, **kwargs):
        _check_tensor_args(spec, names, device_type, args, kwargs)
        backend = _native.select_backend(device_type, has_triton=spec.triton is not None, op=spec.name)
        impl = resolve(spec.triton if backend == "triton" else spec.reference)
        return impl(*args, **kwargs)

    kernel.__name__ = f"_{spec.name}_{device_type}_python"
    return kernel


_registered: dict[str, dict[str, str]] = {}


def register_all() -> None:
    """Register fake kernels, autograd formulas and the missing CPU / CUDA kernels (idempotent)."""
    if not _native.native_loaded() or _registered:
        return
    native = _native.native_kernels()
    # A mismatch (a stale or newer build) is a warning here, so `import unlearnx` still works (the
    # wrappers of the missing ops fall back to the reference); check_coverage() and CI fail on it.
    unknown = sorted(set(native) - set(_BY_NAME))
    stale = [spec.name for spec in OPS if spec.name not in native]
    if unknown or stale:
        warnings.warn(f"unlearnx: the native library and unlearnx.ops.registry.OPS disagree (only in the library: "
                      f"{unknown}; only in OPS: {stale}); rebuild unlearnx._C", RuntimeWarning, stacklevel=2)
    for spec in OPS:
        if spec.name not in native:
            continue
        torch.library.register_fake(spec.qualname, resolve(spec.fake))
        if spec.autograd is not None:
            backward, setup = (resolve(p) for p in spec.autograd)
            torch.library.register_autograd(spec.qualname, backward, setup_context=setup)
        kinds = {}
        for dev in DEVICES:
            if dev in native[spec.name]:
                kinds[dev] = "native"
            else:
                torch.library.register_kernel(spec.qualname, dev, _python_kernel(spec, dev))
                kinds[dev] = "python"
        _registered[spec.name] = kinds


def _backend_or_error(spec: OpSpec, device: str) -> str:
    try:
        return _native.select_backend(device, has_triton=spec.triton is not None, op=spec.name)
    except RuntimeError as exc:
        return f"unavailable ({exc})"


def backend_table() -> list[dict]:
    """Per op: the backend the typed wrapper and `torch.ops.unlearnx.<op>` use on CPU and on CUDA
    under the current UNLEARNX_BACKEND (native / triton / reference, or "unavailable (why)"), and
    whether the dispatcher kernel for each device is the native library's or registered from
    Python (None without the native library)."""
    rows = []
    for spec in OPS:
        kinds = _registered.get(spec.name, {})
        rows.append({
            "op": spec.name,
            "cpu": _backend_or_error(spec, "cpu"),
            "cuda": _backend_or_error(spec, "cuda"),
            "cpu_kernel": kinds.get("cpu"),
            "cuda_kernel": kinds.get("cuda"),
            "differentiable": spec.autograd is not None,
        })
    return rows


def check_coverage(keys: tuple[str, ...] = ("CPU", "CUDA", "Meta")) -> list[dict]:
    """Assert that every op of OPS is a schema of the native library and vice versa, and that the
    dispatcher has a kernel for each dispatch key in `keys` (default CPU, CUDA and Meta), a fake
    kernel, the autograd formula where the op is differentiable, and a usable CUDA backend.

    Raises AssertionError listing every gap; returns `backend_table()` on success. Needs the
    native library (it checks what the dispatcher holds).
    """
    if not _native.native_loaded():
        raise AssertionError(f"the native library is not loaded ({_native.load_error()}); nothing is registered")
    from torch._library.simple_registry import singleton

    problems = []
    native = _native.native_kernels()
    for name in sorted(set(native) ^ set(_BY_NAME)):
        where = "the native library but not OPS" if name in native else "OPS but not the native library"
        problems.append(f"{name}: in {where}")
    table = backend_table()
    for spec, row in zip(OPS, table):
        for key in keys:
            if not torch._C._dispatch_has_kernel_for_dispatch_key(spec.qualname, key):
                problems.append(f"{spec.name}: no {key} kernel")
        if singleton.find(spec.qualname).fake_impl.kernel is None:
            problems.append(f"{spec.name}: no fake kernel")
        if spec.autograd is not None and not torch._C._dispatch_has_kernel_for_dispatch_key(spec.qualname, "Autograd"):
            problems.append(f"{spec.name}: no autograd formula")
        if row["cuda"].startswith("unavailable"):
            problems.append(f"{spec.name}: CUDA backend {row['cuda']}")
    if problems:
        raise AssertionError("unlearnx op coverage gaps:\n  " + "\n  ".join(problems))
    return table


def format_backend_table(table: list[dict] | None = None) -> str:
    """The table as aligned text lines: op, CPU backend, CUDA backend; "(registered from Python)"
    marks a device whose dispatcher kernel is unlearnx.ops.registry's, not the native library's."""
    table = backend_table() if table is None else table
    width = max(len(r["op"]) for r in table)
    lines = [f"{'op':<{width}}  {'cpu':<34}  cuda"]
    for r in table:
        cells = [("unavailable" if r[dev].startswith("unavailable") else r[dev])
                 + (" (registered from Python)" if r[f"{dev}_kernel"] == "python" else "") for dev in DEVICES]
        lines.append(f"{r['op']:<{width}}  {cells[0]:<34}  {cells[1]}")
    return "\n".join(lines)
