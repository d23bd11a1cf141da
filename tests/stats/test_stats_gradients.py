"""unlearnx.stats against per-sample gradients from torch.func vmap(grad) (and the batch-of-one
loop where a model cannot be vmapped), on small random models with padded batches."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import unlearnx as ux
from unlearnx.stats import default_loss_fn
from unlearnx.stats.losses import slice_batch

torch.set_default_dtype(torch.float32)
RTOL, ATOL = 1e-4, 1e-6


# ---- models ----------------------------------------------------------------------------------
class SeqMLP(nn.Module):
    """Linear layers on [B, T, d] (T > 1) and [B, d] inputs, an in-place ReLU on a Linear output,
    a LayerNorm, and a raw nn.Parameter (which must take the fallback)."""

    def __init__(self, d=6, h=10, c=4):
        super().__init__()
        self.inp = nn.Linear(d, h)
        self.norm = nn.LayerNorm(h)
        self.mid = nn.Linear(h, h, bias=False)
        self.scale = nn.Parameter(torch.randn(h))
        self.out = nn.Linear(h, c)

    def forward(self, x):  # x [B, T, d]
        h = self.norm(torch.relu_(self.inp(x)))
        h = torch.tanh(self.mid(h)) * self.scale
        return self.out(h.mean(1))


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=2, padding=(1, 0), dilation=(1, 2)), nn.GroupNorm(1, 5), nn.ReLU(),
        nn.Flatten(), nn.LazyLinear(3),
    )


def tiny_llama():
    tr = pytest.importorskip("transformers")
    cfg = tr.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    torch.manual_seed(0)
    return tr.LlamaForCausalLM(cfg)


def tiny_gpt2():
    tr = pytest.importorskip("transformers")
    cfg = tr.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return tr.GPT2LMHeadModel(cfg)


def lm_batches(n_batches=2, B=3, T=7, vocab=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(0, vocab, (B, T), generator=g)
        mask = torch.ones(B, T, dtype=torch.long)
        lengths = torch.randint(3, T + 1, (B,), generator=g)
        lengths[0] = T
        for b in range(B):
            mask[b, lengths[b]:] = 0  # right padding
        ids = torch.where(mask.bool(), ids, 0)
        labels = torch.where(mask.bool(), ids, -100)
        labels[1, 1] = -100  # an ignored position inside a sample
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def cls_batches(shape, n_batches=3, B=4, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, *shape, generator=g), torch.randint(0, classes, (B,), generator=g)) for _ in range(n_batches)]


# ---- references ------------------------------------------------------------------------------
def per_sample_grads_vmap(model, batch, params):
    """{name: [B, *shape]} by torch.func.vmap(grad) over functional_call, batch of one per sample."""
    names = list(params)
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in params}
    buffers = dict(model.named_buffers())

    def loss_one(p, sample):
        sample = torch.utils._pytree.tree_map(lambda t: t.unsqueeze(0), sample)
        return default_loss_fn(
            lambda *a, **k: torch.func.functional_call(model, {**frozen, **p, **buffers}, a, k), sample
        ).sum()

    p = {n: params[n].detach() for n in names}
    return torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0))(p, batch)


def per_sample_grads_loop(model, batch, params):
    """{name: [B, *shape]} by one backward per sample (a batch of one, padding kept)."""
    B = default_loss_fn(model, batch).shape[0]
    names, plist = list(params), list(params.values())
    out = {n: [] for n in names}
    for i in range(B):
        loss = default_loss_fn(model, slice_batch(batch, i, B)).sum()
        grads = torch.autograd.grad(loss, plist, allow_unused=True)
        for n, g, p in zip(names, grads, plist):
            out[n].append(torch.zeros_like(p) if g is None else g)
    return {n: torch.stack(v) for n, v in out.items()}


def reference_stats(model, batches, per_sample):
    model.eval()
    params = dict(model.named_parameters())
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    norms, n = [], 0
    for batch in batches:
        grads = per_sample(model, batch, params)
        for k, g in grads.items():
            fisher[k] += g.square().sum(0)
        norms.append(torch.stack([g.flatten(1).square().sum(1) for g in grads.values()]).sum(0).sqrt())
        n += next(iter(grads.values())).shape[0]
    return {k: v / n for k, v in fisher.items()}, torch.cat(norms)


def assert_dicts_close(got, want, rtol=RTOL, atol=ATOL):
    assert set(got) == set(want)
    for k in want:
        scale = want[k].abs().max().item()
        torch.testing.assert_close(got[k], want[k], rtol=rtol, atol=atol + 1e-5 * scale, msg=lambda m: f"{k}: {m}")


# ---- per-sample Fisher and norms against vmap(grad) -------------------------------------------
CASES = {
    "seq_mlp": (lambda: SeqMLP(), lambda: cls_batches((5, 6)), per_sample_grads_vmap),
    "cnn": (small_cnn, lambda: cls_batches((3, 8, 9), classes=3), per_sample_grads_vmap),
    "llama": (tiny_llama, lm_batches, per_sample_grads_loop),
    "gpt2": (tiny_gpt2, lm_batches, per_sample_grads_loop),
}


@pytest.mark.parametrize("case", list(CASES))
def test_per_sample_fisher_and_norms_match_reference(case):
    make_model, make_data, per_sample = CASES[case]
    torch.manual_seed(0)
    model = make_model()
    data = make_data()
    with torch.no_grad():  # materialize lazy modules, then give BatchNorm non-trivial statistics
        model.train()
        for b in data:
            default_loss_fn(model, b)
    want_f, want_n = reference_stats(model, data, per_sample)
    model.train()
    got_f = ux.stats.fisher_diagonal(model, data, mode="per_sample", progress=False)
    got_n = ux.stats.per_sample_grad_norms(model, data, progress=False)
    assert model.training  # restored
    assert_dicts_close(got_f, want_f)
    torch.testing.assert_close(got_n, want_n, rtol=RTOL, atol=ATOL)
    assert all(v.abs().sum() > 0 for k, v in got_f.items() if want_f[k].abs().sum() > 0)


def test_vmap_reference_agrees_with_loop_reference():
    # the two references are independent; on a vmappable model they must agree
    model = SeqMLP()
    batch = cls_batches((5, 6))[0]
    params = dict(model.named_parameters())
    a, b = per_sample_grads_vmap(model, batch, params), per_sample_grads_loop(model, batch, params)
    assert_dicts_close(a, b)


def test_padding_tokens_contribute_nothing():
    # the token ids at padded positions (attention_mask 0, labels -100) must not move any statistic
    model = tiny_llama()
    data = lm_batches(n_batches=1)
    noisy = [dict(b, input_ids=torch.where(b["attention_mask"].bool(), b["input_ids"], (b["input_ids"] + 7) % 40))
             for b in data]
    assert not torch.equal(noisy[0]["input_ids"], data[0]["input_ids"])
    assert_dicts_close(ux.stats.fisher_diagonal(model, noisy, progress=False),
                       ux.stats.fisher_diagonal(model, data, progress=False), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(ux.stats.per_sample_grad_norms(model, noisy, progress=False),
                               ux.stats.per_sample_grad_norms(model, data, progress=False), rtol=1e-5, atol=1e-8)


def test_right_padding_is_invisible():
    # appending padding to a sample (attention_mask 0, labels -100) leaves its statistics unchanged
    model = tiny_llama()
    ids = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(3))
    short = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    pad = torch.randint(0, 40, (2, 3), generator=torch.Generator().manual_seed(4))
    long = {
        "input_ids": torch.cat([ids, pad], 1),
        "attention_mask": torch.cat([torch.ones_like(ids), torch.zeros_like(pad)], 1),
        "labels": torch.cat([ids, torch.full_like(pad, -100)], 1),
    }
    a = ux.stats.fisher_diagonal(model, [short], progress=False)
    b = ux.stats.fisher_diagonal(model, [long], progress=False)
    assert_dicts_close(b, a, rtol=1e-4, atol=1e-7)
    na = ux.stats.per_sample_grad_norms(model, [short], progress=False)
    nb = ux.stats.per_sample_grad_norms(model, [long], progress=False)
    torch.testing.assert_close(nb, na, rtol=1e-4, atol=1e-7)


# ---- per_batch (SSD) and saliency (SalUn) against their reference loops --------------------------
def ssd_reference_importance(model, loader):
    """SSD's reference code: eval mode, CE mean per minibatch, grad^2 summed, / number of batches."""
    model.eval()
    imp = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    criterion = nn.CrossEntropyLoss()
    for x, y in loader:
        model.zero_grad()
        criterion(model(x), y).backward()
        for n, p in model.named_parameters():
            imp[n] += p.grad.detach().clone().pow(2)
    return {n: v / len(loader) for n, v in imp.items()}


def salun_reference_saliency(model, loader):
    """SalUn's generate_mask: eval mode, -CE per batch, grads summed over batches, abs."""
    model.eval()
    acc = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    criterion = nn.CrossEntropyLoss()
    for x, y in loader:
        model.zero_grad()
        (-criterion(model(x), y)).backward()
        for n, p in model.named_parameters():
            acc[n] += p.grad.detach()
    return {n: v.abs() for n, v in acc.items()}


def test_per_batch_mode_equals_ssd_reference():
    model = small_cnn()
    data = cls_batches((3, 8, 9), classes=3)
    model(data[0][0])
    want = ssd_reference_importance(model, data)
    got = ux.stats.fisher_diagonal(model, data, mode="per_batch", progress=False)
    assert_dicts_close(got, want, rtol=1e-5, atol=1e-8)
    # and it is a different statistic from the per-sample Fisher
    ps = ux.stats.fisher_diagonal(model, data, mode="per_sample", progress=False)
    assert not torch.allclose(ps["0.weight"], got["0.weight"])


def test_saliency_equals_salun_reference():
    model = SeqMLP()
    data = cls_batches((5, 6))
    want = salun_reference_saliency(model, data)
    got = ux.stats.grad_saliency(model, data, progress=False)
    assert_dicts_close(got, want, rtol=1e-5, atol=1e-8)


# ---- API behaviour ----------------------------------------------------------------------------
def test_params_subset_and_requires_grad_restored():
    model = SeqMLP()
    model.inp.weight.requires_grad_(False)
    data = cls_batches((5, 6))
    got = ux.stats.fisher_diagonal(model, data, params=["inp.weight", model.out.bias], progress=False)
    assert set(got) == {"inp.weight", "out.bias"}
    assert got["inp.weight"].abs().sum() > 0
    assert not model.inp.weight.requires_grad and model.mid.weight.requires_grad
    want, _ = reference_stats(model, data, per_sample_grads_vmap)
    assert_dicts_close(got, {k: want[k] for k in got})


def test_no_param_grad_is_written():
    model = SeqMLP()
    ux.stats.fisher_diagonal(model, cls_batches((5, 6)), progress=False)
    ux.stats.per_sample_grad_norms(model, cls_batches((5, 6)), progress=False)
    assert all(p.grad is None for p in model.parameters())


def test_module_called_twice_goes_to_fallback():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.lin(torch.tanh(self.lin(x))))

    model = Twice()
    data = cls_batches((4,), classes=3)
    want_f, want_n = reference_stats(model, data, per_sample_grads_vmap)
    assert_dicts_close(ux.stats.fisher_diagonal(model, data, progress=False), want_f)
    torch.testing.assert_close(ux.stats.per_sample_grad_norms(model, data, progress=False), want_n, rtol=RTOL, atol=ATOL)


def test_custom_loss_fn_and_generator_data():
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(6, 3, generator=g), torch.randn(6, 1, generator=g)) for _ in range(2)]

    def mse(m, batch):
        x, y = batch
        return (m(x) - y).square().sum(1)

    got = ux.stats.fisher_diagonal(model, (b for b in batches), mse, progress=False)
    model.eval()
    want = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x, y in batches:
        for i in range(6):
            model.zero_grad()
            mse(model, (x[i : i + 1], y[i : i + 1])).sum().backward()
            for n, p in model.named_parameters():
                want[n] += p.grad.square() / 12
    assert_dicts_close(got, want)


def test_bad_inputs_name_the_argument():
    model = SeqMLP()
    data = cls_batches((5, 6))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        ux.stats.fisher_diagonal("model", data)
    with pytest.raises(TypeError, match="data must be an iterable of batches"):
        ux.stats.fisher_diagonal(model, torch.randn(3))
    with pytest.raises(ValueError, match="mode must be one of"):
        ux.stats.fisher_diagonal(model, data, mode="diag")
    with pytest.raises(ValueError, match=r"params\[0\] = 'nope' is not a parameter"):
        ux.stats.fisher_diagonal(model, data, params=["nope"])
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        ux.stats.grad_saliency(model, data, loss_fn=3)
    with pytest.raises(ValueError, match=r"loss_fn must return per-sample losses of shape \[4\]"):
        ux.stats.fisher_diagonal(model, data, lambda m, b: F.cross_entropy(m(b[0]), b[1]), progress=False)
    with pytest.raises(ValueError, match="data yielded no batches"):
        ux.stats.per_sample_grad_norms(model, [], progress=False)
    with pytest.raises(TypeError, match="no default loss"):
        ux.stats.fisher_diagonal(model, [torch.randn(4, 5, 6)], progress=False)


@pytest.mark.parametrize("case, fallback", [("seq_mlp", {"scale"}), ("cnn", set()), ("llama", set()),
                                             ("gpt2", {"transformer.wte.weight"})])
def test_fast_path_covers_the_supported_layers(case, fallback):
    # Only parameters outside the supported layer types (a raw Parameter; GPT-2's embedding, tied
    # to lm_head) may take the batch-of-one fallback; everything else is hooked.
    from unlearnx.stats._capture import SQ, PerSampleCapture

    model = CASES[case][0]()
    if case == "cnn":
        model(torch.randn(1, 3, 8, 9))
    wanted = dict(model.named_parameters())
    cap = PerSampleCapture(model, wanted, SQ, {})
    try:
        assert set(cap.fallback) == fallback
        kinds = {layer.kind for layer in cap.layers}
    finally:
        cap.remove()
    expected = {"seq_mlp": {"linear", "local"}, "cnn": {"conv2d", "local", "linear"},
                "llama": {"linear", "embedding", "local"}, "gpt2": {"conv1d", "embedding", "local"}}[case]
    assert kinds == expected


def test_parameters_used_outside_forward_go_to_fallback():
    # nn.MultiheadAttention never calls out_proj's forward; it passes out_proj.weight to F.linear
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.mha(x, x, x, need_weights=False)[0].mean(1))

    torch.manual_seed(0)
    model = Attn()
    data = cls_batches((5, 8), classes=3)
    want_f, want_n = reference_stats(model, data, per_sample_grads_loop)
    got_f = ux.stats.fisher_diagonal(model, data, progress=False)
    assert got_f["mha.out_proj.weight"].abs().sum() > 0
    assert_dicts_close(got_f, want_f)
    torch.testing.assert_close(ux.stats.per_sample_grad_norms(model, data, progress=False), want_n, rtol=RTOL, atol=ATOL)
