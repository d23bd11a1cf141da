"""Schema-level sample inputs for every op of unlearnx.ops.registry.OPS (fixture `op_kit`).

`op_kit.make(name, device=..., dtype=..., many=..., small=...)` returns the positional arguments of
`torch.ops.unlearnx.<name>` (odd sizes; `many` puts more tensors in the lists than one CUDA launch's
tensor table holds, 320). test_ops_registry.py checks that every op has a sample builder, so a new
op cannot skip the backend tests below (CPU here, CUDA in test_ops_cuda_devices.py).
"""
from types import SimpleNamespace

import pytest
import torch

LAUNCH_TABLE = 320  # tensors per launch of the native multi-tensor CUDA kernels (docs/building.md)


def _sizes(many: bool, small: bool) -> list[int]:
    if many:
        return [1, 7, 1023] + [int(s) for s in torch.randint(1, 3000, (LAUNCH_TABLE + 17,))]
    return [1, 7, 33, 130] if small else [1, 7, 1023, 65537, 300]


def _ssd(device, dtype, many, small):
    sizes = _sizes(many, small)
    params = [torch.randn(n).to(dtype) for n in sizes]
    f = [torch.rand(n) * 4 for n in sizes]
    d = [torch.rand(n) for n in sizes]
    return [[t.to(device) for t in params], [t.to(device) for t in f], [t.to(device) for t in d], 2.0, 0.7]


def _values(device, dtype, many, small):
    sizes = _sizes(many, small)
    xs = [torch.randn(n).to(dtype) for n in sizes]
    xs[1][2:5] = 0.5  # ties
    return [x.to(device) for x in xs]


def _global_select(device, dtype, many, small):
    xs = _values(device, dtype, many, small)
    n = sum(x.numel() for x in xs)
    return [xs, n // 3 + 1, True, True, True]


def _threshold_masks(device, dtype, many, small):
    xs = _values(device, dtype, many, small)
    limits = torch.tensor([x.numel() // 2 for x in xs], dtype=torch.int64, device=device)
    return [xs, torch.tensor(0.5, device=device), limits, False, True, True]


def _masks(device, many, small):
    sizes = _sizes(many, small)
    masks = []
    for i, n in enumerate(sizes):
        m = torch.rand(n) < 0.4
        if i % 2:  # alternate bool and 1-bit packed masks
            m = torch.nn.functional.pad(m.to(torch.uint8), (0, (-n) % 8)).view(-1, 8)
            m = (m << torch.arange(8, dtype=torch.uint8)).sum(1, dtype=torch.uint8)
        masks.append(m.to(device))
    return sizes, masks


def _mask_counts(device, dtype, many, small):
    return [_masks(device, many, small)[1]]


def _masked_restore(device, dtype, many, small):
    sizes, masks = _masks(device, many, small)
    params = [torch.randn(n).to(dtype).to(device) for n in sizes]
    originals = [torch.randn(n).to(dtype).to(device) for n in sizes]
    states = [torch.randn(n).to(device) for n in sizes[::3]]
    owner = list(range(0, len(sizes), 3))
    return [params, originals, masks, states, owner]


def _linear(device, dtype, small):
    B, T, d_in, d_out = (3, 5, 17, 19) if small else (5, 37, 131, 67)
    x = torch.randn(B, T, d_in).to(dtype).to(device)
    g = torch.randn(B, T, d_out).to(dtype).to(device)
    return B, d_in, d_out, x, g


def _linear_sq(device, dtype, many, small):
    B, d_in, d_out, x, g = _linear(device, dtype, small)
    return [torch.rand(d_out, d_in).to(device), x, g, torch.rand(d_out).to(device), torch.zeros(d_out, d_in).to(device)]


def _linear_norm(device, dtype, many, small):
    B, d_in, d_out, x, g = _linear(device, dtype, small)
    return [torch.rand(B).to(device), x, g, True]


def _token_stats(device, dtype, many, small):
    N, V = (9, 50) if small else (37, 5003)
    logits = (torch.randn(N, V) * 3).to(dtype)
    labels = torch.randint(0, V, (N,))
    labels[2] = -100
    return [logits.to(device), labels.to(device), -100]


def _router(device, dtype, many, small):
    T, E = (40, 8) if small else (3001, 60)
    return [torch.zeros(2, E, 4).to(device), torch.randn(T, E).to(dtype).to(device), torch.randint(0, 3, (T,)).to(device),
            4, True]


def _logit_pair(device, dtype, small):
    B, V = (3, 64) if small else (7, 5003)
    return (torch.randn(B, V) * 2).to(dtype).to(device), torch.randn(B, V).to(dtype).to(device)


def _logit_diff_sample(device, dtype, many, small):
    zt, za = _logit_pair(device, dtype, small)
    # greedy (exact tokens) with top-k; top_p = 1: a nucleus boundary can move with rounding between
    # backends and change the chosen token's log-prob (test_logit_diff_op.py covers top-p).
    return [zt, za, 1, 0.8, 0.1, 0.7, 20, 1.0, True, 3, 0]


def _logit_diff_logprobs(device, dtype, many, small):
    zt, za = _logit_pair(device, dtype, small)
    return [zt, za, 2, 0.5, 0.1, 0.9]


BUILDERS = {
    "ssd_dampen_": _ssd,
    "global_select": _global_select,
    "threshold_masks": _threshold_masks,
    "mask_counts": _mask_counts,
    "masked_restore_": _masked_restore,
    "linear_sq_grad_accum_": _linear_sq,
    "linear_grad_sq_norm_accum_": _linear_norm,
    "token_stats": _token_stats,
    "moe_router_stats_": _router,
    "logit_diff_sample": _logit_diff_sample,
    "logit_diff_logprobs": _logit_diff_logprobs,
}
# Ops whose list arguments can exceed one launch's tensor table.
LIST_OPS = ("ssd_dampen_", "global_select", "threshold_masks", "mask_counts", "masked_restore_")


def make_op_args(name, *, device="cpu", dtype=torch.float32, many=False, small=False):
    """Every value is drawn on the CPU (seed 1), so the same call gives the same values on any device."""
    torch.manual_seed(1)
    return BUILDERS[name](torch.device(device), dtype, many, small)


def _clone(v):
    if isinstance(v, torch.Tensor):
        return v.clone()
    if isinstance(v, list):
        return [_clone(t) for t in v]
    return v


def _to(v, device):
    if isinstance(v, torch.Tensor):
        return v.to(device)
    if isinstance(v, (list, tuple)):
        return type(v)(_to(t, device) for t in v)
    return v


def _flat(v):
    if isinstance(v, torch.Tensor):
        return [v]
    if isinstance(v, (list, tuple)):
        return [t for x in v for t in _flat(x)]
    return []


def run_op(fn, args, device="cpu"):
    """Calls fn on a copy of args; returns (output, the tensors of the mutated args) on `device`."""
    work = [_clone(a) for a in args]
    out = fn(*work)
    return _to(out, device), _to([a for a in work if _flat(a)], device)


def assert_same(got, want, *, rtol=1e-4, atol=1e-4, what="output"):
    """Exact for integer / bool tensors, allclose (fp32 view) for floating ones."""
    g, w = _flat(got), _flat(want)
    assert len(g) == len(w), f"{what}: {len(g)} tensors vs {len(w)}"
    for i, (a, b) in enumerate(zip(g, w)):
        assert a.shape == b.shape, f"{what}[{i}]: shape {list(a.shape)} vs {list(b.shape)}"
        if a.is_floating_point() or b.is_floating_point():
            torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=atol, equal_nan=True,
                                       msg=lambda m: f"{what}[{i}]: {m}")
        else:
            assert torch.equal(a, b), f"{what}[{i}]: {int((a != b).sum())} of {a.numel()} entries differ"


@pytest.fixture
def op_kit():
    return SimpleNamespace(builders=BUILDERS, list_ops=LIST_OPS, make=make_op_args, run=run_op, assert_same=assert_same,
                           to=_to)
