import os
import subprocess
import sys

import pytest
import torch

import unlearnx as ux
from unlearnx import _native
from unlearnx.ops.router_stats import moe_router_stats_reference

native = pytest.mark.skipif(not _native.native_loaded(), reason="native library not built")


def make(T, E, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(T, E, generator=g) * 2).to(dtype)
    flags = torch.randint(0, 3, (T,), generator=g)
    return logits, flags


def run(logits, flags, k, norm=True):
    stats = ux.ops.router_stats_buffer(logits.shape[-1])
    return ux.ops.moe_router_stats_(stats, logits, flags, top_k=k, normalize_topk=norm)


def truth(logits, flags, k, norm=True):
    return moe_router_stats_reference(logits.double(), flags.reshape(-1), k, norm)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,E,k", [(1, 1, 1), (7, 5, 2), (1023, 8, 2), (65537, 7, 3), (300, 64, 4)])
@pytest.mark.parametrize("norm", [True, False])
def test_matches_one_hot_reference(dtype, T, E, k, norm):
    logits, flags = make(T, E, dtype)
    got = run(logits, flags, k, norm)
    want = truth(logits, flags, k, norm)
    assert got.dtype == torch.float32 and got.shape == (2, E, 4)
    # counts are exact integers; sums within fp32 rounding of a sum over up to T terms
    assert torch.equal(got[..., 0].double(), want[..., 0])
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-3)
    # every valid token routes to k experts; its probabilities (and normalized gates) sum to 1
    for g in (0, 1):
        n = int((flags == g + 1).sum())
        assert float(got[g, :, 0].sum()) == n * k
        assert abs(float(got[g, :, 2].sum()) - n) <= 1e-4 * max(n, 1)
        if norm:
            assert abs(float(got[g, :, 1].sum()) - n) <= 1e-4 * max(n, 1)


def test_accumulates_in_place_and_ignores_flag_zero():
    logits, flags = make(50, 6)
    stats = ux.ops.router_stats_buffer(6)
    ux.ops.moe_router_stats_(stats, logits, flags, top_k=2)
    once = stats.clone()
    ux.ops.moe_router_stats_(stats, logits, flags, top_k=2)
    assert torch.allclose(stats, 2 * once)
    # changing only ignored tokens' logits changes nothing
    other = logits.clone()
    other[flags == 0] = torch.randn(int((flags == 0).sum()), 6) * 10
    assert torch.equal(run(other, flags, 2), once)


def test_batched_and_non_contiguous_and_bool_flags():
    logits, flags = make(24, 5)
    want = run(logits, flags, 2)
    got = run(logits.reshape(4, 6, 5), flags.reshape(4, 6), 2)
    assert torch.allclose(got, want)
    nc = logits.t().contiguous().t()
    assert not nc.is_contiguous()
    assert torch.allclose(run(nc, flags, 2), want)
    mask = torch.tensor([True, False] * 12)
    assert torch.allclose(run(logits, mask, 1), run(logits, mask.long(), 1))
    assert float(run(logits, mask, 1)[1].abs().sum()) == 0.0  # bool True = 1 = forget only


def test_ties_go_to_lower_expert_index():
    logits = torch.zeros(3, 6)
    logits[:, [1, 2, 3]] = 1.0  # three-way tie for two places
    flags = torch.ones(3, dtype=torch.long)
    got = run(logits, flags, 2)
    assert got[0, :, 0].tolist() == [0, 3, 3, 0, 0, 0]
    # the gate-weight values agree with torch.topk's (which may pick 1 and 3 instead)
    want = truth(logits, flags, 2)
    assert abs(float(got[0, :, 1].sum()) - float(want[0, :, 1].sum())) < 1e-6


@native
def test_thread_count_does_not_change_the_result():
    # fixed 1024-token chunks, fp64 across chunks in chunk order: bit-identical for any thread count
    logits, flags = make(5000, 24, seed=4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(logits, flags, 3)
        torch.set_num_threads(2)
        two = run(logits, flags, 3)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@native
@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_compiled_isa_matches_reference(isa):
    # The ISA is chosen once per process, so each one runs in its own interpreter. Shapes: E below,
    # at and above a vector width (4 / 8 / 16 lanes) and the 16 x 16 transpose tile, ragged token
    # blocks, top-k up to E, ties, -inf logits; counts must be exact.
    code = (
        "import torch, unlearnx; from unlearnx import _native\n"
        "from unlearnx.ops.router_stats import moe_router_stats_reference as r\n"
        "g=torch.Generator().manual_seed(2)\n"
        "for dt in (torch.float32, torch.bfloat16):\n"
        "  for T, E, k in ((1, 1, 1), (37, 3, 2), (1100, 8, 2), (203, 16, 16), (77, 17, 5), (300, 64, 6), (50, 130, 8)):\n"
        "    z=(torch.randn(T, E, generator=g)*3).to(dt); f=torch.randint(0, 3, (T,), generator=g)\n"
        "    z[::7, : max(1, E // 2)] = 1.0; z[1::9, -1] = float('-inf')\n"
        "    for norm in (True, False):\n"
        "      s=torch.zeros(2, E, 4); torch.ops.unlearnx.moe_router_stats_(s, z, f, k, norm)\n"
        "      w=r(z.double(), f, k, norm)\n"
        "      assert torch.equal(s[..., 0].double(), w[..., 0]), (dt, T, E, k)\n"
        "      assert torch.allclose(s.double(), w, rtol=1e-5, atol=1e-4), (dt, T, E, k, (s.double()-w).abs().max())\n"
        "print(_native.build_info()['cpu_isa_active'])\n"
    )
    env = dict(os.environ, UNLEARNX_CPU_ISA=isa)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    active = out.stdout.strip().splitlines()[-1]
    if active != isa:
        pytest.skip(f"this CPU cannot run {isa} (ran {active})")


def test_float64_uses_reference():
    logits, flags = make(30, 4, torch.float64)
    stats = torch.zeros(2, 4, 4, dtype=torch.float64)
    ux.ops.moe_router_stats_(stats, logits, flags, top_k=2)
    assert torch.allclose(stats, truth(logits, flags, 2))


@pytest.mark.parametrize("call,err,msg", [
    (lambda s, z, f: ux.ops.moe_router_stats_(s, z, f, top_k=0), ValueError, "top_k must be in"),
    (lambda s, z, f: ux.ops.moe_router_stats_(s, z, f, top_k=6), ValueError, "top_k must be in"),
    (lambda s, z, f: ux.ops.moe_router_stats_(s, z, f, top_k=2.0), TypeError, "top_k must be an int"),
    (lambda s, z, f: ux.ops.moe_router_stats_(s, z, f, top_k=2, normalize_topk=1), TypeError, "normalize_topk"),
    (lambda s, z, f: ux.ops.moe_router_stats_(s[:, :4], z, f, top_k=2), ValueError, "stats must be"),
    (lambda s, z, f: ux.ops.moe_router_stats_(s, z, f[:-1], top_k=2), ValueError, "flags"),
    (lambda s, z, f: ux.ops.moe_router_stats_(s, z, f.float(), top_k=2), TypeError, "flags must be an integer"),
    (lambda s, z, f: ux.ops.moe_router_stats_(s, z, f + 1, top_k=2), (ValueError, RuntimeError), "flags contains 3"),
    (lambda s, z, f: ux.ops.moe_router_stats_(s, z.half(), f, top_k=2), TypeError, "logits"),
    (lambda s, z, f: ux.ops.moe_router_stats_(s.int(), z, f, top_k=2), TypeError, "stats"),
])
def test_bad_inputs(call, err, msg):
    logits, flags = make(10, 5)
    flags[0] = 2
    with pytest.raises(err, match=msg):
        call(ux.ops.router_stats_buffer(5), logits, flags)


@native
def test_native_op_rejects_bad_inputs():
    logits, flags = make(10, 5)
    s = ux.ops.router_stats_buffer(5)
    with pytest.raises(RuntimeError, match="top_k must be in"):
        torch.ops.unlearnx.moe_router_stats_(s, logits, flags, 9, True)
    flags[3] = 7
    with pytest.raises(RuntimeError, match="flags contains 7"):
        torch.ops.unlearnx.moe_router_stats_(s, logits, flags, 2, True)


@native
def test_opcheck():
    logits, flags = make(33, 6)
    for norm in (True, False):
        torch.library.opcheck(torch.ops.unlearnx.moe_router_stats_.default,
                              (ux.ops.router_stats_buffer(6), logits, flags, 2, norm))
    torch.library.opcheck(torch.ops.unlearnx.moe_router_stats_.default,
                          (ux.ops.router_stats_buffer(6), logits.bfloat16(), flags, 1, True))


@native
def test_torch_compile_fullgraph():
    logits, flags = make(40, 6)

    def f(stats, z, fl):
        ux.ops.moe_router_stats_(stats, z * 1.0, fl, top_k=2)
        return stats

    s = torch.compile(f, fullgraph=True, backend="aot_eager")(ux.ops.router_stats_buffer(6), logits, flags)
    assert torch.allclose(s, run(logits, flags, 2))


@pytest.mark.parametrize("norm", [True, False])
def test_triton_kernel_under_interpreter(norm):
    pytest.importorskip("triton")
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from unlearnx.kernels.router_stats import moe_router_stats_triton

    logits, flags = make(150, 6, seed=3)  # 3 programs of 64 tokens, a ragged last one; E padded to 8
    logits[5, [1, 2, 4]] = 9.0  # a tie for the two places
    stats = ux.ops.router_stats_buffer(6)
    moe_router_stats_triton(stats, logits, flags, 2, norm)
    assert torch.allclose(stats, run(logits, flags, 2, norm), atol=1e-4)


def test_backend_env_reference(monkeypatch):
    logits, flags = make(64, 8)
    default = run(logits, flags, 2)
    monkeypatch.setenv("UNLEARNX_BACKEND", "reference")
    assert torch.allclose(run(logits, flags, 2), default, atol=1e-4)
    flags[3] = -1
    with pytest.raises(ValueError, match="flags contains -1"):
        run(logits, flags, 2)
