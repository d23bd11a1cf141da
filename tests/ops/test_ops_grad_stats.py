import os
import subprocess
import sys

import pytest
import torch

import unlearnx as ux
from unlearnx import _native
from unlearnx.ops.grad_stats import linear_grad_sq_norm_accum_reference, linear_sq_grad_accum_reference

native = pytest.mark.skipif(not _native.native_loaded(), reason="native library not built")

# (B, T, d_in, d_out): T = 1 and 2-D inputs, odd sizes around the register tile (8/6 x 32/16/8),
# macro-tile edges (> 256), a long T where the explicit norm path is taken (2 T^2 >= d_in d_out).
SHAPES = [(1, 1, 1, 1), (3, 1, 7, 5), (2, 7, 33, 17), (4, 13, 65, 31), (2, 3, 300, 9), (2, 40, 3, 2), (5, 2, 1, 257)]


def make(B, T, d_in, d_out, dtype=torch.float32, seed=0, two_d=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, d_in, generator=g)
    go = torch.randn(B, T, d_out, generator=g)
    if two_d:
        x, go = x[:, 0], go[:, 0]
    return x.to(dtype), go.to(dtype)


def expected(x, go):
    """The definitions in float64 through einsum (independent of the code under test)."""
    X = x.double().reshape(x.shape[0], -1, x.shape[-1])
    G = go.double().reshape(go.shape[0], -1, go.shape[-1])
    P = torch.einsum("bto,bti->boi", G, X)  # every per-sample gradient, materialized
    s = G.sum(1)
    return {
        "fisher": P.square().sum(0),
        "grad": P.sum(0),
        "bias": s.square().sum(0),
        "norms": P.square().sum((1, 2)),
        "norms_bias": P.square().sum((1, 2)) + s.square().sum(1),
    }


def close(got, want, rtol=2e-5):
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol * (want.abs().max().item() + 1e-30))


def run_all(fn_sq, fn_norm, x, go):
    d_out, d_in = go.shape[-1], x.shape[-1]
    F, FB, GW = torch.zeros(d_out, d_in), torch.zeros(d_out), torch.zeros(d_out, d_in)
    N, NB = torch.zeros(x.shape[0]), torch.zeros(x.shape[0])
    fn_sq(F, x, go, FB, GW)
    fn_norm(N, x, go, False)
    fn_norm(NB, x, go, True)
    return {"fisher": F, "grad": GW, "bias": FB, "norms": N, "norms_bias": NB}


def wrapper_sq(F, x, go, FB, GW):
    ux.ops.linear_sq_grad_accum_(F, x, go, fisher_bias=FB, grad_weight=GW)


def wrapper_norm(N, x, go, bias):
    ux.ops.linear_grad_sq_norm_accum_(N, x, go, bias=bias)


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_definition(shape):
    x, go = make(*shape)
    got = run_all(linear_sq_grad_accum_reference, linear_grad_sq_norm_accum_reference, x, go)
    for k, v in expected(x, go).items():
        close(got[k], v)


@native
@pytest.mark.parametrize("shape, two_d", [(s, False) for s in SHAPES] + [(s, True) for s in SHAPES if s[1] == 1])
def test_native_matches_definition(shape, two_d):
    x, go = make(*shape, two_d=two_d)
    got = run_all(torch.ops.unlearnx.linear_sq_grad_accum_, torch.ops.unlearnx.linear_grad_sq_norm_accum_, x, go)
    for k, v in expected(x, go).items():
        close(got[k], v)


@native
@pytest.mark.parametrize("shape", [(2, 7, 33, 17), (3, 300, 41, 37), (2, 40, 3, 2)])
def test_native_reads_channel_major_views(shape):
    # [B, d, T] buffers seen as [B, T, d] (the conv path's im2col and output gradient): no copy
    x, go = make(*shape)
    xv = x.transpose(1, 2).contiguous().transpose(1, 2)
    gv = go.transpose(1, 2).contiguous().transpose(1, 2)
    assert not xv.is_contiguous() and not gv.is_contiguous()
    got = run_all(torch.ops.unlearnx.linear_sq_grad_accum_, torch.ops.unlearnx.linear_grad_sq_norm_accum_, xv, gv)
    for k, v in expected(x, go).items():
        close(got[k], v)


@pytest.mark.parametrize("shape", [(3, 1, 7, 5), (4, 13, 65, 31)])
def test_wrapper_bf16_accumulates_in_fp32(shape):
    x, go = make(*shape, dtype=torch.bfloat16)
    got = run_all(wrapper_sq, wrapper_norm, x, go)
    for k, v in expected(x, go).items():  # exact products of the bf16 values, fp32 accumulation
        assert got[k].dtype == torch.float32
        close(got[k], v, rtol=1e-4)


def test_wrapper_accumulates_and_handles_strides():
    x, go = make(3, 6, 20, 12)
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, non-contiguous
    F = torch.zeros(20, 12).t()  # a non-contiguous [12, 20] accumulator
    ux.ops.linear_sq_grad_accum_(F, xt, go)
    ux.ops.linear_sq_grad_accum_(F, x, go)
    close(F, 2 * expected(x, go)["fisher"])


@native
def test_native_is_deterministic_across_thread_counts():
    x, go = make(4, 33, 300, 270, seed=1)
    outs = []
    for threads in (1, 2):
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            outs.append(run_all(torch.ops.unlearnx.linear_sq_grad_accum_, torch.ops.unlearnx.linear_grad_sq_norm_accum_, x, go))
        finally:
            torch.set_num_threads(prev)
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k]), k


@native
@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_compiled_isa_matches_definition(isa):
    # The ISA is chosen once per process, so each one runs in its own interpreter.
    code = (
        "import sys, torch, unlearnx; from unlearnx import _native\n"
        "sys.path.insert(0, 'tests/ops'); import test_ops_grad_stats as t\n"
        "for shape in t.SHAPES:\n"
        "  x, go = t.make(*shape)\n"
        "  got = t.run_all(torch.ops.unlearnx.linear_sq_grad_accum_, torch.ops.unlearnx.linear_grad_sq_norm_accum_, x, go)\n"
        "  [t.close(got[k], v) for k, v in t.expected(x, go).items()]\n"
        "print(_native.build_info()['cpu_isa_active'])\n"
    )
    env = dict(os.environ, UNLEARNX_CPU_ISA=isa)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] in ("base", "avx2", "avx512")


@native
def test_opcheck():
    x, go = make(2, 5, 9, 7)
    torch.library.opcheck(torch.ops.unlearnx.linear_sq_grad_accum_.default,
                          (torch.zeros(7, 9), x, go, torch.zeros(7), torch.zeros(7, 9)))
    torch.library.opcheck(torch.ops.unlearnx.linear_sq_grad_accum_.default, (torch.zeros(7, 9), x, go, None, None))
    torch.library.opcheck(torch.ops.unlearnx.linear_grad_sq_norm_accum_.default, (torch.zeros(2), x, go, True))


@native
def test_torch_compile_fullgraph():
    x, go = make(2, 5, 9, 7)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(F, N, x, go):
        torch.ops.unlearnx.linear_sq_grad_accum_(F, x, go, None, None)
        torch.ops.unlearnx.linear_grad_sq_norm_accum_(N, x, go, False)
        return F.sum() + N.sum()

    F, N = torch.zeros(7, 9), torch.zeros(2)
    step(F, N, x, go)
    want = expected(x, go)
    close(F, want["fisher"])
    close(N, want["norms"])


def test_bad_inputs_name_the_argument():
    x, go = make(2, 5, 9, 7)
    F = torch.zeros(7, 9)
    with pytest.raises(ValueError, match=r"grad_out has shape \[2, 4, 7\] but x has shape \[2, 5, 9\]"):
        ux.ops.linear_sq_grad_accum_(F, x, go[:, :4])
    with pytest.raises(ValueError, match=r"x must be \[B, d_in\] or \[B, T, d_in\]"):
        ux.ops.linear_sq_grad_accum_(F, x[0, 0], go[0, 0])
    with pytest.raises(ValueError, match=r"fisher has shape \[9, 7\] but must be \[7, 9\]"):
        ux.ops.linear_sq_grad_accum_(torch.zeros(9, 7), x, go)
    with pytest.raises(TypeError, match="fisher must be float32, got float64"):
        ux.ops.linear_sq_grad_accum_(F.double(), x, go)
    with pytest.raises(TypeError, match="x must be float32 or bfloat16, got float16"):
        ux.ops.linear_sq_grad_accum_(F, x.half(), go.half())
    with pytest.raises(TypeError, match="grad_out is torch.bfloat16 but x is torch.float32"):
        ux.ops.linear_sq_grad_accum_(F, x, go.bfloat16())
    with pytest.raises(ValueError, match=r"fisher_bias has shape \[9\] but must be \[7\]"):
        ux.ops.linear_sq_grad_accum_(F, x, go, fisher_bias=torch.zeros(9))
    with pytest.raises(ValueError, match=r"grad_weight has shape \[7\] but must be \[7, 9\]"):
        ux.ops.linear_sq_grad_accum_(F, x, go, grad_weight=torch.zeros(7))
    with pytest.raises(ValueError, match="fisher is on meta but x is on cpu"):
        ux.ops.linear_sq_grad_accum_(F.to("meta"), x, go)
    with pytest.raises(ValueError, match=r"norms has shape \[3\] but must be \[2\]"):
        ux.ops.linear_grad_sq_norm_accum_(torch.zeros(3), x, go)
    with pytest.raises(TypeError, match="bias must be a bool"):
        ux.ops.linear_grad_sq_norm_accum_(torch.zeros(2), x, go, bias=1)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ux.ops.linear_grad_sq_norm_accum_(torch.zeros(2), [1.0], go)


@native
def test_native_op_rejects_bad_input_directly():
    x, go = make(2, 5, 9, 7)
    op, nop = torch.ops.unlearnx.linear_sq_grad_accum_, torch.ops.unlearnx.linear_grad_sq_norm_accum_
    with pytest.raises(RuntimeError, match=r"grad_out has shape \[2, 4, 7\] but x has shape \[2, 5, 9\]"):
        op(torch.zeros(7, 9), x, go[:, :4], None, None)
    with pytest.raises(RuntimeError, match=r"fisher has shape \[7, 8\] but must be \[7, 9\]"):
        op(torch.zeros(7, 8), x, go, None, None)
    with pytest.raises(RuntimeError, match="fisher must be contiguous"):
        op(torch.zeros(9, 7).t(), x, go, None, None)
    with pytest.raises(RuntimeError, match="fisher must be float32"):
        op(torch.zeros(7, 9, dtype=torch.float64), x, go, None, None)
    with pytest.raises(RuntimeError, match="x must be float32 or bfloat16"):
        op(torch.zeros(7, 9), x.double(), go.double(), None, None)
    with pytest.raises(RuntimeError, match="grad_out must have the dtype of x"):
        op(torch.zeros(7, 9), x, go.bfloat16(), None, None)
    with pytest.raises(RuntimeError, match=r"norms has shape \[5\] but must be \[2\]"):
        nop(torch.zeros(5), x, go, False)


def test_triton_kernel_under_interpreter():
    pytest.importorskip("triton")
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from unlearnx.kernels.grad_stats import MODE_ADD, MODE_NORM, MODE_SQUARE, linear_tiles_triton

    for shape in [(2, 3, 5, 6), (3, 20, 17, 18)]:
        x, go = make(*shape)
        want = expected(x, go)
        F, GW, N = torch.zeros(shape[3], shape[2]), torch.zeros(shape[3], shape[2]), torch.zeros(shape[0])
        linear_tiles_triton(MODE_SQUARE, x, go, F, GW, None)
        linear_tiles_triton(MODE_NORM, x, go, None, None, N)
        close(F, want["fisher"])
        close(GW, want["grad"])
        close(N, want["norms"])
    # T = 1 through the samples-as-K form used by the wrapper
    x, go = make(5, 1, 7, 3, two_d=True)
    F = torch.zeros(3, 7)
    linear_tiles_triton(MODE_ADD, (x * x).unsqueeze(0), (go * go).unsqueeze(0), F, None, None)
    close(F, expected(x, go)["fisher"])


def test_triton_backend_through_the_wrapper(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("UNLEARNX_BACKEND", "triton")
    for shape, two_d in [((3, 1, 7, 5), True), ((2, 7, 17, 9), False), ((2, 9, 2, 3), False)]:
        x, go = make(*shape, two_d=two_d)
        got = run_all(wrapper_sq, wrapper_norm, x, go)
        for k, v in expected(x, go).items():
            close(got[k], v)
