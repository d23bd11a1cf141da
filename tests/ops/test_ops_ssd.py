import numpy as np
import pytest
import torch

import unlearnx as ux
from unlearnx import _native
from unlearnx.ops.ssd import ssd_dampen_reference

native = pytest.mark.skipif(not _native.native_loaded(), reason="native library not built")
SIZES = [1, 7, 1023, 65537]


def make_case(sizes, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    params, f, d = [], [], []
    for n in sizes:
        params.append(torch.randn(n, generator=g).to(dtype))
        full = torch.rand(n, generator=g)
        # ~1/3 of elements far more important to the forget set (selected at alpha=10)
        forget = full * torch.where(torch.rand(n, generator=g) < 0.33, 30.0, 2.0) * torch.rand(n, generator=g)
        f.append(forget)
        d.append(full)
    return params, f, d


def clone(ts):
    return [t.clone() for t in ts]


def numpy_ssd(theta, f, d, alpha, lam):
    """The paper's per-element equation, written independently in numpy float32."""
    theta = theta.astype(np.float32).copy()
    sel = f > np.float32(alpha) * d
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.minimum(np.float32(lam) * d / f, np.float32(1.0))
    theta[sel] = theta[sel] * factor[sel]
    return theta, int(sel.sum())


def test_reference_matches_paper_equation():
    params, f, d = make_case([7, 1023])
    expect = [numpy_ssd(p.numpy(), fi.numpy(), di.numpy(), 10.0, 1.0) for p, fi, di in zip(params, f, d)]
    count = ssd_dampen_reference(params, f, d, 10.0, 1.0)
    for p, (e, _) in zip(params, expect):
        np.testing.assert_array_equal(p.numpy(), e)
    assert int(count) == sum(c for _, c in expect)
    assert int(count) > 0


@native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sizes", [[1], [7], [1023], [65537], SIZES, [0, 5, 0]])
def test_native_bit_identical_to_reference(dtype, sizes):
    params, f, d = make_case(sizes, dtype)
    ref = clone(params)
    c_ref = ssd_dampen_reference(ref, f, d, 10.0, 1.0)
    c_nat = torch.ops.unlearnx.ssd_dampen_(params, f, d, 10.0, 1.0)
    assert c_nat.dtype == torch.int64 and c_nat.dim() == 0
    assert int(c_nat) == int(c_ref)
    for a, b in zip(params, ref):
        assert torch.equal(a.view(torch.int16) if dtype == torch.bfloat16 else a, b.view(torch.int16) if dtype == torch.bfloat16 else b)


@native
@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_compiled_isa_matches_reference(isa, tmp_path):
    # The ISA is chosen once per process, so each one runs in its own interpreter.
    import subprocess
    import sys

    code = (
        "import torch, unlearnx; from unlearnx import _native; "
        "from unlearnx.ops.ssd import ssd_dampen_reference as r\n"
        "g=torch.Generator().manual_seed(1)\n"
        "for dt in (torch.float32, torch.bfloat16):\n"
        "  p=[torch.randn(n, generator=g).to(dt) for n in (1,7,1023,65537)]\n"
        "  f=[torch.rand(n, generator=g)*3 for n in (1,7,1023,65537)]\n"
        "  d=[torch.rand(n, generator=g) for n in (1,7,1023,65537)]\n"
        "  q=[t.clone() for t in p]\n"
        "  a=torch.ops.unlearnx.ssd_dampen_(p,f,d,2.0,0.5); b=r(q,f,d,2.0,0.5)\n"
        "  assert int(a)==int(b)>0\n"
        "  assert all(torch.equal(x.float(),y.float()) for x,y in zip(p,q))\n"
        "print(_native.build_info()['cpu_isa_active'])\n"
    )
    env = dict(__import__("os").environ, UNLEARNX_CPU_ISA=isa)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] in ("base", "avx2", "avx512")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wrapper_matches_reference_on_every_backend(dtype):
    params, f, d = make_case(SIZES, dtype)
    ref = clone(params)
    c_ref = ssd_dampen_reference(ref, f, d, 5.0, 0.8)
    c = ux.ops.ssd_dampen_(params, f, d, alpha=5.0, lam=0.8)
    assert int(c) == int(c_ref)
    for a, b in zip(params, ref):
        assert torch.equal(a.float(), b.float())


def test_non_contiguous_inputs():
    base = torch.randn(64, 48)
    f_full = torch.rand(48, 64) * 20
    d_full = torch.rand(48, 64)
    p = base.t()  # non-contiguous view [48, 64]
    f = f_full[:, :]  # contiguous
    d = d_full.t().contiguous().t()  # non-contiguous, same values
    expect = p.clone()
    ssd_dampen_reference([expect], [f], [d.contiguous()], 10.0, 1.0)
    c = ux.ops.ssd_dampen_([p], [f], [d], alpha=10.0, lam=1.0)
    assert torch.equal(p, expect)
    assert torch.equal(base.t(), expect)  # the original storage was updated in place
    assert int(c) > 0


def test_zero_nan_inf_policy():
    theta = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    f = torch.tensor([0.0, 1.0, 0.0, float("nan"), 1.0, float("inf"), 1.0])
    d = torch.tensor([0.0, 0.0, 1.0, 0.0, float("nan"), 1.0, float("inf")])
    before = theta.clone()
    c = ux.ops.ssd_dampen_([theta], [f], [d], alpha=10.0, lam=1.0)
    assert not torch.isnan(theta).any()
    # only f>0 with d=0 (index 1) and f=inf (index 5) are selected; both go to zero by the formula
    assert int(c) == 2
    assert theta[1] == 0 and theta[5] == 0
    keep = [0, 2, 3, 4, 6]
    assert torch.equal(theta[keep], before[keep])


def test_never_amplifies():
    params, f, d = make_case([4096])
    before = params[0].clone()
    ux.ops.ssd_dampen_(params, f, d, alpha=0.0, lam=50.0)
    assert (params[0].abs() <= before.abs()).all()


def test_bad_inputs_name_the_argument():
    p, f, d = make_case([7, 9])
    with pytest.raises(ValueError, match="forget_importance has 1 tensors but params has 2"):
        ux.ops.ssd_dampen_(p, f[:1], d)
    with pytest.raises(ValueError, match=r"full_importance\[1\] has shape \[8\]"):
        ux.ops.ssd_dampen_(p, f, [d[0], torch.rand(8)])
    with pytest.raises(TypeError, match=r"forget_importance\[0\] must be float32"):
        ux.ops.ssd_dampen_(p, [f[0].double(), f[1]], d)
    with pytest.raises(TypeError, match=r"params\[0\] must be float32 or bfloat16"):
        ux.ops.ssd_dampen_([p[0].half(), p[1].half()], f, d)
    with pytest.raises(TypeError, match=r"params\[1\] is torch.bfloat16 but params\[0\] is torch.float32"):
        ux.ops.ssd_dampen_([p[0], p[1].bfloat16()], f, d)
    with pytest.raises(ValueError, match=r"forget_importance\[1\] is on meta"):
        ux.ops.ssd_dampen_(p, [f[0], f[1].to("meta")], d)
    with pytest.raises(ValueError, match="alpha must be finite"):
        ux.ops.ssd_dampen_(p, f, d, alpha=float("nan"))
    with pytest.raises(ValueError, match="lam must be >= 0"):
        ux.ops.ssd_dampen_(p, f, d, lam=-1.0)
    with pytest.raises(TypeError, match="params must be a list or tuple of tensors"):
        ux.ops.ssd_dampen_(p[0], f, d)


@native
def test_native_op_rejects_bad_input_directly():
    p, f, d = make_case([7, 9])
    with pytest.raises(RuntimeError, match="full_importance has 1 tensors but params has 2"):
        torch.ops.unlearnx.ssd_dampen_(p, f, d[:1], 1.0, 1.0)
    with pytest.raises(RuntimeError, match=r"params\[0\] must be contiguous"):
        torch.ops.unlearnx.ssd_dampen_([torch.randn(4, 4).t()], [torch.rand(4, 4)], [torch.rand(4, 4)], 1.0, 1.0)
    with pytest.raises(RuntimeError, match=r"forget_importance\[1\] must be float32"):
        torch.ops.unlearnx.ssd_dampen_(p, [f[0], f[1].double()], d, 1.0, 1.0)
    with pytest.raises(RuntimeError, match=r"forget_importance\[0\] has shape \[3\] but params\[0\] has shape \[7\]"):
        torch.ops.unlearnx.ssd_dampen_(p, [torch.rand(3), f[1]], d, 1.0, 1.0)


@native
def test_opcheck():
    p, f, d = make_case([7, 1023])
    torch.library.opcheck(torch.ops.unlearnx.ssd_dampen_.default, (p, f, d, 10.0, 1.0))


@native
def test_torch_compile_fullgraph():
    p, f, d = make_case([7, 1023])
    ref = clone(p)
    c_ref = ssd_dampen_reference(ref, f, d, 10.0, 1.0)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(params, fi, di):
        return torch.ops.unlearnx.ssd_dampen_(params, fi, di, 10.0, 1.0)

    c = step(p, f, d)
    assert int(c) == int(c_ref)
    assert all(torch.equal(a, b) for a, b in zip(p, ref))


def test_triton_kernel_under_interpreter():
    pytest.importorskip("triton")
    import os

    assert os.environ.get("TRITON_INTERPRET") == "1"
    from unlearnx.kernels.ssd import ssd_dampen_triton

    p, f, d = make_case([1, 7, 300, 0])
    ref = clone(p)
    c_ref = ssd_dampen_reference(ref, f, d, 10.0, 1.0)
    c = ssd_dampen_triton(p, f, d, 10.0, 1.0)
    assert int(c) == int(c_ref)
    assert all(torch.equal(a, b) for a, b in zip(p, ref))


def test_backend_selection(monkeypatch):
    monkeypatch.setenv("UNLEARNX_BACKEND", "reference")
    assert _native.select_backend("cpu") == "reference"
    monkeypatch.setenv("UNLEARNX_BACKEND", "bogus")
    with pytest.raises(ValueError, match="UNLEARNX_BACKEND='bogus'"):
        _native.select_backend("cpu")
    monkeypatch.setenv("UNLEARNX_BACKEND", "auto")
    assert _native.select_backend("cpu") == ("native" if _native.native_loaded() else "reference")
    monkeypatch.setenv("UNLEARNX_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="UNLEARNX_BACKEND=triton but no Triton kernel can run on cpu"):
        _native.select_backend("cpu")
    if _native.triton_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert _native.select_backend("cpu") == "triton"


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("provider", ["native", "triton"])
def test_cuda_matches_cpu_reference(provider, dtype):
    # 400 tensors: more than one launch's tensor table (320) on the native CUDA path
    sizes = [1, 7, 1023, 65537] + [int(s) for s in torch.randint(1, 5000, (396,))]
    params, f, d = make_case(sizes, dtype)
    ref = clone(params)
    c_ref = ssd_dampen_reference(ref, f, d, 10.0, 1.0)
    gp, gf, gd = [t.cuda() for t in params], [t.cuda() for t in f], [t.cuda() for t in d]
    if provider == "native":
        if not _native.native_has_device(torch.device("cuda")):
            pytest.skip("native CUDA kernels not compiled")
        c = torch.ops.unlearnx.ssd_dampen_(gp, gf, gd, 10.0, 1.0)
    else:
        pytest.importorskip("triton")
        from unlearnx.kernels.ssd import ssd_dampen_triton

        c = ssd_dampen_triton(gp, gf, gd, 10.0, 1.0)
    assert c.device.type == "cuda"
    assert int(c) == int(c_ref)
    for a, b in zip(gp, ref):
        assert torch.equal(a.cpu().float(), b.float())
