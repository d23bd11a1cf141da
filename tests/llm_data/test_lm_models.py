import pytest
import torch
from transformers.pytorch_utils import Conv1D

from unlearnx.models.lm import available_lms, build_lm, tiny_gpt2, tiny_llama, tiny_moe

VOCAB = 97


def _batch(b=3, t=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (b, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # one right-padded row
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


@pytest.mark.parametrize("name", ["llama", "gpt2", "moe", "mixtral", "olmoe", "deepseek"])
def test_forward_backward(name):
    model = build_lm(name, vocab_size=VOCAB)
    ids, mask, labels = _batch()
    model.train()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (3, 11, VOCAB)
    assert torch.isfinite(out.loss) and abs(out.loss.item() - torch.log(torch.tensor(float(VOCAB))).item()) < 1.0
    out.loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    grads = [p.grad.abs().sum().item() for p in model.parameters()]
    assert sum(g > 0 for g in grads) >= 0.9 * len(grads)


@pytest.mark.parametrize("name", ["llama", "gpt2", "moe", "mixtral", "olmoe", "deepseek"])
def test_seeded_init_and_global_rng_untouched(name):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_lm(name, vocab_size=VOCAB, seed=5)
    assert torch.equal(torch.rand(3), expected_next)  # building a model does not consume the global RNG
    b = build_lm(name, vocab_size=VOCAB, seed=5)
    c = build_lm(name, vocab_size=VOCAB, seed=6)
    pa, pb, pc = (list(m.parameters()) for m in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert not all(torch.equal(x, y) for x, y in zip(pa, pc))
    assert not a.training  # built in eval mode


def test_gpt2_uses_conv1d_llama_uses_linear():
    gpt2 = tiny_gpt2(VOCAB, layers=2)
    convs = [m for m in gpt2.modules() if isinstance(m, Conv1D)]
    assert len(convs) == 2 * 4  # c_attn, c_proj (attention), c_fc, c_proj (MLP) per layer
    # Conv1D stores its weight [in, out], the transpose of nn.Linear.
    c_fc = gpt2.transformer.h[0].mlp.c_fc
    assert isinstance(c_fc, Conv1D) and c_fc.weight.shape == (64, 256)
    llama = tiny_llama(VOCAB, layers=2)
    assert not any(isinstance(m, Conv1D) for m in llama.modules())
    assert llama.model.layers[0].mlp.down_proj.weight.shape == (64, 256)


def test_moe_routes_to_experts():
    model = tiny_moe(VOCAB, layers=3, experts=4, top_k=2)
    ids, mask, _ = _batch(b=4, t=16)
    out = model(input_ids=ids, attention_mask=mask, output_router_logits=True)
    assert len(out.router_logits) == 3
    for logits in out.router_logits:
        assert logits.shape == (4 * 16, 4)
        chosen = logits.softmax(-1).topk(2, dim=-1).indices
        # Random init spreads tokens: every expert gets some of the 128 routing slots.
        assert torch.bincount(chosen.flatten(), minlength=4).min() > 0
    assert out.aux_loss is not None and torch.isfinite(out.aux_loss)
    block = model.model.layers[0].mlp
    assert block.experts.gate_up_proj.shape[0] == 4 and hasattr(block, "shared_expert")
    assert model(input_ids=ids, attention_mask=mask).router_logits is None


def test_moe_routing_changes_output():
    # The router matters: zeroing one expert's down-projection changes tokens routed to it.
    model = tiny_moe(VOCAB, layers=1, experts=4, top_k=1)
    ids, mask, _ = _batch()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        model.model.layers[0].mlp.experts.down_proj[0].zero_()
        after = model(input_ids=ids, attention_mask=mask).logits
    changed = (before - after).abs().amax(-1) > 0
    assert changed.any() and not changed.all()


def test_build_lm_from_tokenizer_and_errors():
    class Tok:
        pad_token_id, bos_token_id, eos_token_id = 5, 6, 7

        def __len__(self):
            return 50

    model = build_lm("llama", tokenizer=Tok())
    assert model.config.vocab_size == 50 and model.config.pad_token_id == 5 and model.config.eos_token_id == 7
    assert model.generation_config.eos_token_id == 7
    assert available_lms() == ["deepseek", "gpt2", "llama", "mixtral", "moe", "olmoe"]
    with pytest.raises(ValueError, match="name"):
        build_lm("bert", vocab_size=10)
    with pytest.raises(ValueError, match="vocab_size"):
        build_lm("llama")
    with pytest.raises(ValueError, match="vocab_size"):
        build_lm("llama", tokenizer=Tok(), vocab_size=51)
    with pytest.raises(ValueError, match="heads"):
        tiny_llama(VOCAB, hidden=30, heads=4)
    with pytest.raises(ValueError, match="top_k"):
        tiny_moe(VOCAB, experts=2, top_k=3)
    with pytest.raises(ValueError, match="layers"):
        tiny_gpt2(VOCAB, layers=0)
