"""ULD (Ji et al., 2024): assistant construction, reversed-goal training, the ULD model as an LM,
its two-cache generation loop and the LogitsProcessor path."""
import math

import pytest
import torch
from torch import nn

import unlearnx as ux
from unlearnx.data.lm_batches import QATemplate
from unlearnx.methods.llm.losses import forward_logits, mean_nll
from unlearnx.methods.llm.uld import ULDLogitsProcessor, ULDModel, build_assistant, uniform_kl
from unlearnx.models.lm import build_lm
from unlearnx.models.lm_training import generate_answers

K = 2


@pytest.fixture(scope="module")
def uld(tiny):
    """A ULD model on the session's tiny Llama (4 layers), assistant K = 2, 30 epochs (~90 steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield ux.unlearn(tiny.model(), "uld", forget=tiny.forget, retain=tiny.retain, tokenizer=tiny.tok, layers=K,
                         lr=1e-2, epochs=30, batch_size=8, progress=False)
    finally:
        torch.set_num_threads(threads)


def _prompts(tiny, items, n):
    """Left-padded prompt batch (input_ids, attention_mask) of n questions of different lengths."""
    t = QATemplate()
    enc = [tiny.tok(t.prompt(i.question))["input_ids"] for i in items[:n]]
    width = max(len(e) for e in enc)
    pad = tiny.tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
    assert (mask == 0).any(), "the batch must exercise left padding"
    return ids, mask


def _assistant_stats(model, tiny):
    """(forget answer NLL, retain mean KL(p ‖ uniform)) of an assistant on the evaluation sets."""
    with torch.no_grad():
        f = tiny.forget_eval.collate(list(tiny.forget_eval))
        r = tiny.retain_eval.collate(list(tiny.retain_eval))
        return (mean_nll(forward_logits(model, f), f["labels"]).item(),
                uniform_kl(forward_logits(model, r), r["labels"]).item())


# ---- the assistant ----------------------------------------------------------------------------
def test_assistant_copies_first_layers_with_lora_on_non_head_linears(tiny):
    target = tiny.model()
    assistant = build_assistant(target, layers=K)
    base = assistant.get_base_model()
    assert len(base.model.layers) == K and base.config.num_hidden_layers == K
    tstate = target.state_dict()
    copied = 0
    for name, p in base.named_parameters():
        if "lora_" in name:
            continue
        src = name.replace(".base_layer", "")
        assert torch.equal(p, tstate[src]), name  # the target's weights, bit for bit
        assert p.data_ptr() != tstate[src].data_ptr()  # copies, not shared
        assert not p.requires_grad, name
        copied += 1
    assert copied == len([n for n in tstate if not n.startswith(tuple(f"model.layers.{i}." for i in range(K, 4)))])
    # LoRA (r 16) on every linear layer of the K layers, none on the LM head.
    linears = [n.removesuffix(".base_layer") for n, m in base.named_modules()
               if isinstance(m, nn.Linear) and "lora_" not in n]
    wrapped = {n for n, m in base.named_modules() if hasattr(m, "lora_A")}
    assert "lm_head" in linears and "lm_head" not in wrapped
    assert set(linears) - {"lm_head"} == wrapped and len(wrapped) == 7 * K
    assert all(m.lora_A["default"].out_features == 16 for n, m in base.named_modules() if n in wrapped)
    # Gradients reach the adapters only (B starts at 0, so dL/dB is the nonzero one at init).
    assistant.train()
    f = tiny.forget_eval.collate(list(tiny.forget_eval))
    mean_nll(forward_logits(assistant, f), f["labels"]).backward()
    grads = {n: p.grad for n, p in assistant.named_parameters()}
    assert all(g is None for n, g in grads.items() if "lora_" not in n)
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
    # The target is untouched and still has all its layers.
    assert len(target.model.layers) == 4 and not any(hasattr(m, "lora_A") for m in target.modules())


def test_assistant_of_gpt2_wraps_conv1d():
    model = build_lm("gpt2", vocab_size=50, layers=3, hidden=32, heads=2)
    assistant = build_assistant(model, layers=1, lora_r=4)
    base = assistant.get_base_model()
    assert len(base.transformer.h) == 1 and base.config.n_layer == 1
    wrapped = {n.rsplit(".", 1)[-1] for n, m in base.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {"c_attn", "c_proj", "c_fc"}  # GPT-2's Conv1D projections
    ids = torch.randint(3, 50, (2, 7))
    with torch.no_grad():  # untrained adapters (B = 0): the assistant is exactly the 1-layer early exit
        assert assistant(input_ids=ids).logits.shape == (2, 7, 50)


@pytest.mark.parametrize("family", ["qwen2_moe", "mistral"])
def test_assistant_and_decoding_on_other_families(family):
    from transformers import MistralConfig, MistralForCausalLM

    if family == "mistral":
        model = MistralForCausalLM(MistralConfig(vocab_size=60, hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                                                 pad_token_id=0, eos_token_id=3)).eval()
    else:
        model = build_lm("moe", vocab_size=60, layers=3, hidden=32, heads=2)
    assistant = build_assistant(model, layers=2)
    assert len(assistant.get_base_model().model.layers) == 2
    uld = ULDModel(model, assistant.merge_and_unload(), weight=1.0, relative_top=0.1)
    ids = torch.randint(4, 60, (2, 5))
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = uld.generate(ids, mask, max_new_tokens=6, eos_token_id=[], pad_token_id=0)
    assert out.shape == (2, 11)
    assert torch.equal(out, uld.generate(ids, mask, max_new_tokens=6, eos_token_id=[], pad_token_id=0,
                                         use_cache=False))


def test_assistant_errors_name_the_argument(tiny):
    target = tiny.model()
    with pytest.raises(ValueError, match=r"layers: must be an int in \[1, 4\]"):
        build_assistant(target, layers=5)
    with pytest.raises(ValueError, match="layers"):
        build_assistant(target, layers=0)
    with pytest.raises(ValueError, match="lora_dropout"):
        build_assistant(target, layers=1, lora_dropout=1.0)
    with pytest.raises(TypeError, match="model: expected a transformers PreTrainedModel"):
        build_assistant(nn.Linear(2, 2), layers=1)
    with pytest.raises(TypeError, match="without adapters"):
        build_assistant(build_assistant(target, layers=2), layers=1)
    from transformers import OPTConfig, OPTForCausalLM

    opt = OPTForCausalLM(OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, ffn_dim=32,
                                   num_attention_heads=2, word_embed_proj_dim=16))
    with pytest.raises(ValueError, match="unsupported architecture OPTForCausalLM"):
        build_assistant(opt, layers=1)


# ---- training -----------------------------------------------------------------------------------
def test_training_reverses_the_goals(tiny, uld):
    res = uld
    untrained = build_assistant(tiny._model, layers=K)
    f0, kl0 = _assistant_stats(untrained, tiny)
    f1, kl1 = _assistant_stats(res.model.assistant, tiny)
    print(f"assistant forget NLL {f0:.3f} -> {f1:.3f}, retain KL {kl0:.3f} -> {kl1:.3f}")
    assert f1 < f0 - 0.3, (f0, f1)  # remembers the forget answers better
    assert kl1 < 0.3 * kl0, (kl0, kl1)  # and moves toward uniform on retain answers
    log = res.log
    assert len(log["epoch_forget_loss"]) == len(log["epoch_retain_kl"]) == 30
    assert log["epoch_retain_kl"][-1] < log["epoch_retain_kl"][0]
    assert log["loss"][-1] == pytest.approx(log["forget_loss"][-1] + 5 * log["retain_kl"][-1], rel=1e-5)
    # The target inside the result is the original, weight for weight.
    for (n, p), q in zip(res.model.target.named_parameters(), tiny._model.parameters()):
        assert torch.equal(p, q), n
    assert isinstance(res.model, ULDModel) and res.model.weight == 0.8 and res.model.relative_top == 0.01


def test_saved_uld_model_loads_into_the_skeleton_with_w_and_r(tiny, uld, tmp_path):
    from unlearnx.report import load_state_dict, save_state_dict

    algo = ux.methods.get("uld", task="causal_lm")(layers=K, weight=0.5, relative_top=0.1)
    skeleton = algo.result_skeleton(tiny.model())
    assert (skeleton.weight, skeleton.relative_top) == (0.5, 0.1)
    path = save_state_dict(uld.model, tmp_path / "uld.safetensors")
    loaded = load_state_dict(skeleton, path)
    assert (loaded.weight, loaded.relative_top) == (0.8, 0.01)  # the saved w and r, not the skeleton's
    ids, mask = _prompts(tiny, tiny.forget, 3)
    assert torch.equal(loaded.generate(ids, mask, max_new_tokens=8), uld.model.generate(ids, mask, max_new_tokens=8))


def test_uniform_kl_is_zero_for_uniform_and_log_v_for_one_hot():
    labels = torch.tensor([[-100, 5, 6, -100]])
    flat = torch.zeros(1, 4, 11)
    assert uniform_kl(flat, labels).item() == pytest.approx(0.0, abs=1e-6)
    peaked = torch.full((1, 4, 11), -1e4)
    peaked[..., 3] = 0
    assert uniform_kl(peaked, labels).item() == pytest.approx(math.log(11), rel=1e-5)


@pytest.fixture(scope="module")
def strong(tiny_setup_class):
    """A better-trained target (25 epochs: answer NLL ~0.05) and its ULD model: the paper's regime,
    where the target is confident on what it knows."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        setup = tiny_setup_class(epochs=25)
        res = ux.unlearn(setup.model(), "uld", forget=setup.forget, retain=setup.retain, tokenizer=setup.tok,
                         layers=K, lr=1e-2, epochs=30, batch_size=8, progress=False)
        yield setup, res
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_uld_forgets_while_retain_generations_stay(strong):
    setup, res = strong
    f0, r0 = setup.base_forget_nll, setup.base_retain_nll
    f1, r1 = setup.nll(res.model)
    # Measured (2-core CPU): forget NLL 0.05 -> 3.6, retain 0.052 -> 0.065.
    assert f1 > f0 + 2.0, (f0, f1)
    assert r1 < r0 + 0.1, (r0, r1)
    questions = [i.question for i in setup.retain[:40]]
    same = sum(a == b for a, b in zip(generate_answers(setup._model, setup.tok, questions, max_new_tokens=20),
                                      generate_answers(res.model, setup.tok, questions, max_new_tokens=20)))
    # Measured: 38 of 40 retain answers (0.95) identical to the target's greedy answers.
    print(f"ULD: forget NLL {f0:.3f} -> {f1:.3f}, retain {r0:.3f} -> {r1:.3f}, identical retain answers {same}/40")
    assert same >= 34, same
    forget_q = [i.question for i in setup.forget]
    changed = sum(a != b for a, b in zip(generate_answers(setup._model, setup.tok, forget_q, max_new_tokens=20),
                                         generate_answers(res.model, setup.tok, forget_q, max_new_tokens=20)))
    assert changed >= len(forget_q) // 2, changed


# ---- the ULD model as an LM ---------------------------------------------------------------------
def test_forward_is_the_combined_log_probs_and_caches_both_models(tiny, uld):
    from unlearnx.ops.logit_diff import logit_diff_logprobs_reference

    model = uld.model
    ids, mask = _prompts(tiny, tiny.retain, 4)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, position_ids=pos)
        zt = model.target(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        za = model.assistant(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        ref = logit_diff_logprobs_reference(zt, za, mode="uld", weight=0.8, relative_top=0.01)
        torch.testing.assert_close(full.logits, ref)
        # Prefix with the cache pair, then the last token alone: same last-position log-probs.
        head = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], use_cache=True)
        assert isinstance(head.cache, tuple) and len(head.cache) == 2
        step = model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=pos[:, -1:], cache=head.cache,
                     use_cache=True)
        torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], atol=1e-4, rtol=1e-4)
        batch = tiny.forget_eval.collate(list(tiny.forget_eval))
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        assert out.loss.item() == pytest.approx(mean_nll(out.logits, batch["labels"]).item())


def test_own_loop_equals_logits_processor_path(tiny, uld):
    from transformers import LogitsProcessorList

    model = uld.model
    ids, mask = _prompts(tiny, tiny.retain + tiny.forget[:3], 8)
    ours = model.generate(ids, mask, max_new_tokens=16)
    proc = ULDLogitsProcessor(model.assistant, weight=model.weight, relative_top=model.relative_top,
                              prompt_attention_mask=mask)
    theirs = model.target.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16,
                                   logits_processor=LogitsProcessorList([proc]),
                                   pad_token_id=tiny.tok.pad_token_id, eos_token_id=tiny.tok.eos_token_id)
    assert torch.equal(ours, theirs)
    # The processor restarts cleanly for a second generation with the same object.
    again = model.target.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16,
                                  logits_processor=LogitsProcessorList([proc]),
                                  pad_token_id=tiny.tok.pad_token_id, eos_token_id=tiny.tok.eos_token_id)
    assert torch.equal(again, theirs)
    # And ULD changes what the target alone would say on the forget prompts.
    alone = model.target.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16,
                                  pad_token_id=tiny.tok.pad_token_id, eos_token_id=tiny.tok.eos_token_id)
    assert not torch.equal(alone, theirs)


@pytest.mark.parametrize("sample", [False, True])
def test_kv_cache_loop_equals_recomputation(tiny, uld, sample):
    model = uld.model
    ids, mask = _prompts(tiny, tiny.forget, 5)
    kw = {"max_new_tokens": 12, "do_sample": sample, "seed": 7, "top_k": 20, "temperature": 0.9}
    cached = model.generate(ids, mask, **kw)
    plain = model.generate(ids, mask, use_cache=False, **kw)
    assert torch.equal(cached, plain)
    if sample:
        assert torch.equal(model.generate(ids, mask, **kw), cached)  # same seed, same tokens
        other = model.generate(ids, mask, **{**kw, "seed": 8})
        assert not torch.equal(other, cached)


def test_generation_stops_at_eos_and_stop_strings(tiny, uld):
    model = uld.model
    ids, mask = _prompts(tiny, tiny.retain, 4)
    out = model.generate(ids, mask, max_new_tokens=30)
    eos, pad = tiny.tok.eos_token_id, tiny.tok.pad_token_id
    for row in out[:, ids.shape[1]:].tolist():
        if eos in row:
            assert all(t == pad for t in row[row.index(eos) + 1:])
    text = tiny.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    stop = text.strip().split()[1]  # a word the unconstrained answer contains
    short = model.generate(ids[:1], mask[:1], max_new_tokens=30, stop_strings=[stop], tokenizer=tiny.tok)
    cut = tiny.tok.decode(short[0, ids.shape[1]:], skip_special_tokens=True)
    assert stop in cut and short.shape[1] < out.shape[1] or stop in cut and len(cut) < len(text)


def test_evaluation_suite_runs_on_the_uld_model(tiny, uld):
    from unlearnx.eval.llm import evaluate_tofu

    res = evaluate_tofu(uld.model, tiny.tok, forget=tiny.forget[:6], retain=tiny.retain[:6],
                        held={"other": tiny.retain[40:46]}, max_new_tokens=8)
    target = evaluate_tofu(tiny._model, tiny.tok, forget=tiny.forget[:6], retain=tiny.retain[:6],
                           held={"other": tiny.retain[40:46]}, max_new_tokens=8)
    assert 0 <= res.aggregate["model_utility"] <= 1
    assert res.aggregate["forget/probability"] < target.aggregate["forget/probability"]
    # Representation probes read the target's hidden states: ULD does not change them.
    from unlearnx.eval.llm.scoring import encode_items, hidden_states

    feats = encode_items(tiny.tok, tiny.forget[:4])
    pad = tiny.tok.pad_token_id
    assert (hidden_states(uld.model, feats, pad_token_id=pad) == hidden_states(tiny._model, feats, pad_token_id=pad)).all()


# ---- errors -------------------------------------------------------------------------------------
def test_errors_name_the_argument(tiny, uld):
    model = uld.model
    with pytest.raises(ValueError, match="weight"):
        ULDModel(model.target, model.assistant, weight=float("nan"))
    with pytest.raises(ValueError, match="relative_top"):
        ULDModel(model.target, model.assistant, relative_top=0.0)
    with pytest.raises(TypeError, match="assistant"):
        ULDModel(model.target, "not a model")
    with pytest.raises(TypeError, match="assistant"):
        ULDLogitsProcessor(None)
    ids, mask = _prompts(tiny, tiny.retain, 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(ids, mask, max_new_tokens=0)
    with pytest.raises(ValueError, match="tokenizer"):
        model.generate(ids, mask, stop_strings=["x"])
    with pytest.raises(ValueError, match="attention_mask"):
        model.generate(ids, mask[:, 1:])
    with pytest.raises(ValueError, match="top_p"):
        model.generate(ids, mask, do_sample=True, top_p=0.0)
    with pytest.raises(ValueError, match="cache"):
        model(input_ids=ids, cache=("only one",))
    with pytest.raises(ValueError, match="prompt_attention_mask"):
        ULDLogitsProcessor(model.assistant, prompt_attention_mask=mask[:1])(ids, torch.zeros(2, len(tiny.tok)))
    kw = {"forget": tiny.forget, "retain": tiny.retain, "tokenizer": tiny.tok, "progress": False}
    with pytest.raises(ValueError, match="layers: must be an int in"):
        ux.unlearn(tiny.model(), "uld", layers=5, **kw)
    with pytest.raises(ValueError, match="lora"):
        ux.unlearn(tiny.model(), "uld", lora=True, **kw)
    with pytest.raises(ValueError, match="relative_top"):
        ux.unlearn(tiny.model(), "uld", relative_top=2.0, **kw)
    with pytest.raises(ValueError, match="retain"):
        ux.unlearn(tiny.model(), "uld", forget=tiny.forget, tokenizer=tiny.tok, progress=False)
