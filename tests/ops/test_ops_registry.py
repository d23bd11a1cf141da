"""The one op list (unlearnx.ops.registry.OPS) against the schemas and the dispatcher.

On any build: the list is exactly the schemas of csrc/registration.cpp, every op has a CPU, a CUDA
and a Meta (fake) kernel plus its autograd formula, and the Python implementations registered for
devices without a native kernel (reference; Triton under TRITON_INTERPRET=1) agree with the native
CPU op. Where torch is a CUDA build (the CI's CUDA compile-and-link step imports one without a
GPU), the same coverage check runs against the CUDA build of the native library.
"""
import os
import re
from pathlib import Path

import pytest
import torch

import unlearnx  # noqa: F401  (loads the native library, registers everything)
from unlearnx import _native
from unlearnx.ops import registry

ROOT = Path(__file__).resolve().parents[2]
needs_native = pytest.mark.skipif(not _native.native_loaded(), reason="native library not built")


def _schema_names() -> set[str]:
    text = (ROOT / "csrc" / "registration.cpp").read_text()
    return set(re.findall(r'm\.def\(\s*"([A-Za-z0-9_]+)\(', text))


def test_table_is_exactly_the_schemas_of_registration_cpp():
    names = _schema_names()
    assert len(names) >= 11
    assert {s.name for s in registry.OPS} == names
    assert len(registry.OPS) == len(names)  # no op listed twice


@needs_native
def test_table_is_exactly_the_dispatcher_ops():
    assert set(_native.native_kernels()) == {s.name for s in registry.OPS}


def test_every_op_names_importable_python_pieces():
    for spec in registry.OPS:
        for path in (spec.fake, spec.reference, *(spec.autograd or ())):
            assert callable(registry.resolve(path)), path
        assert spec.triton is None or spec.triton.startswith("unlearnx.kernels."), spec.triton


@needs_native
def test_every_op_has_cpu_cuda_meta_fake_and_autograd_kernels(monkeypatch):
    monkeypatch.setenv("UNLEARNX_BACKEND", "auto")
    table = registry.check_coverage()
    assert [r["op"] for r in table] == [s.name for s in registry.OPS]
    for r in table:
        assert r["cpu"] == "native"  # every op has a native CPU kernel
        assert r["cuda"] in ("native", "triton", "reference")
        want = "native" if _native.native_has_kernel(r["op"], "cuda") else "python"
        assert r["cuda_kernel"] == want
    # The differentiable op really has its formula: d logp / dz = onehot - softmax.
    z = torch.randn(3, 7, dtype=torch.float32, requires_grad=True)
    y = torch.tensor([1, 4, -100])
    torch.ops.unlearnx.token_stats(z, y, -100)[0].sum().backward()
    want = torch.nn.functional.one_hot(torch.tensor([1, 4, 0]), 7) - torch.softmax(z.detach(), -1)
    want[2] = 0
    torch.testing.assert_close(z.grad, want)


@needs_native
def test_check_coverage_reports_a_missing_kernel(monkeypatch):
    # A stand-in for "a CUDA build whose native library has no CUDA kernel for token_stats and
    # nothing registered one": the dispatcher query answers False for that (op, key).
    real = torch._C._dispatch_has_kernel_for_dispatch_key

    def fake(name, key):
        return False if (name, key) == ("unlearnx::token_stats", "CUDA") else real(name, key)

    monkeypatch.setattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", fake)
    with pytest.raises(AssertionError, match="token_stats: no CUDA kernel"):
        registry.check_coverage()


@needs_native
def test_check_coverage_reports_a_schema_missing_from_either_side(monkeypatch):
    real = _native.native_kernels()
    changed = {k: v for k, v in real.items() if k != "token_stats"}
    changed["new_op_"] = frozenset({"cpu"})
    monkeypatch.setattr(_native, "native_kernels", lambda: changed)
    with pytest.raises(AssertionError) as err:
        registry.check_coverage()
    assert "new_op_: in the native library but not OPS" in str(err.value)
    assert "token_stats: in OPS but not the native library" in str(err.value)


@needs_native
def test_every_op_has_a_sample(op_kit):
    assert set(op_kit.builders) == {s.name for s in registry.OPS}


@needs_native
@pytest.mark.parametrize("name", [s.name for s in registry.OPS])
def test_python_kernel_matches_native_cpu_op(name, op_kit, monkeypatch):
    """The kernel registered for devices without a native one (here run on CPU tensors: the
    reference, then Triton under the interpreter) has the op's signature and its results."""
    spec = registry.op_spec(name)
    args = op_kit.make(name, small=True)
    want = op_kit.run(getattr(torch.ops.unlearnx, name), args)
    kernel = registry._python_kernel(spec, "cpu")
    monkeypatch.setenv("UNLEARNX_BACKEND", "reference")
    op_kit.assert_same(op_kit.run(kernel, args), want, what=f"{name} reference")
    if spec.triton is not None and _native.triton_available() and os.environ.get("TRITON_INTERPRET") == "1":
        monkeypatch.setenv("UNLEARNX_BACKEND", "triton")
        op_kit.assert_same(op_kit.run(kernel, args), want, what=f"{name} triton")


@needs_native
def test_python_kernel_rejects_strided_and_foreign_tensors():
    kernel = registry._python_kernel(registry.op_spec("token_stats"), "cpu")
    logits = torch.randn(4, 9).t()
    with pytest.raises(ValueError, match="token_stats: logits must be contiguous"):
        kernel(logits, torch.zeros(9, dtype=torch.int64), -100)
    kernel = registry._python_kernel(registry.op_spec("mask_counts"), "cuda")
    with pytest.raises(ValueError, match=r"mask_counts: masks\[0\] is on cpu"):
        kernel([torch.ones(3, dtype=torch.bool)])


def test_backend_is_chosen_per_op_and_device(monkeypatch):
    monkeypatch.setenv("UNLEARNX_BACKEND", "auto")
    for spec in registry.OPS:
        for dev in ("cpu", "cuda"):
            got = _native.select_backend(dev, op=spec.name)
            if _native.native_has_kernel(spec.name, dev):
                assert got == "native"
            elif dev == "cuda" and _native.triton_available():
                assert got == "triton"
            else:
                assert got == "reference"
    monkeypatch.setenv("UNLEARNX_BACKEND", "native")
    missing = [s.name for s in registry.OPS if not _native.native_has_kernel(s.name, "cuda")]
    if missing:
        with pytest.raises(RuntimeError, match=f"no kernel for {missing[0]} on cuda"):
            _native.select_backend("cuda", op=missing[0])


@pytest.mark.skipif(torch.version.cuda is None,
                    reason="torch is a CPU build; the CUDA-build check runs where a CUDA torch is importable "
                           "(CI's CUDA compile-and-link step, scripts/gpu_check.sh)")
@needs_native
def test_cuda_build_has_a_cuda_kernel_for_every_op(monkeypatch):
    monkeypatch.setenv("UNLEARNX_BACKEND", "auto")
    table = registry.check_coverage()
    if _native.build_info()["cuda"]:
        native_cuda = [r["op"] for r in table if r["cuda_kernel"] == "native"]
        assert native_cuda, "a CUDA build of the native library registered no CUDA kernel"
        assert all(r["cuda"] == "native" for r in table if r["op"] in native_cuda)
