import os
import subprocess
import sys

import pytest
import torch

import unlearnx as ux
from unlearnx import _native
from unlearnx.ops.token_stats import token_stats_reference

native = pytest.mark.skipif(not _native.native_loaded(), reason="native library not built")


def fp64_truth(logits, labels, ignore_index=-100):
    """log_softmax in fp64 of the (already rounded) logits: the ground truth every path is judged by."""
    return token_stats_reference(logits.double(), labels, ignore_index)


def make(n, vocab, dtype=torch.float32, seed=0, scale=3.0, ignore_frac=0.2):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, vocab, generator=g) * scale).to(dtype)
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[torch.rand(n, generator=g) < ignore_frac] = -100
    return logits, labels


def max_err(got, want, valid):
    return max(float((a.double() - b.double())[valid].abs().max()) if valid.any() else 0.0
               for a, b in zip(got, want))


def torch_same_precision(logits, labels):
    """The same statistics computed by PyTorch in the logits' own precision (flash-attention rule)."""
    lp = logits.log_softmax(-1)
    p = lp.exp()
    valid = labels != -100
    logp = lp.gather(-1, torch.where(valid, labels, 0)[:, None])[:, 0]
    mu = (p * lp).sum(-1)
    var = (p * lp * lp).sum(-1) - mu * mu
    return logp, mu, var


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (3, 1023), (5, 2049), (2, 65537)])
def test_matches_fp64_reference_within_flash_rule(dtype, shape):
    logits, labels = make(*shape, dtype=dtype)
    got = ux.ops.token_stats(logits, labels)
    truth = fp64_truth(logits, labels)
    valid = labels != -100
    assert all(t.dtype == torch.float32 and t.shape == labels.shape for t in got)
    for t in got:
        assert torch.equal(t[~valid], torch.zeros_like(t[~valid]))
    ours = max_err(got, truth, valid)
    theirs = max_err(torch_same_precision(logits, labels), truth, valid)
    # Our error must be at most 2x PyTorch's error in the same precision (1e-6 floor: fp32 output rounding).
    assert ours <= 2 * theirs + 1e-6 * max(1.0, shape[1] ** 0.5 / 16), (ours, theirs)


def test_batched_3d_and_non_contiguous():
    logits, labels = make(24, 333)
    got = ux.ops.token_stats(logits.view(4, 6, 333), labels.view(4, 6))
    flat = ux.ops.token_stats(logits, labels)
    assert all(g.shape == (4, 6) for g in got)
    for a, b in zip(got, flat):
        assert torch.equal(a.reshape(-1), b)
    wide = torch.randn(24, 666)
    sliced = wide[:, ::2]  # non-contiguous
    got = ux.ops.token_stats(sliced, labels)
    want = ux.ops.token_stats(sliced.contiguous(), labels)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_known_values_uniform_and_peaked():
    # uniform over V: log p = -log V, mu = -log V, var = 0
    v = 1000
    got = ux.ops.token_stats(torch.zeros(2, v), torch.tensor([3, 999]))
    assert torch.allclose(got[0], torch.full((2,), -torch.log(torch.tensor(v * 1.0))), atol=1e-5)
    assert torch.allclose(got[1], got[0], atol=1e-5)
    assert torch.allclose(got[2], torch.zeros(2), atol=1e-5)
    # -inf logits have probability 0 and contribute nothing; a row with two live entries is a coin flip
    z = torch.full((1, 3000), float("-inf"))
    z[0, 10] = z[0, 2500] = 1.5
    lp, mu, var = ux.ops.token_stats(z, torch.tensor([2500]))
    ln2 = torch.log(torch.tensor(2.0))
    assert torch.allclose(lp, -ln2) and torch.allclose(mu, -ln2) and var.abs().item() < 1e-6
    lp, _, _ = ux.ops.token_stats(z, torch.tensor([0]))
    assert lp.item() == float("-inf")


def test_nan_logits_give_nan_not_garbage():
    z = torch.randn(2, 50)
    z[0, 7] = float("nan")
    lp, mu, var = ux.ops.token_stats(z, torch.tensor([1, 1]))
    assert torch.isnan(lp[0]) and torch.isnan(mu[0]) and torch.isnan(var[0])
    assert torch.isfinite(lp[1]) and torch.isfinite(mu[1])


def test_ignore_index_custom_and_all_ignored():
    logits, labels = make(9, 77, ignore_frac=0.0)
    labels[::2] = 5
    got = ux.ops.token_stats(logits, labels, ignore_index=5)
    assert (got[0][::2] == 0).all() and (got[1][::2] == 0).all()
    assert (got[0][1::2] < 0).all()
    allign = ux.ops.token_stats(logits, torch.full((9,), -100))
    assert all((t == 0).all() for t in allign)
    empty = ux.ops.token_stats(torch.randn(0, 11), torch.zeros(0, dtype=torch.long))
    assert all(t.shape == (0,) for t in empty)


def test_bad_inputs_name_the_argument():
    z, y = make(4, 10)
    with pytest.raises(TypeError, match="labels must be int64"):
        ux.ops.token_stats(z, y.int())
    with pytest.raises(TypeError, match="logits must be float32 or bfloat16 or float16 or float64"):
        ux.ops.token_stats(z.long(), y)
    with pytest.raises(ValueError, match=r"logits must be \[..., V\] with labels"):
        ux.ops.token_stats(z, y[:3])
    with pytest.raises(ValueError, match=r"logits must be \[..., V\] with labels"):
        ux.ops.token_stats(z[0], y)
    with pytest.raises(ValueError, match=r"labels contains 10, outside \[0, 10\)"):
        ux.ops.token_stats(z, torch.tensor([0, 1, 10, 2]))
    with pytest.raises(ValueError, match=r"labels contains -1"):
        ux.ops.token_stats(z, torch.tensor([0, 1, -1, 2]))
    with pytest.raises(ValueError, match="labels is on meta"):
        ux.ops.token_stats(z, y.to("meta"))
    with pytest.raises(ValueError, match="empty vocabulary"):
        ux.ops.token_stats(torch.randn(2, 0), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        ux.ops.token_stats(z, y, ignore_index=-100.0)
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        ux.ops.token_stats(z.tolist(), y)


@native
def test_native_op_rejects_bad_input_directly():
    z, y = make(4, 10)
    with pytest.raises(RuntimeError, match=r"labels contains 12, outside \[0, 10\)"):
        torch.ops.unlearnx.token_stats(z, torch.tensor([0, 1, 12, 2]), -100)
    with pytest.raises(RuntimeError, match="logits must be contiguous"):
        torch.ops.unlearnx.token_stats(torch.randn(10, 4).t(), y, -100)
    with pytest.raises(RuntimeError, match="logits must be float32, bfloat16 or float16"):
        torch.ops.unlearnx.token_stats(z.double(), y, -100)
    with pytest.raises(RuntimeError, match="labels must be int64"):
        torch.ops.unlearnx.token_stats(z, y.int(), -100)
    with pytest.raises(RuntimeError, match="labels has shape"):
        torch.ops.unlearnx.token_stats(z.view(2, 2, 10), y.view(4, 1), -100)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_matches_autograd_of_log_softmax(dtype):
    logits, labels = make(6, 300, dtype=dtype, seed=3)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    w = torch.randn(6)
    (ux.ops.token_stats(a, labels)[0] * w).sum().backward()
    valid = labels != -100
    ref = b.float().log_softmax(-1).gather(-1, torch.where(valid, labels, 0)[:, None])[:, 0]
    (torch.where(valid, ref, 0.0) * w).sum().backward()
    assert a.grad.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert torch.allclose(a.grad.float(), b.grad.float(), atol=tol)
    assert (a.grad[~valid] == 0).all()


@native
def test_mu_var_carry_no_gradient_and_gradcheck_fp32():
    logits, labels = make(3, 17, seed=5)
    x = logits.clone().requires_grad_()
    lp, mu, var = torch.ops.unlearnx.token_stats(x, labels, -100)
    assert lp.requires_grad and not mu.requires_grad and not var.requires_grad
    # fp32 gradcheck (the native kernel has no fp64 path): loose eps/tolerances for single precision
    torch.autograd.gradcheck(lambda t: torch.ops.unlearnx.token_stats(t, labels, -100)[0],
                             (x,), eps=1e-2, atol=2e-3, rtol=1e-2)


def test_fp64_reference_path_gradcheck():
    logits, labels = make(3, 11, dtype=torch.float64, seed=2)
    x = logits.clone().requires_grad_()
    torch.autograd.gradcheck(lambda t: ux.ops.token_stats(t, labels)[0], (x,), eps=1e-6, atol=1e-5)


@native
def test_opcheck():
    logits, labels = make(5, 130, seed=1)
    torch.library.opcheck(torch.ops.unlearnx.token_stats.default, (logits, labels, -100))
    torch.library.opcheck(torch.ops.unlearnx.token_stats.default,
                          (logits.view(1, 5, 130).requires_grad_(), labels.view(1, 5), -100))


@native
def test_torch_compile_fullgraph_with_backward():
    logits, labels = make(8, 257, seed=4)

    def loss(z):
        lp, mu, var = torch.ops.unlearnx.token_stats(z, labels, -100)
        return -(lp.sum()) + 0 * (mu.sum() + var.sum())

    eager_z = logits.clone().requires_grad_()
    loss(eager_z).backward()
    comp_z = logits.clone().requires_grad_()
    out = torch.compile(loss, fullgraph=True, backend="aot_eager")(comp_z)
    out.backward()
    assert torch.allclose(out, -ux.ops.token_stats(logits, labels)[0].sum())
    assert torch.allclose(comp_z.grad, eager_z.grad)


def test_triton_kernel_under_interpreter():
    pytest.importorskip("triton")
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from unlearnx.kernels.token_stats import token_stats_triton

    logits, labels = make(6, 2500, seed=7)  # 3 chunks of 1024, a ragged last one
    logits[1, :1500] = float("-inf")  # an all -inf first chunk
    labels[1] = 2000
    got = token_stats_triton(logits, labels)
    truth = fp64_truth(logits, labels)
    valid = labels != -100
    assert max_err(got, truth, valid) < 2e-5
    for t in got:
        assert (t[~valid] == 0).all()


def test_backend_env_reference_and_triton(monkeypatch):
    logits, labels = make(4, 100)
    native_out = ux.ops.token_stats(logits, labels)
    monkeypatch.setenv("UNLEARNX_BACKEND", "reference")
    ref_out = ux.ops.token_stats(logits, labels)
    if _native.triton_available():
        monkeypatch.setenv("UNLEARNX_BACKEND", "triton")
        tri_out = ux.ops.token_stats(logits, labels)
        assert all(torch.allclose(a, b, atol=2e-5) for a, b in zip(tri_out, ref_out))
    assert all(torch.allclose(a, b, atol=2e-5) for a, b in zip(native_out, ref_out))


@native
@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_compiled_isa_matches_reference(isa):
    # The ISA is chosen once per process, so each one runs in its own interpreter.
    code = (
        "import torch, unlearnx; from unlearnx import _native; "
        "from unlearnx.ops.token_stats import token_stats_reference as r\n"
        "g=torch.Generator().manual_seed(1)\n"
        "for dt in (torch.float32, torch.bfloat16, torch.float16):\n"
        "  for v in (1, 17, 2048, 5003):\n"
        "    z=(torch.randn(9, v, generator=g)*4).to(dt); y=torch.randint(0, v, (9,), generator=g); y[2]=-100\n"
        "    a=torch.ops.unlearnx.token_stats(z, y, -100); b=r(z.double(), y)\n"
        "    assert all(torch.allclose(p.double(), q.double(), atol=5e-5) for p, q in zip(a, b)), (dt, v)\n"
        "print(_native.build_info()['cpu_isa_active'])\n"
    )
    env = dict(os.environ, UNLEARNX_CPU_ISA=isa)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == isa
