"""Every op on CUDA tensors (native CUDA kernel or Triton) against its CPU reference.

These run only where torch sees a GPU (scripts/gpu_check.sh selects them with `-k cuda`); on CPU
machines they skip. The CPU tests of each op family cover the same semantics in depth.
`test_cuda_every_op_matches_reference` runs every op of unlearnx.ops.registry.OPS (so a new op is
included as soon as it is listed) through the dispatcher (whatever CUDA kernel this build
registered) and through its Triton implementation, fp32 and bf16, odd sizes, and for list ops more
tensors than one launch's tensor table holds.
"""
import pytest
import torch

import unlearnx as ux
from unlearnx import _native
from unlearnx.ops import registry
from unlearnx.ops.grad_stats import linear_sq_grad_accum_reference
from unlearnx.ops.logit_diff import logit_diff_logprobs_reference, logit_diff_sample_reference
from unlearnx.ops.router_stats import moe_router_stats_reference
from unlearnx.ops.token_stats import token_stats_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEV = "cuda"


def test_cuda_token_stats_matches_reference():
    logits, labels = torch.randn(37, 1000) * 3, torch.randint(0, 1000, (37,))
    labels[5] = -100
    got = ux.ops.token_stats(logits.to(DEV), labels.to(DEV))
    want = token_stats_reference(logits, labels)
    for g, w in zip(got, want):
        assert torch.allclose(g.cpu(), w, atol=1e-4, rtol=1e-4)


def test_cuda_router_stats_matches_reference():
    logits, flags = torch.randn(300, 8), torch.randint(0, 3, (300,))
    stats = ux.ops.router_stats_buffer(8, device=DEV)
    ux.ops.moe_router_stats_(stats, logits.to(DEV), flags.to(DEV), top_k=2)
    assert torch.allclose(stats.cpu(), moe_router_stats_reference(logits, flags, 2), atol=1e-3, rtol=1e-4)


def test_cuda_global_kth_value_matches_kthvalue():
    xs = [torch.randn(1000), torch.randn(37, 13), torch.randn(5)]
    k = 700
    got = ux.ops.global_kth_value([x.to(DEV) for x in xs], k)
    assert float(got) == float(torch.cat([x.flatten() for x in xs]).kthvalue(k).values)


def test_cuda_linear_sq_grad_accum_matches_reference():
    x, g = torch.randn(4, 9, 24), torch.randn(4, 9, 16)
    fisher = torch.zeros(16, 24, device=DEV)
    ux.ops.linear_sq_grad_accum_(fisher, x.to(DEV), g.to(DEV))
    want = torch.zeros(16, 24)
    linear_sq_grad_accum_reference(want, x, g)
    assert torch.allclose(fisher.cpu(), want, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("mode", ["uld", "whp"])
def test_cuda_logit_diff_matches_reference(mode):
    zt, za = torch.randn(6, 5000) * 2, torch.randn(6, 5000)
    kw = dict(mode=mode, weight=0.8, relative_top=0.05)
    lp = ux.ops.logit_diff_logprobs(zt.to(DEV), za.to(DEV), **kw)
    assert torch.allclose(lp.cpu(), logit_diff_logprobs_reference(zt, za, **kw), atol=1e-4)
    tok, _ = ux.ops.logit_diff_sample(zt.to(DEV), za.to(DEV), greedy=True, **kw)
    want, _ = logit_diff_sample_reference(zt, za, greedy=True, **kw)
    assert torch.equal(tok.cpu(), want)
    tok, _ = ux.ops.logit_diff_sample(zt.to(DEV), za.to(DEV), temperature=0.7, top_k=50, top_p=0.9, seed=3, **kw)
    want, _ = logit_diff_sample_reference(zt, za, temperature=0.7, top_k=50, top_p=0.9, seed=3, **kw)
    assert (tok.cpu() == want).float().mean() >= 0.8  # the same noise stream; rounding may flip near-ties


_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=1e-3, atol=1e-3)}


@pytest.mark.parametrize("path", ["dispatcher", "triton"])
@pytest.mark.parametrize("many", [False, True], ids=["few", "many"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", [s.name for s in registry.OPS])
def test_cuda_every_op_matches_reference(name, dtype, many, path, op_kit):
    spec = registry.op_spec(name)
    if many and name not in op_kit.list_ops:
        pytest.skip("not a list op")
    if path == "dispatcher" and not _native.native_loaded():
        pytest.skip("native library not loaded: torch.ops.unlearnx is not defined")
    if path == "triton":
        pytest.importorskip("triton")
        if spec.triton is None:
            pytest.skip("no Triton implementation")
    args = op_kit.make(name, dtype=dtype, many=many)
    want = op_kit.run(registry.resolve(spec.reference), args)
    fn = getattr(torch.ops.unlearnx, name) if path == "dispatcher" else registry.resolve(spec.triton)
    got = op_kit.run(fn, op_kit.to(args, DEV))
    op_kit.assert_same(got, want, what=f"{name} {path}", **_TOL[dtype])


def test_cuda_coverage_and_backend_table():
    table = registry.check_coverage()
    for r in table:
        assert r["cuda"] in ("native", "triton", "reference"), r


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_token_stats_backward_matches_reference(dtype):
    logits, labels = (torch.randn(2, 19, 3001) * 2).to(dtype), torch.randint(0, 3001, (2, 19))
    labels[0, 3] = -100
    z = logits.to(DEV).requires_grad_()
    logp, _, _ = ux.ops.token_stats(z, labels.to(DEV))
    (logp * torch.arange(19, device=DEV)).sum().backward()
    ref = logits.float().requires_grad_()
    (token_stats_reference(ref, labels)[0] * torch.arange(19)).sum().backward()
    torch.testing.assert_close(z.grad.float().cpu(), ref.grad, **_TOL[dtype])


@pytest.mark.parametrize("name", [s.name for s in registry.OPS])
def test_cuda_opcheck(name, op_kit):
    """Schema, fake kernel and autograd registration agree with whatever CUDA kernel this build has."""
    if not _native.native_loaded():
        pytest.skip("native library not loaded: torch.ops.unlearnx is not defined")
    args = op_kit.to(op_kit.make(name, small=True), DEV)
    if name == "token_stats":
        args[0].requires_grad_()
    torch.library.opcheck(getattr(torch.ops.unlearnx, name).default, tuple(args))
