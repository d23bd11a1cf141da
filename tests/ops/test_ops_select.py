import os
import subprocess
import sys

import pytest
import torch

import unlearnx as ux
from unlearnx import _native
from unlearnx.ops.select import (
    global_select_reference,
    mask_counts_reference,
    masked_restore_reference_,
    pack_mask,
    threshold_masks_reference,
    unpack_mask,
)

native = pytest.mark.skipif(not _native.native_loaded(), reason="native library not built")
SIZES = [1, 7, 1023, 65537]


def make_xs(sizes, dtypes=(torch.float32,), seed=0, ties=True):
    g = torch.Generator().manual_seed(seed)
    xs = []
    for i, n in enumerate(sizes):
        x = torch.randn(n, generator=g) * (i + 1)
        if ties:
            x = (x * 4).round() / 4  # many exact ties
        xs.append(x.to(dtypes[i % len(dtypes)]))
    return xs


def cat32(xs, absolute=False):
    c = torch.cat([x.reshape(-1).float() for x in xs])
    return c.abs() if absolute else c


def independent_kth(xs, k, absolute, largest):
    c = cat32(xs, absolute)
    return c.kthvalue(c.numel() - k + 1 if largest else k).values


def independent_keep_count(masks):
    return sum(int((unpack_mask(m, (m.numel() * 8,)) if m.dtype == torch.uint8 else m).sum()) for m in masks)


def select_impls():
    impls = {"reference": global_select_reference}
    if _native.native_loaded():
        impls["native"] = lambda *a: torch.ops.unlearnx.global_select(*a)
    return impls


@pytest.mark.parametrize("impl", list(select_impls()))
@pytest.mark.parametrize(
    "sizes,dtypes",
    [([1], (torch.float32,)), ([7, 1023], (torch.float32,)), (SIZES, (torch.float32,)),
     ([0, 5, 0, 1023], (torch.float32,)), (SIZES, (torch.float32, torch.bfloat16, torch.float16))],
)
@pytest.mark.parametrize("absolute", [False, True])
@pytest.mark.parametrize("largest", [False, True])
def test_select_equals_kthvalue_of_concatenation(impl, sizes, dtypes, absolute, largest):
    xs = make_xs(sizes, dtypes)
    n = sum(sizes)
    fn = select_impls()[impl]
    for k in sorted({1, min(2, n), n // 3 + 1, n // 2 + 1, max(n - 1, 1), n}):
        value, counts, limits = fn(xs, k, absolute, largest, True)
        assert value.dtype == torch.float32 and value.dim() == 0
        assert value == independent_kth(xs, k, absolute, largest)
        c = cat32(xs, absolute)
        beyond = int((c > value).sum()) if largest else int((c < value).sum())
        assert counts.tolist() == [beyond, int((c == value).sum())]
        # the tie limits keep exactly k elements
        masks = threshold_masks_reference(xs, value, limits, absolute, largest, False)
        assert independent_keep_count(masks) == k
        if impl == "native":
            ref = global_select_reference(xs, k, absolute, largest, True)
            assert all(torch.equal(a, b) for a, b in zip((value, counts, limits), ref))


@native
@pytest.mark.parametrize("case", ["all_equal", "concentrated", "zeros_signed"])
def test_native_heavy_concentration_path(case):
    # > N/256 elements share the top 16 key bits: the second histogram pass and the tie pass run
    g = torch.Generator().manual_seed(3)
    n = 200_000
    if case == "all_equal":
        xs = [torch.full((n // 2,), 0.75), torch.full((n // 2,), 0.75)]
    elif case == "concentrated":
        low = torch.randint(0, 1 << 12, (n,), generator=g, dtype=torch.int32)
        xs = list((torch.tensor(1.5).view(torch.int32) + low).view(torch.float32).split([70_000, 1, 129_999]))
    else:
        xs = [torch.zeros(n // 2), -torch.zeros(n // 2)]
    for absolute in (False, True):
        for largest in (False, True):
            for k in (1, 12_345, n // 2 + 7, n):
                got = torch.ops.unlearnx.global_select(xs, k, absolute, largest, True)
                ref = global_select_reference(xs, k, absolute, largest, True)
                assert all(torch.equal(a, b) for a, b in zip(got, ref)), (case, absolute, largest, k)
                assert got[0] == independent_kth(xs, k, absolute, largest)
                assert got[0].view(torch.int32) == (got[0] + 0.0).view(torch.int32)  # never -0


def test_tie_rule_keeps_first_in_list_then_flat_order():
    xs = [torch.tensor([1.0, 2.0, 2.0]), torch.tensor([2.0, 3.0])]
    masks = ux.ops.topk_masks(xs, 3, largest=True)
    assert [m.tolist() for m in masks] == [[False, True, True], [False, True]]
    masks = ux.ops.topk_masks(xs, 3, largest=True, ties="all")
    assert [m.tolist() for m in masks] == [[False, True, True], [True, True]]
    masks = ux.ops.topk_masks(xs, 2, largest=False)
    assert [m.tolist() for m in masks] == [[True, True, False], [False, False]]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("absolute", [False, True])
def test_topk_masks_exact_count_and_backends_agree(packed, absolute):
    xs = make_xs([7, 0, 1023, 65537, 3], (torch.float32, torch.bfloat16))
    n = sum(x.numel() for x in xs)
    for k in (0, 1, n // 2, n - 3, n):
        masks = ux.ops.topk_masks(xs, k, absolute=absolute, packed=packed)
        assert independent_keep_count(masks) == k
        for x, m in zip(xs, masks):
            assert m.dtype == (torch.uint8 if packed else torch.bool)
            assert m.shape == ((x.numel() + 7) // 8,) if packed else m.shape == x.shape
        if 0 < k < n:
            # every kept element is >= every dropped one
            c = cat32(xs, absolute)
            flat = torch.cat([unpack_mask(m, x.shape).reshape(-1) if packed else m.reshape(-1) for x, m in zip(xs, masks)])
            assert c[flat].min() >= c[~flat].max()
        ties_all = ux.ops.topk_masks(xs, max(k, 1), absolute=absolute, packed=packed, ties="all")
        assert independent_keep_count(ties_all) >= max(k, 1)


@native
@pytest.mark.parametrize("packed", [False, True])
def test_native_masks_match_reference(packed):
    xs = make_xs(SIZES + [0, 9], (torch.float32, torch.float16, torch.bfloat16))
    for largest in (False, True):
        for absolute in (False, True):
            v, _, lim = global_select_reference(xs, 40_000, absolute, largest, True)
            got = torch.ops.unlearnx.threshold_masks(xs, v, lim, absolute, largest, packed)
            ref = threshold_masks_reference(xs, v, lim, absolute, largest, packed)
            assert all(torch.equal(a, b) for a, b in zip(got, ref))
            assert torch.equal(torch.ops.unlearnx.mask_counts(got), mask_counts_reference(ref))


def test_masks_never_keep_nan_and_pack_roundtrip():
    x = torch.tensor([float("nan"), 1.0, -3.0, float("inf"), 0.5, -0.0, 2.0, 7.0, 1.0])
    m = ux.ops.threshold_masks([x], 1.0, absolute=True)[0]
    assert m.tolist() == [False, True, True, True, False, False, True, True, True]
    p = ux.ops.threshold_masks([x], 1.0, absolute=True, packed=True)[0]
    assert torch.equal(p, pack_mask(m)) and torch.equal(unpack_mask(p, x.shape), m)
    stats = ux.ops.mask_stats([p], numel=[x.numel()])
    assert stats.kept.tolist() == [6] and abs(float(stats.overall) - 6 / 9) < 1e-12


def test_mask_stats():
    masks = [torch.tensor([True, False, True, True]), torch.zeros(3, 2, dtype=torch.bool), torch.ones(0, dtype=torch.bool)]
    s = ux.ops.mask_stats(masks)
    assert s.kept.tolist() == [3, 0, 0]
    assert s.fraction.tolist() == [0.75, 0.0, 0.0]
    assert float(s.overall) == 0.3
    with pytest.raises(ValueError, match="numel is required for packed"):
        ux.ops.mask_stats([pack_mask(masks[0])])


def test_global_kth_value_and_quantile_match_torch():
    xs = make_xs([7, 1023, 300], (torch.float32,))
    c = cat32(xs)
    for k in (1, 17, c.numel()):
        assert ux.ops.global_kth_value(xs, k) == c.kthvalue(k).values
        assert ux.ops.global_kth_value(xs, k, absolute=True) == c.abs().kthvalue(k).values
    xs = make_xs([7, 1023, 300], (torch.float32,), ties=False)
    c = cat32(xs).double()
    for q in (0.0, 0.1, 0.5, 0.95, 0.999, 1.0):
        for interp in ("linear", "lower", "higher", "nearest", "midpoint"):
            want = torch.quantile(c, q, interpolation=interp).float()
            assert ux.ops.global_quantile(xs, q, interpolation=interp) == want, (q, interp)


def test_nan_rejected_naming_the_tensor():
    xs = [torch.randn(10), torch.randn(5), torch.tensor([1.0, float("nan")])]
    with pytest.raises((RuntimeError, ValueError), match=r"xs\[2\] contains NaN"):
        ux.ops.global_kth_value(xs, 3)
    with pytest.raises((RuntimeError, ValueError), match=r"xs\[2\] contains NaN"):
        ux.ops.topk_masks(xs, 3)


def test_bad_inputs_name_the_argument():
    xs = [torch.randn(4), torch.randn(3)]
    with pytest.raises(ValueError, match=r"k must be in \[1, 7\]"):
        ux.ops.global_kth_value(xs, 0)
    with pytest.raises(ValueError, match=r"k must be in \[1, 7\]"):
        ux.ops.global_kth_value(xs, 8)
    with pytest.raises(ValueError, match=r"k must be in \[0, 7\]"):
        ux.ops.topk_masks(xs, 8)
    with pytest.raises(ValueError, match="xs holds no elements"):
        ux.ops.global_kth_value([torch.empty(0)], 1)
    with pytest.raises(ValueError, match="xs must hold at least one tensor"):
        ux.ops.global_kth_value([], 1)
    with pytest.raises(TypeError, match=r"xs\[1\] must be float32 or bfloat16 or float16, got float64"):
        ux.ops.global_kth_value([xs[0], xs[1].double()], 1)
    with pytest.raises(TypeError, match="k must be an int"):
        ux.ops.global_kth_value(xs, 1.5)
    with pytest.raises(ValueError, match=r"tie_limits must have shape \[2\]"):
        ux.ops.threshold_masks(xs, 0.0, tie_limits=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="q must be in"):
        ux.ops.global_quantile(xs, 1.5)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        ux.ops.global_quantile(xs, 0.5, interpolation="cubic")
    with pytest.raises(ValueError, match="ties must be 'exact' or 'all'"):
        ux.ops.topk_masks(xs, 1, ties="some")
    p = [torch.randn(5)]
    with pytest.raises(ValueError, match=r"masks\[0\] has shape \[4\]"):
        ux.ops.masked_restore_(p, [torch.ones(4, dtype=torch.bool)])
    with pytest.raises(ValueError, match=r"masks\[0\] is a packed \(uint8\) mask of 2 bytes"):
        ux.ops.masked_restore_(p, [torch.ones(2, dtype=torch.uint8)])
    with pytest.raises(TypeError, match=r"originals\[0\] is torch.float64"):
        ux.ops.masked_restore_(p, [torch.ones(5, dtype=torch.bool)], originals=[torch.zeros(5, dtype=torch.float64)])
    with pytest.raises(ValueError, match=r"states\[0\]\[0\] has 3 elements"):
        ux.ops.masked_restore_(p, [torch.ones(5, dtype=torch.bool)], states=[[torch.zeros(3)]])


@native
def test_native_op_rejects_bad_input_directly():
    xs = [torch.randn(4), torch.randn(3)]
    with pytest.raises(RuntimeError, match=r"k must be in \[1, 7\]"):
        torch.ops.unlearnx.global_select(xs, 0, False, False, True)
    with pytest.raises(RuntimeError, match=r"xs\[1\] must be float32, bfloat16 or float16"):
        torch.ops.unlearnx.global_select([xs[0], xs[1].double()], 1, False, False, True)
    with pytest.raises(RuntimeError, match=r"xs\[0\] must be contiguous"):
        torch.ops.unlearnx.global_select([torch.randn(4, 4).t()], 1, False, False, True)
    with pytest.raises(RuntimeError, match=r"xs\[1\] contains NaN"):
        torch.ops.unlearnx.global_select([xs[0], torch.tensor([float("nan")])], 1, False, False, True)
    with pytest.raises(RuntimeError, match="threshold must be float32"):
        torch.ops.unlearnx.threshold_masks(xs, torch.tensor(0.0, dtype=torch.float64), torch.zeros(2, dtype=torch.int64),
                                           False, True, False)
    with pytest.raises(RuntimeError, match=r"state_owner\[0\] = 3 is not a params index"):
        torch.ops.unlearnx.masked_restore_(xs, [], [torch.ones(4, dtype=torch.bool), torch.ones(3, dtype=torch.bool)],
                                           [torch.zeros(4)], [3])


def restore_case(packed: bool, with_originals: bool):
    g = torch.Generator().manual_seed(5)
    shapes = [(3, 5), (1,), (0,), (1023,), (65537,)]
    dtypes = [torch.float32, torch.bfloat16, torch.float32, torch.float64, torch.float16]
    params = [torch.randn(s, generator=g).to(d) for s, d in zip(shapes, dtypes)]
    originals = [torch.randn(s, generator=g).to(d) for s, d in zip(shapes, dtypes)] if with_originals else None
    bools = [torch.rand(s, generator=g) < 0.3 for s in shapes]
    masks = [pack_mask(m) for m in bools] if packed else bools
    states = [[torch.randn(s, generator=g), torch.rand(s, generator=g)] for s in shapes]
    return params, originals, masks, bools, states


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("with_originals", [False, True])
def test_masked_restore_matches_definition(packed, with_originals):
    params, originals, masks, bools, states = restore_case(packed, with_originals)
    before = [p.clone() for p in params]
    before_states = [[s.clone() for s in st] for st in states]
    ux.ops.masked_restore_(params, masks, originals=originals, states=states)
    for i, (p, b, m) in enumerate(zip(params, before, bools)):
        src = originals[i] if originals else torch.zeros_like(b)
        assert torch.equal(p[m], b[m])  # kept: untouched
        assert torch.equal(p[~m].view(torch.uint8) if p.dtype != torch.float64 else p[~m], src[~m].view(torch.uint8) if p.dtype != torch.float64 else src[~m])
        for s, sb in zip(states[i], before_states[i]):
            assert torch.equal(s[m], sb[m]) and (s[~m] == 0).all()


@native
@pytest.mark.parametrize("packed", [False, True])
def test_native_restore_bit_identical_to_reference(packed):
    a = restore_case(packed, True)
    b = restore_case(packed, True)
    ux.ops.masked_restore_(a[0], a[2], originals=a[1], states=a[4])
    flat_states = [s for st in b[4] for s in st]
    owner = [i for i, st in enumerate(b[4]) for _ in st]
    masked_restore_reference_(b[0], b[1], b[2], flat_states, owner)
    for x, y in zip(a[0] + [s for st in a[4] for s in st], b[0] + flat_states):
        assert torch.equal(x.view(torch.uint8), y.view(torch.uint8))


def test_masked_restore_non_contiguous_param():
    base = torch.randn(6, 4)
    p = base.t()
    m = torch.rand(4, 6) < 0.5
    ux.ops.masked_restore_([p], [m])
    assert (base.t()[~m] == 0).all() and (base.t()[m] != 0).all()


@native
def test_opcheck():
    xs = make_xs([7, 1023, 0, 5], (torch.float32, torch.bfloat16))
    torch.library.opcheck(torch.ops.unlearnx.global_select.default, (xs, 100, True, True, True))
    v, _, lim = torch.ops.unlearnx.global_select(xs, 100, True, True, True)
    for packed in (False, True):
        torch.library.opcheck(torch.ops.unlearnx.threshold_masks.default, (xs, v, lim, True, True, packed))
    masks = torch.ops.unlearnx.threshold_masks(xs, v, lim, True, True, True)
    torch.library.opcheck(torch.ops.unlearnx.mask_counts.default, (masks,))
    params, originals, masks, _, states = restore_case(False, True)
    flat = [s for st in states for s in st]
    owner = [i for i, st in enumerate(states) for _ in st]
    torch.library.opcheck(torch.ops.unlearnx.masked_restore_.default, (params, originals, masks, flat, owner))


@native
def test_torch_compile_fullgraph():
    xs = make_xs([7, 1023], (torch.float32,))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def top_half(a, b):
        v, _, lim = torch.ops.unlearnx.global_select([a, b], 515, True, True, True)
        masks = torch.ops.unlearnx.threshold_masks([a, b], v, lim, True, True, False)
        return v, masks, torch.ops.unlearnx.mask_counts(masks)

    v, masks, counts = top_half(*xs)
    assert v == independent_kth(xs, 515, True, True)
    assert int(counts.sum()) == 515


def test_triton_kernels_under_interpreter():
    pytest.importorskip("triton")
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from unlearnx.kernels.select import (
        global_select_triton,
        mask_counts_triton,
        masked_restore_triton_,
        threshold_masks_triton,
    )

    xs = make_xs([5, 0, 300, 64], (torch.float32,))
    n = sum(x.numel() for x in xs)
    for absolute, largest, k in ((False, False, 1), (True, True, 40), (False, True, n), (True, False, 200)):
        got = global_select_triton(xs, k, absolute, largest, True)
        ref = global_select_reference(xs, k, absolute, largest, True)
        assert all(torch.equal(a, b) for a, b in zip(got, ref)), (absolute, largest, k)
        for packed in (False, True):
            m = threshold_masks_triton(xs, got[0], got[2], absolute, largest, packed)
            mr = threshold_masks_reference(xs, ref[0], ref[2], absolute, largest, packed)
            assert all(torch.equal(a, b) for a, b in zip(m, mr))
            assert int(mask_counts_triton(m).sum()) == k
    with pytest.raises(ValueError, match=r"xs\[1\] contains NaN"):
        global_select_triton([torch.ones(3), torch.tensor([float("nan")])], 1, False, False, True)
    for packed in (False, True):
        a = restore_case(packed, True)
        b = restore_case(packed, True)
        shapes_ok = [i for i, p in enumerate(a[0]) if p.dtype != torch.bfloat16]  # interpreter: no bf16
        pick = lambda lst: [lst[i] for i in shapes_ok]  # noqa: E731
        fa = [s for i in shapes_ok for s in a[4][i]]
        owner = [j for j, i in enumerate(shapes_ok) for _ in a[4][i]]
        masked_restore_triton_(pick(a[0]), pick(a[1]), pick(a[2]), fa, owner)
        fb = [s for i in shapes_ok for s in b[4][i]]
        masked_restore_reference_(pick(b[0]), pick(b[1]), pick(b[2]), fb, owner)
        assert all(torch.equal(x, y) for x, y in zip(pick(a[0]) + fa, pick(b[0]) + fb))


@native
@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_compiled_isa_matches_reference(isa):
    code = (
        "import torch, unlearnx; from unlearnx import _native\n"
        "from unlearnx.ops.select import global_select_reference as r, threshold_masks_reference as tm\n"
        "g=torch.Generator().manual_seed(1)\n"
        "xs=[((torch.randn(n, generator=g)*4).round()/4).to(d) for n,d in ((7,torch.float32),(1023,torch.bfloat16),(70000,torch.float16),(65537,torch.float32))]\n"
        "for a in (False, True):\n"
        "  for l in (False, True):\n"
        "    for k in (1, 5000, 100000):\n"
        "      got=torch.ops.unlearnx.global_select(xs,k,a,l,True); ref=r(xs,k,a,l,True)\n"
        "      assert all(torch.equal(x,y) for x,y in zip(got,ref)), (a,l,k)\n"
        "      for p in (False, True):\n"
        "        m=torch.ops.unlearnx.threshold_masks(xs,got[0],got[2],a,l,p)\n"
        "        assert all(torch.equal(x,y) for x,y in zip(m, tm(xs,ref[0],ref[2],a,l,p)))\n"
        "        assert int(torch.ops.unlearnx.mask_counts(m).sum())==k\n"
        "ps=[torch.randn(n).to(d) for n,d in ((9,torch.float32),(70001,torch.bfloat16),(5,torch.float64))]\n"
        "ms=[torch.rand(p.shape)<0.5 for p in ps]\n"
        "q=[p.clone() for p in ps]; torch.ops.unlearnx.masked_restore_(q,[],ms,[],[])\n"
        "assert all(torch.equal(a, torch.where(m,p,0)) for a,m,p in zip(q,ms,ps))\n"
        "print(_native.build_info()['cpu_isa_active'])\n"
    )
    env = dict(os.environ, UNLEARNX_CPU_ISA=isa)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] in ("base", "avx2", "avx512")


def test_project_capped_simplex():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(200, generator=g, dtype=torch.float64) * 2
    for m in (0.0, 1.0, 17.5, 100.0, 199.0, 200.0):
        p = ux.ops.project_capped_simplex(w, m)
        assert p.dtype == w.dtype
        assert (p >= 0).all() and (p <= 1).all()
        assert abs(float(p.sum()) - m) < 1e-9
        # optimality: no feasible point is closer to w (random feasible points from the same set)
        d = float((w - p).norm())
        for _ in range(20):
            z = ux.ops.project_capped_simplex(torch.rand(200, generator=g, dtype=torch.float64) * 3, m)
            assert d <= float((w - z).norm()) + 1e-9
    # a vector already feasible is its own projection
    f = torch.full((10,), 0.3, dtype=torch.float64)
    assert torch.allclose(ux.ops.project_capped_simplex(f, 3.0), f)
    with pytest.raises(ValueError, match=r"m must be in \[0, len\(w\)\]"):
        ux.ops.project_capped_simplex(w, 201)
    with pytest.raises(ValueError, match="m must be >= 0"):
        ux.ops.project_capped_simplex(w, -1)
    with pytest.raises(ValueError, match="w must be finite"):
        ux.ops.project_capped_simplex(torch.tensor([1.0, float("nan")]), 1)
