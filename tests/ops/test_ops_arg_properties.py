"""Property tests (hypothesis) for the op wrappers' argument checks (issue 25): over generated
dtypes, shapes, list lengths, scalars (NaN, inf, negative, wrong type) and NaN data, a call either
succeeds, and then agrees with a plain-PyTorch computation, or raises ValueError/TypeError whose
message names one of the op's arguments; it never raises anything else or crashes. Each property
also states independently which inputs are valid, so a check that refuses good input, or lets bad
input through to the kernels, fails the test."""
import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unlearnx.ops as ops
from unlearnx.ops.ssd import ssd_dampen_reference
from unlearnx.ops.token_stats import token_stats_reference

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int32, torch.int64, torch.bool,
          torch.uint8]
SCALARS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-3, 3),
                    st.sampled_from(["1.0", None, True, [1.0]]))


def outcome(call, names):
    """None if `call()` succeeds; else the ValueError/TypeError, asserted to name an argument."""
    try:
        call()
    except (ValueError, TypeError) as exc:
        assert any(n in str(exc) for n in names), f"message names none of {names}: {exc}"
        return exc
    return None


@st.composite
def tensor_lists(draw, max_len=3, nan=True):
    n = draw(st.integers(0, max_len))
    out = []
    for _ in range(n):
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=2))
        numel = math.prod(shape)
        values = draw(st.lists(st.floats(-4, 4, width=16), min_size=numel, max_size=numel))
        t = torch.tensor(values, dtype=torch.float32).reshape(shape)
        if nan and dtype.is_floating_point and numel and draw(st.booleans()) and draw(st.booleans()):
            t.view(-1)[draw(st.integers(0, numel - 1))] = float("nan")
        out.append(t.to(dtype))
    return out


def finite_real(v, low=-math.inf, high=math.inf):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return math.isfinite(v) and low <= v <= high


VALUES = (torch.float32, torch.bfloat16, torch.float16)


@SETTINGS
@given(xs=tensor_lists(), k=st.one_of(st.integers(-2, 20), st.sampled_from([1.0, True, "1", None])),
       largest=st.booleans(), absolute=st.booleans())
def test_global_select(xs, k, largest, absolute):
    n = sum(x.numel() for x in xs)
    valid = (bool(xs) and all(x.dtype in VALUES for x in xs) and type(k) is int and 1 <= k <= n
             and not any(torch.isnan(x.float()).any() for x in xs))
    got = {}
    err = outcome(lambda: got.setdefault("r", ops.global_select(xs, k, largest=largest, absolute=absolute)), ["xs", "k"])
    assert (err is None) == valid, err
    if valid:
        flat = torch.cat([x.float().flatten() for x in xs])
        flat = flat.abs() if absolute else flat
        want = torch.kthvalue(flat, n - k + 1 if largest else k).values
        assert float(got["r"][0]) == float(want)


@SETTINGS
@given(xs=tensor_lists(), q=SCALARS, interpolation=st.sampled_from(["linear", "lower", "midpoint", "cubic", ""]))
def test_global_quantile(xs, q, interpolation):
    n = sum(x.numel() for x in xs)
    valid = (bool(xs) and all(x.dtype in VALUES for x in xs) and n > 0 and finite_real(q, 0.0, 1.0)
             and interpolation in ("linear", "lower", "midpoint")
             and not any(torch.isnan(x.float()).any() for x in xs))
    got = {}
    err = outcome(lambda: got.setdefault("r", ops.global_quantile(xs, q, interpolation=interpolation)),
                  ["xs", "q", "interpolation"])
    assert (err is None) == valid, err
    if valid:
        want = torch.quantile(torch.cat([x.double().flatten() for x in xs]), q, interpolation=interpolation)
        assert abs(float(got["r"]) - float(want)) <= 1e-5 * (1 + abs(float(want)))


@SETTINGS
@given(xs=tensor_lists(nan=True), threshold=st.one_of(SCALARS, st.sampled_from(["t1", "t2"])),
       limits=st.sampled_from([None, "ok", "short", "int32"]), largest=st.booleans())
def test_threshold_masks(xs, threshold, limits, largest):
    if threshold == "t1":
        threshold = torch.tensor([0.5])
    elif threshold == "t2":
        threshold = torch.tensor([0.5, 1.0])
    tie = {None: None, "ok": torch.tensor([x.numel() for x in xs], dtype=torch.int64),
           "short": torch.zeros(max(len(xs) - 1, 0) if xs else 1, dtype=torch.int64),
           "int32": torch.tensor([x.numel() for x in xs], dtype=torch.int32)}[limits]
    thr_ok = (threshold.numel() == 1) if isinstance(threshold, torch.Tensor) else finite_real(threshold)
    valid = bool(xs) and all(x.dtype in VALUES for x in xs) and thr_ok and limits in (None, "ok")
    got = {}
    err = outcome(lambda: got.setdefault("r", ops.threshold_masks(xs, threshold, tie_limits=tie, largest=largest)),
                  ["xs", "threshold", "tie_limits"])
    assert (err is None) == valid, err
    if valid:
        t = float(threshold)
        for x, m in zip(xs, got["r"]):
            v = x.float()
            # default tie_limits keep every tie; NaN is never kept
            assert torch.equal(m, (v >= t) if largest else (v <= t))


@SETTINGS
@given(masks=tensor_lists(nan=False), numel=st.sampled_from([None, "right", "wrong-length", "wrong-bytes"]))
def test_mask_stats(masks, numel):
    masks = [m.bool() if m.dtype == torch.float32 else m for m in masks]  # more bool masks
    numels = {None: None, "right": [m.numel() * (8 if m.dtype == torch.uint8 else 1) for m in masks],
              "wrong-length": [1] * (len(masks) + 1),
              "wrong-bytes": [m.numel() * 8 + 9 for m in masks]}[numel]
    dtypes_ok = all(m.dtype in (torch.bool, torch.uint8) for m in masks)
    any_packed = any(m.dtype == torch.uint8 for m in masks)
    valid = dtypes_ok and (numel == "right" or (numel is None and not any_packed)
                           or (numel == "wrong-bytes" and not any_packed))
    got = {}
    err = outcome(lambda: got.setdefault("r", ops.mask_stats(masks, numel=numels)), ["masks", "numel"])
    assert (err is None) == valid, (err, [m.dtype for m in masks], numel)
    if valid:
        want = [int(m.sum()) if m.dtype == torch.bool else int(ops.unpack_mask(m, (m.numel() * 8,)).sum()) for m in masks]
        assert got["r"].kept.tolist() == want


@SETTINGS
@given(params=tensor_lists(nan=False), shift=st.sampled_from(["same", "fewer", "f64", "shape"]),
       alpha=SCALARS, lam=SCALARS)
def test_ssd_dampen(params, shift, alpha, lam):
    forget = [p.float().abs() * 3 + 0.1 for p in params]
    full = [p.float().abs() + 0.1 for p in params]
    if shift == "fewer" and params:
        forget = forget[:-1]
    elif shift == "f64":
        full = [f.double() for f in full]
    elif shift == "shape":
        full = [f.reshape(-1, 1) if f.dim() != 2 else f.flatten() for f in full]
    same_dtype = all(p.dtype == params[0].dtype for p in params)
    valid = (all(p.dtype in (torch.float32, torch.bfloat16) for p in params) and same_dtype
             and finite_real(alpha, 0.0) and finite_real(lam, 0.0)
             and (shift == "same" or not params or (shift == "shape" and all(f.dim() == 2 and f.shape[1] == 1 and
                                                                               p.dim() == 2 and p.shape[1] == 1
                                                                               for f, p in zip(full, params)))))
    work, ref = [p.clone() for p in params], [p.clone() for p in params]
    err = outcome(lambda: ops.ssd_dampen_(work, forget, full, alpha=alpha, lam=lam),
                  ["params", "forget_importance", "full_importance", "alpha", "lam"])
    assert (err is None) == valid, err
    if valid:
        ssd_dampen_reference(ref, forget, full, float(alpha), float(lam))
        assert all(torch.equal(a, b) for a, b in zip(work, ref))
    else:
        assert all(torch.equal(a, b) for a, b in zip(work, params))  # a refused call changes nothing


@SETTINGS
@given(rows=st.integers(0, 4), vocab=st.integers(0, 5), dtype=st.sampled_from(DTYPES),
       label_dtype=st.sampled_from([torch.int64, torch.int32, torch.float32]),
       label_shift=st.sampled_from([0, 0, 1, -7]), ignore_index=st.sampled_from([-100, 2, True, 1.5]),
       mismatch=st.booleans())
def test_token_stats(rows, vocab, dtype, label_dtype, label_shift, ignore_index, mismatch):
    logits = torch.randn(rows, vocab).to(dtype)
    labels = (torch.arange(rows) % max(vocab, 1) + label_shift).to(label_dtype)
    if mismatch:
        labels = labels[:-1] if rows else torch.zeros(1, dtype=label_dtype)
    ii_ok = type(ignore_index) is int
    in_range = all(int(v) == ignore_index or 0 <= int(v) < vocab for v in labels.tolist()) if ii_ok else False
    valid = (dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64) and label_dtype == torch.int64
             and ii_ok and not mismatch and (vocab > 0 or rows == 0) and in_range)
    got = {}
    err = outcome(lambda: got.setdefault("r", ops.token_stats(logits, labels, ignore_index=ignore_index)),
                  ["logits", "labels", "ignore_index"])
    assert (err is None) == valid, err
    if valid and rows and vocab:
        want = token_stats_reference(logits, labels, ignore_index)
        for a, b in zip(got["r"], want):
            assert torch.allclose(a.double(), b.double(), atol=1e-2, rtol=1e-2, equal_nan=True)


@SETTINGS
@given(tokens=st.integers(0, 4), experts=st.integers(0, 4), top_k=st.one_of(st.integers(-1, 5), st.just(True)),
       stats_shape=st.sampled_from(["ok", "bad"]), flags_dtype=st.sampled_from([torch.int64, torch.bool, torch.float32]),
       logits_dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64, torch.int64]))
def test_moe_router_stats(tokens, experts, top_k, stats_shape, flags_dtype, logits_dtype):
    logits = torch.randn(tokens, experts).to(logits_dtype)
    flags = (torch.arange(tokens) % 3).to(flags_dtype)
    stats = ops.router_stats_buffer(max(experts, 1)) if stats_shape == "ok" else torch.zeros(2, experts + 1, 3)
    valid = (logits_dtype != torch.int64 and flags_dtype != torch.float32 and experts >= 1 and stats_shape == "ok"
             and type(top_k) is int and 1 <= top_k <= experts)
    err = outcome(lambda: ops.moe_router_stats_(stats, logits, flags, top_k=top_k),
                  ["stats", "logits", "flags", "top_k"])
    assert (err is None) == valid, err
