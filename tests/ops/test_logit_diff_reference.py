"""The logit-difference reference defines the op: check it against direct formulations."""
import math

import pytest
import torch
from scipy.stats import chisquare

from unlearnx.ops.logit_diff import (
    gumbel_noise_reference,
    logit_diff_combine_reference,
    logit_diff_logprobs,
    logit_diff_sample,
    logit_diff_sample_reference,
)


def test_uld_filter_is_the_papers_logprob_filter():
    g = torch.Generator().manual_seed(0)
    zt, za = torch.randn(4, 50, generator=g) * 3, torch.randn(4, 50, generator=g)
    r, w = 0.1, 0.8
    c = logit_diff_combine_reference(zt, za, mode="uld", weight=w, relative_top=r)
    lp = zt.log_softmax(-1)
    kth = lp.sort(-1, descending=True).values[:, 4:5]  # floor(0.1 * 50) = 5th largest
    thr = torch.minimum(lp.amax(-1, keepdim=True) + math.log(r), kth)
    expect = torch.where(lp >= thr - 1e-6, zt - w * za, zt)
    assert torch.allclose(c, expect, atol=1e-5)
    assert ((lp >= thr).sum(-1) >= 5).all()  # at least floor(r V) tokens get the assistant term


def test_whp_mix_and_none_mode():
    zt, za = torch.tensor([[1.0, 2.0, float("-inf")]]), torch.tensor([[3.0, 1.0, 0.0]])
    c = logit_diff_combine_reference(zt, za, mode="whp", weight=2.0)
    assert torch.equal(c, torch.tensor([[1.0 - 4.0, 2.0, float("-inf")]]))
    assert torch.equal(logit_diff_combine_reference(zt, None, mode="none"), zt)


def test_top_k_and_top_p_keep_ties_and_the_smallest_nucleus():
    c = torch.tensor([[3.0, 1.0, 1.0, 0.0, -1.0]])
    zeros = torch.zeros_like(c)
    _, lp = logit_diff_sample_reference(c, zeros, mode="none", top_k=2, greedy=True)
    # top-k = 2 keeps the max and both tied runners-up: 3 tokens share the mass.
    kept = torch.tensor([3.0, 1.0, 1.0]).softmax(0)
    assert torch.allclose(lp.exp(), kept[:1])
    q = c.softmax(-1)[0]
    tok, lp = logit_diff_sample_reference(c, zeros, mode="none", top_p=float(q[0]) + 1e-3, greedy=True)
    nucleus = torch.tensor([3.0, 1.0, 1.0]).softmax(0)  # the mass above each tied runner-up is q0 < top_p
    assert int(tok) == 0 and torch.allclose(lp.exp(), nucleus[:1])


def test_sampling_matches_the_distribution_chi_square():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    draws = torch.stack([logit_diff_sample(logits, None, mode="none", seed=7, offset=i)[0] for i in range(4000)])
    counts = torch.bincount(draws.flatten(), minlength=6).double()
    expected = logits.softmax(-1)[0].double() * counts.sum()
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3
    a = logit_diff_sample(logits, None, mode="none", seed=3, offset=5)[0]
    assert torch.equal(a, logit_diff_sample(logits, None, mode="none", seed=3, offset=5)[0])


def test_gumbel_noise_is_in_range_and_row_distinct():
    g = gumbel_noise_reference(123, 0, 3, 1000)
    assert torch.isfinite(g).all() and not torch.equal(g[0], g[1])
    assert torch.equal(gumbel_noise_reference(123, 1, 2, 1000)[0], g[1])  # offset shifts the row streams
    assert abs(g.mean().item() - 0.5772) < 0.05  # Euler–Mascheroni: the Gumbel mean


def test_logprobs_normalized_and_bad_arguments_named():
    zt, za = torch.randn(2, 3, 40), torch.randn(2, 3, 40)
    lp = logit_diff_logprobs(zt, za, weight=1.0, relative_top=0.05)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2, 3), atol=1e-5)
    with pytest.raises(ValueError, match="relative_top"):
        logit_diff_logprobs(zt, za, relative_top=0.0)
    with pytest.raises(ValueError, match="assistant"):
        logit_diff_sample(zt[0], za[0, :2])
    with pytest.raises(ValueError, match="needs assistant"):
        logit_diff_sample(zt[0], None)
    with pytest.raises(ValueError, match="top_p"):
        logit_diff_sample(zt[0], za[0], top_p=1.5)
