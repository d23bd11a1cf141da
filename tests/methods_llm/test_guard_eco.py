"""ECO prompt guards on the tiny Llama trained on fictitious authors (TinySetup of conftest.py, the session-wide `tiny` fixture)."""
import json
import math

import pytest
import torch

from unlearnx.data.authors import make_authors
from unlearnx.data.lm_batches import QADataset, QATemplate
from unlearnx.eval.llm import greedy_generate, rouge_l
from unlearnx.guards import (ECO, ECOGuard, PromptClassifier, build_eco_guard, corrupt_embeddings,
                             fit_prompt_classifier, forget_probability, search_strength)
from unlearnx.guards.eco import _auc

TARGET = 0.3  # between the forget probability of the model (~0.55) and where prompt corruption saturates


@pytest.fixture(scope="module")
def fitted(tiny):
    model = tiny.model()
    guard, log = build_eco_guard(model, tiny.forget, tiny.retain, tokenizer=tiny.tok, target=TARGET, progress=False)
    return model, guard, log


def _batch(tiny, items):
    ds = QADataset(items, tiny.tok)
    return ds.collate(list(ds))


def _prompts(items):
    return [QATemplate().prompt(i.question) for i in items]


# ---- classifier ----------------------------------------------------------------------------------

def test_classifier_separates_forget_from_retain_prompts(tiny, fitted):
    _, guard, log = fitted
    stats = log["classifier"]
    assert stats["auc"] >= 0.95, stats  # held-out prompts
    assert stats["fpr"] <= 0.05 + 1e-9 and stats["tpr"] >= 0.8, stats
    f = _batch(tiny, tiny.forget)
    r = _batch(tiny, tiny.retain)
    pf = guard.classifier(guard.prompt_features(f["input_ids"], f["attention_mask"]))
    pr = guard.classifier(guard.prompt_features(r["input_ids"], r["attention_mask"]))
    assert _auc(pf, pr) >= 0.95
    # The suffix rule finds the prompt of full question+answer inputs: the features are the prompt's.
    assert log["prompt_suffix"], "the template's prompt tail should have been found"
    prompt_only = tiny.tok(_prompts(tiny.forget[:3]), padding=True, return_tensors="pt")
    assert torch.allclose(guard.prompt_features(prompt_only["input_ids"], prompt_only["attention_mask"]),
                          guard.prompt_features(f["input_ids"][:3], f["attention_mask"][:3]), atol=1e-5)


def test_fit_prompt_classifier_threshold_controls_false_positives():
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(40, 5, generator=gen) + torch.tensor([1.5, 0, 0, 0, 0])
    neg = torch.randn(200, 5, generator=gen)
    strict, s1 = fit_prompt_classifier(pos, neg, target_fpr=0.0, seed=1)
    loose, s2 = fit_prompt_classifier(pos, neg, target_fpr=0.3, seed=1)
    assert s1["fpr"] == 0.0 and s2["fpr"] <= 0.3
    assert float(strict.threshold) >= float(loose.threshold)
    assert s2["tpr"] >= s1["tpr"]
    assert 0.75 <= s1["auc"] <= 1.0  # overlapping classes: good but not perfect separation


# ---- unflagged prompts are untouched ---------------------------------------------------------------

def test_unflagged_prompts_give_bit_identical_logits(tiny, fitted):
    model, guard, _ = fitted
    b = _batch(tiny, tiny.retain[:40])
    flags = guard.flag(b["input_ids"], b["attention_mask"])
    keep = (~flags).nonzero().squeeze(1)
    assert len(keep) >= 30
    ids, att = b["input_ids"][keep], b["attention_mask"][keep]
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=att).logits
        got = guard(input_ids=ids, attention_mask=att)
    assert torch.equal(got.logits, want)
    assert got.hidden_states is None  # the classifier's hidden states are not handed to the caller


def test_mixed_batch_corrupts_only_flagged_rows(tiny, fitted):
    model, guard, _ = fitted
    b = _batch(tiny, list(tiny.forget[:4]) + list(tiny.retain[:12]))
    flags = guard.flag(b["input_ids"], b["attention_mask"])
    assert flags[:4].all() and flags.sum() < len(flags)
    with torch.no_grad():
        want = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        got = guard(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    assert torch.equal(got[~flags], want[~flags])
    # Flagged rows change from the first prompt position on (bos is corrupted too) ...
    assert not torch.allclose(got[flags][:, :2], want[flags][:, :2])


def test_unflagged_generations_identical_and_flagged_ones_change(tiny, fitted):
    model, guard, _ = fitted
    retain_prompts = _prompts(tiny.retain[:8])
    forget_prompts = _prompts(tiny.forget[:8])
    assert greedy_generate(guard, tiny.tok, retain_prompts, max_new_tokens=16) == \
        greedy_generate(model, tiny.tok, retain_prompts, max_new_tokens=16)
    base = greedy_generate(model, tiny.tok, forget_prompts, max_new_tokens=16)
    guarded = greedy_generate(guard, tiny.tok, forget_prompts, max_new_tokens=16)
    assert sum(a != b for a, b in zip(base, guarded)) >= 4
    # The guarded answers recall much less of the true answers (TOFU's ROUGE-L recall).
    truth = [it.answer for it in tiny.forget[:8]]
    recall = [sum(rouge_l(outs, truth, use_stemmer=True, kind="recall")) / 8 for outs in (base, guarded)]
    assert recall[1] < recall[0] - 0.3, recall


def test_hf_generate_with_kv_cache_matches_uncached_decoding(tiny, fitted):
    model, guard, _ = fitted
    enc = tiny.tok(_prompts([tiny.forget[0], tiny.retain[0]]), padding=True, return_tensors="pt")
    # Same lengths keep this free of padding: compare one prompt at a time.
    for row in range(2):
        ids = enc["input_ids"][row:row + 1][:, enc["attention_mask"][row].bool()]
        out = guard.generate(ids, max_new_tokens=8, do_sample=False)
        ref = ids
        with torch.no_grad():
            for _ in range(8):  # no cache: the whole sequence again, the prompt found by its suffix
                nxt = guard(input_ids=ref, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                ref = torch.cat([ref, nxt], 1)
                if int(nxt) == tiny.tok.eos_token_id:
                    break
        assert out[0, :ref.shape[1]].tolist() == ref[0].tolist()
        if row == 1:  # unflagged: exactly the bare model's generate
            assert torch.equal(out, model.generate(ids, max_new_tokens=8, do_sample=False))


# ---- the corruption strength ------------------------------------------------------------------------

def test_flagged_forget_probability_moves_to_the_target(tiny, fitted):
    model, guard, log = fitted
    f = QADataset(tiny.forget, tiny.tok)
    r = QADataset(tiny.retain[:40], tiny.tok)
    before = forget_probability(model, f)
    after = forget_probability(guard, f)  # the classifier decides, as at inference
    assert log["target_reached"] and before > TARGET + 0.15
    assert abs(after - TARGET) <= 0.05, (before, after, log["strength"])
    assert abs(forget_probability(guard, r) - forget_probability(model, r)) <= 0.05  # few false positives
    trace = log["search_trace"]
    assert trace[0] == [0.0, pytest.approx(before)]


def test_surrogate_target_and_left_padded_prompts(tiny, fitted):
    model, guard, _ = fitted
    unseen = make_authors(2, seed=7, n_real_authors=0, n_world_facts=0)["full"]
    g2, log = build_eco_guard(model, tiny.forget, tiny.retain, tokenizer=tiny.tok, surrogate=unseen,
                              search_steps=2, progress=False)
    assert log["target_source"] == "surrogate"
    assert log["target"] == pytest.approx(forget_probability(model, QADataset(unseen, tiny.tok)))
    # An oracle that still knows the forget answers (the model itself) sets a target met uncorrupted.
    _, log = build_eco_guard(model, tiny.forget, tiny.retain, tokenizer=tiny.tok, oracle=model, progress=False)
    assert log["target_source"] == "oracle" and log["strength"] == 0.0 and log["target_reached"]
    # Left padding (as batched generation uses): same prompt positions and flags as unpadded rows.
    b = _batch(tiny, [tiny.forget[0], tiny.retain[0]])
    ids, att = b["input_ids"], b["attention_mask"]
    n = att.sum(1)
    left = torch.stack([torch.cat([r.new_zeros(ids.shape[1] - k), r[:k]]) for r, k in zip(ids, n)])
    left_att = torch.stack([torch.cat([a.new_zeros(ids.shape[1] - k), a[:k]]) for a, k in zip(att, n)])
    pm, pm_left = guard.prompt_mask(ids, att), guard.prompt_mask(left, left_att)
    assert pm.sum(1).tolist() == pm_left.sum(1).tolist() and (pm.sum(1) < n).all()
    assert guard.flag(left, left_att).tolist() == guard.flag(ids, att).tolist() == [True, False]


def test_search_strength_converges_on_a_monotone_toy():
    s, trace = search_strength(lambda s: 1 / (1 + s), 0.2, tol=1e-3, steps=40, progress=False)
    assert abs(1 / (1 + s) - 0.2) <= 1e-3 * 0.2 and 1 / (1 + s) <= 0.2 + 1e-12
    assert math.isclose(s, 4.0, rel_tol=5e-3)
    assert trace[0] == (0.0, 1.0)
    # Reached without corruption: s = 0.
    assert search_strength(lambda s: 0.1 + 0 * s, 0.2, progress=False)[0] == 0.0
    # A saturating metric that never reaches the target: the weakest strength at the floor, not max.
    s2, t2 = search_strength(lambda s: 0.5 + 0.5 / (1 + s), 0.1, max_strength=1e4, tol=0.02, progress=False)
    assert 0.5 + 0.5 / (1 + s2) <= 0.5 * 1.02 and s2 < 1e4


def test_corruption_modes():
    gen = torch.Generator().manual_seed(0)
    e = torch.randn(3, 5, 8, generator=gen)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, :3] = True
    mask[2, 1:] = True
    a = corrupt_embeddings(e, mask, mode="rand_noise_first_n", strength=2.0, n_dims=2, seed=3)
    assert torch.equal(a[~mask], e[~mask]) and torch.equal(a[..., 2:], e[..., 2:])
    assert (a[mask][:, :2] != e[mask][:, :2]).all()
    assert torch.equal(a, corrupt_embeddings(e, mask, mode="rand_noise_first_n", strength=2.0, n_dims=2, seed=3))
    assert not torch.equal(a, corrupt_embeddings(e, mask, mode="rand_noise_first_n", strength=2.0, n_dims=2, seed=4))
    # A row's noise does not depend on the other rows of the batch.
    alone = corrupt_embeddings(e[:1], mask[:1], mode="noise", strength=1.0, seed=3)
    assert torch.equal(alone[0], corrupt_embeddings(e, mask, mode="noise", strength=1.0, seed=3)[0])
    n = corrupt_embeddings(e, mask, mode="noise", strength=0.5, seed=0)
    assert ((n - e)[mask] != 0).all() and torch.equal(n[~mask], e[~mask])
    z = corrupt_embeddings(e, mask, mode="zero_out_top_k", strength=3, seed=0)
    assert ((z[mask] == 0).sum(-1) == 3).all() and torch.equal(z[~mask], e[~mask])
    kept = z[mask].abs().max(-1).values  # the zeroed dims were the largest-magnitude ones
    assert (kept <= e[mask].abs().topk(4, -1).values[:, 3] + 1e-7).all()


# ---- errors, persistence, entry points -------------------------------------------------------------

def test_errors_name_arguments(tiny, fitted):
    model, guard, _ = fitted
    e, m = torch.zeros(1, 2, 4), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="mode"):
        corrupt_embeddings(e, m, mode="blur", strength=1.0)
    with pytest.raises(ValueError, match="strength"):
        corrupt_embeddings(e, m, mode="noise", strength=-1.0)
    with pytest.raises(ValueError, match="mask"):
        corrupt_embeddings(e, m[:, :1], mode="noise", strength=1.0)
    with pytest.raises(ValueError, match="target, oracle, surrogate"):
        build_eco_guard(model, tiny.forget, tiny.retain, tokenizer=tiny.tok, progress=False)
    with pytest.raises(ValueError, match="target, oracle, surrogate"):
        ECO(mode="noise")
    with pytest.raises(ValueError, match="mode"):
        ECO(mode="blur", target=0.1)
    with pytest.raises(ValueError, match="retain"):
        build_eco_guard(model, tiny.forget, None, tokenizer=tiny.tok, target=0.1, progress=False)
    with pytest.raises(ValueError, match="holdout"):
        fit_prompt_classifier(torch.zeros(4, 2), torch.zeros(4, 2), holdout=0.0)
    with pytest.raises(ValueError, match="input_ids"):
        guard(inputs_embeds=torch.zeros(1, 3, 64))
    with pytest.raises(ValueError, match="prompt_mask"):
        guard(input_ids=torch.ones(2, 3, dtype=torch.long), prompt_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="flags"):
        guard(input_ids=torch.ones(2, 3, dtype=torch.long), flags=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="tokenizer"):
        ECOGuard(model, PromptClassifier(4), embed=lambda texts: torch.zeros(len(texts), 4))
    with pytest.raises(ValueError, match="target"):
        search_strength(lambda s: s, -1.0, progress=False)


def test_guard_state_saves_and_loads(tmp_path, tiny, fitted):
    model, guard, _ = fitted
    guard.save(tmp_path / "g")
    files = sorted(p.name for p in (tmp_path / "g").iterdir())
    assert files == ["eco_guard.json", "eco_guard.safetensors"]  # no temporary files left behind
    config = json.loads((tmp_path / "g" / "eco_guard.json").read_text())
    assert config["strength"] == guard.strength and config["mode"] == "rand_noise_first_n"
    loaded = ECOGuard.load(tmp_path / "g", model)
    b = _batch(tiny, list(tiny.forget[:3]) + list(tiny.retain[:5]))
    ids, att = b["input_ids"], b["attention_mask"]
    assert torch.equal(loaded.flag(ids, att), guard.flag(ids, att))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                           guard(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits)
    with pytest.raises(ValueError, match="embed"):
        ECOGuard.load(tmp_path / "g", model, embed=lambda t: torch.zeros(len(t), 3), tokenizer=tiny.tok)
    with pytest.raises(FileNotFoundError, match="directory"):
        ECOGuard.load(tmp_path / "missing", model)


def test_external_embed_classifier(tiny):
    vocab = len(tiny.tok)

    def bag_of_tokens(texts):  # a stand-in sentence encoder: normalized token counts
        out = torch.zeros(len(texts), vocab)
        for i, t in enumerate(texts):
            for tok_id in tiny.tok(t, add_special_tokens=False)["input_ids"]:
                out[i, tok_id] += 1
        return out / out.sum(1, keepdim=True).clamp(min=1)

    model = tiny.model()
    guard, log = build_eco_guard(model, tiny.forget, tiny.retain, tokenizer=tiny.tok, target=TARGET,
                                 embed=bag_of_tokens, mode="noise", search_steps=4, progress=False)
    assert log["classifier"]["auc"] >= 0.9
    b = _batch(tiny, tiny.forget[:5])
    assert guard.flag(b["input_ids"], b["attention_mask"]).sum() >= 4


def test_eco_method_returns_the_guard(tiny):
    model = tiny.model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    algo = ECO(target=TARGET, search_steps=4)
    guard = algo.apply(model, QADataset(tiny.forget, tiny.tok), False, retain=QADataset(tiny.retain, tiny.tok))
    assert isinstance(guard, ECOGuard) and guard.model is model and algo.log["strength"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights untouched


def test_unlearn_entry_point(tiny):
    import unlearnx as ux

    res = ux.unlearn(tiny.model(), "eco", forget=tiny.forget, retain=tiny.retain, tokenizer=tiny.tok, target=TARGET,
                     progress=False)
    assert isinstance(res.model, ECOGuard)


@pytest.mark.slow
def test_tofu_suite_runs_on_the_guard(tiny, fitted):
    import unlearnx as ux

    model, guard, _ = fitted
    qa = make_authors(10, n_real_authors=0, n_world_facts=0)
    kw = dict(suite="tofu", tokenizer=tiny.tok, forget=qa["forget10"], retain=qa["retain90"][:20],
              held={"retain_more": qa["retain90"][20:40]}, max_new_tokens=24)
    res_model, res_guard = ux.evaluate(model, **kw), ux.evaluate(guard, **kw)
    assert res_guard["forget/probability"] < res_model["forget/probability"] - 0.1
    assert abs(res_guard["retain/probability"] - res_model["retain/probability"]) <= 0.05
