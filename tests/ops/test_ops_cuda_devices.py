"""Every op on CUDA tensors (native CUDA kernel or Triton) against its CPU reference.

These run only where torch sees a GPU (scripts/gpu_check.sh selects them with `-k cuda`); on CPU
machines they skip. The CPU tests of each op family cover the same semantics in depth.
"""
import pytest
import torch

import unlearnx as ux
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
