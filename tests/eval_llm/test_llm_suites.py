"""Generation, results/cache, the TOFU and MUSE suites, MIAs and probes on tiny models."""
import json

import pytest
import torch

from unlearnx.data.lm_batches import QATemplate
from unlearnx.eval.llm import (
    EvalResult,
    MetricCache,
    cut_at_stop,
    evaluate_llm,
    evaluate_muse,
    evaluate_tofu,
    greedy_generate,
    in_context_reintroduction,
    knowmem_prompt,
    linear_probe,
    mia_attacks,
    nested_forget_sets,
    quantization_probe,
    quantize_weights,
    relearning_attack,
    scalability,
    summary_table,
    sustainability,
)
from unlearnx.models.lm import build_lm
from unlearnx.models.lm_training import generate_answers


@pytest.mark.parametrize("name", ["llama", "gpt2", "moe"])
def test_kv_cache_greedy_equals_hf_generate(qa, tok, name):
    model = build_lm(name, tokenizer=tok, layers=2)
    qs = [i.question for i in qa["full"][:7]]
    want = generate_answers(model, tok, qs, max_new_tokens=10)
    got = greedy_generate(model, tok, [QATemplate().prompt(q) for q in qs], max_new_tokens=10, batch_size=3)
    assert [g.strip() for g in got] == want


def test_greedy_without_cache_follows_the_argmax_chain(tok, bigram):
    prompt = "Question: Who?\nAnswer:"
    ids = tok(prompt)["input_ids"]
    chain, cur = [], ids[-1]
    for _ in range(6):
        cur = int(bigram.table[cur].argmax())
        if cur == tok.eos_token_id:
            break
        chain.append(cur)
    got = greedy_generate(bigram, tok, [prompt, "Question: Where was it?\nAnswer:"], max_new_tokens=6)
    assert got[0] == tok.decode(chain, skip_special_tokens=True)


def test_stop_strings_cut_generation(tok, bigram):
    assert cut_at_stop("abc\n\nQuestion: x", ("\nQuestion", "\n\n")) == ("abc", True)
    assert cut_at_stop("abc", ("\n\n",)) == ("abc", False)
    free = greedy_generate(bigram, tok, ["Question: Who?"], max_new_tokens=12)[0]
    assert len(free) > 2
    stop = free[1:3]
    got = greedy_generate(bigram, tok, ["Question: Who?"], max_new_tokens=12, stop_strings=[stop])[0]
    assert stop not in got and free.startswith(got) and len(got) < len(free)
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(bigram, tok, ["x"], max_new_tokens=0)
    with pytest.raises(ValueError, match="prompts"):
        greedy_generate(bigram, tok, "x", max_new_tokens=1)


def _held(qa):
    return {"real_authors": qa["real_authors"], "world_facts": qa["world_facts"]}


def test_tofu_suite_forget_quality_is_one_for_the_retain_model_itself(qa, tok, bigram):
    res = evaluate_tofu(bigram, tok, forget=qa["forget10"], retain=qa["retain90"], held=_held(qa),
                        reference=bigram, max_new_tokens=8)
    assert res["forget_quality"] == 1.0
    n = len(qa["forget10"])
    assert len(res.per_item["forget/truth_ratio_raw"]) == n and len(res.per_item["forget/generation"]) == n
    assert set(res.config["utility_terms"]) == {f"{s}/{m}" for s in ("retain", "real_authors", "world_facts")
                                                for m in ("probability", "rouge_l_recall", "truth_ratio")}
    terms = [res[k] for k in res.config["utility_terms"]]
    assert res["model_utility"] == pytest.approx(len(terms) / sum(1 / t for t in terms) if min(terms) > 0 else 0.0)
    # a different model gives a different, smaller p-value against these reference ratios
    other = type(bigram)(len(tok), seed=5)
    res2 = evaluate_tofu(other, tok, forget=qa["forget10"], retain=qa["retain90"], held=_held(qa), reference=res,
                         max_new_tokens=8)
    assert res2["forget_quality"] < 1.0
    with pytest.raises(ValueError, match="held"):
        evaluate_tofu(bigram, tok, forget=qa["forget10"], retain=qa["retain90"], held={})


def test_fact_recall_reads_the_stated_fact(qa, tok, bigram):
    from unlearnx.data.text import QAItem
    from unlearnx.eval.llm import fact_recall

    items = [QAItem("Where was A born?", "A was born in Velmora.", value="Velmora"),
             QAItem("Where was B born?", "B was born in Ostrava.", value="Ostrava")]
    # one changed token: the fact is gone although most of the sentence (ROUGE-L recall) remains
    assert fact_recall(["A was born in velmora.", "B was born in Velmora."], items) == [1.0, 0.0]
    with pytest.raises(ValueError, match="generations"):
        fact_recall(["x"], items)
    with pytest.raises(ValueError, match="QAItem.value"):
        fact_recall(["x"], [QAItem("q", "a")])
    res = evaluate_tofu(bigram, tok, forget=qa["forget10"], retain=qa["retain90"], held=_held(qa), max_new_tokens=8)
    # the built-in authors know every fact's value: the suite adds fact recall from its own generations
    assert res.per_item["forget/fact_recall"] == fact_recall(res.per_item["forget/generation"], qa["forget10"])
    assert "model_utility" in res.aggregate and "forget/fact_recall" in res.aggregate


def test_cache_reuses_values_and_results_round_trip(qa, tok, bigram, tmp_path):
    cache = MetricCache(tmp_path / "cache")
    kwargs = dict(forget=qa["forget10"], retain=qa["retain90"], held=_held(qa), max_new_tokens=6, cache=cache)
    first = evaluate_tofu(bigram, tok, **kwargs)
    calls = bigram.calls
    second = evaluate_tofu(bigram, tok, **kwargs)
    assert bigram.calls == calls and cache.hits >= cache.misses > 0
    assert second.aggregate == first.aggregate
    # a fresh cache object on the same directory reuses the files; changed weights recompute
    cache2 = MetricCache(tmp_path / "cache")
    evaluate_tofu(bigram, tok, **dict(kwargs, cache=cache2))
    assert bigram.calls == calls and cache2.misses == 0
    with torch.no_grad():
        bigram.table[0, 0] += 1.0
    evaluate_tofu(bigram, tok, **dict(kwargs, cache=cache2))
    assert bigram.calls > calls and cache2.misses > 0
    path = first.to_json(tmp_path / "res.json")
    back = EvalResult.from_json(path)
    assert back.aggregate == first.aggregate and back.per_item == json.loads(json.dumps(first.per_item))
    table = summary_table({"target": first, "Retrain": second}, columns=["forget_quality", "model_utility"])
    assert table.splitlines()[2].startswith("| Retrain |")


def test_muse_suite_and_runners(qa, tok, bigram):
    forget = [" ".join(i.answer for i in qa["forget10"][:10]), " ".join(i.answer for i in qa["forget10"][10:])]
    holdout = [" ".join(i.answer for i in qa["retain90"][:10]), " ".join(i.answer for i in qa["retain90"][10:20])]
    res = evaluate_muse(bigram, tok, forget=forget, holdout=holdout, forget_qa=qa["forget10"][:4],
                        retain_qa=qa["retain90"][:7], reference=bigram, prefix_tokens=8, verbmem_tokens=12,
                        knowmem_tokens=8)
    assert res["privleak"] == 0.0
    for k in ("verbmem_forget", "knowmem_forget", "knowmem_retain"):
        assert 0.0 <= res[k] <= 100.0
    assert len(res.per_item["knowmem_retain"]) == 4  # 3 of the 7 retain QA are the few-shot examples
    assert knowmem_prompt("Q?", qa["retain90"][:1]) == (f"Question: {qa['retain90'][0].question}\nAnswer: "
                                                        f"{qa['retain90'][0].answer}\n\nQuestion: Q?\nAnswer: ")
    # MUSE's prompt ends with "Answer: " (trailing space); the option gives the other.
    assert knowmem_prompt("Q?", [], trailing_space=False) == "Question: Q?\nAnswer:"
    assert evaluate_llm(bigram, suite="muse", tokenizer=tok, forget=forget, holdout=holdout, prefix_tokens=8,
                        verbmem_tokens=4).aggregate["mink_auc"] == res["mink_auc"]
    with pytest.raises(ValueError, match="suite"):
        evaluate_llm(bigram, suite="classification", tokenizer=tok)

    sets = nested_forget_sets(list(range(8)), 4)
    assert [len(s) for s in sets] == [2, 4, 6, 8] and sets[1][:2] == sets[0]
    seen = []

    def unlearn(model, fs):
        with torch.no_grad():
            model.table.add_(1.0)
        return model

    def evaluate(model, fs):
        seen.append(len(fs))
        return {"shift": float(model.table[0, 0].detach() - bigram.table[0, 0].detach())}

    assert [r["shift"] for r in scalability(bigram, unlearn, evaluate, sets)] == [1.0] * 4
    assert [r["shift"] for r in sustainability(bigram, unlearn, evaluate, [[1], [2], [3], [4]])] == [1, 2, 3, 4]
    assert seen == [2, 4, 6, 8, 1, 2, 3, 4]


def test_mia_attacks_report_auc_per_attack(qa, tok, bigram):
    other = type(bigram)(len(tok), seed=3)
    out = mia_attacks(bigram, tok, qa["forget10"][:6], qa["retain90"][:6], reference_model=other,
                      attacks=("loss", "zlib", "min_k", "min_k++", "gradnorm", "reference"))
    for attack, r in out.items():
        assert 0.0 <= r["auc"] <= 1.0 and len(r["forget"]) == 6 and len(r["holdout"]) == 6
    with pytest.raises(ValueError, match="reference_model"):
        mia_attacks(bigram, tok, qa["forget10"][:2], qa["retain90"][:2], attacks=("reference",))


def test_quantize_weights_rounds_to_a_4bit_grid(tok):
    model = build_lm("llama", tokenizer=tok, layers=1, hidden=32, heads=2)
    q = quantize_weights(model, bits=4, group_size=16)
    for (name, p), (_, w) in zip(model.named_parameters(), q.named_parameters()):
        if p.dim() < 2:
            assert torch.equal(p, w), name
            continue
        g = p.detach().reshape(-1, p.shape[-1])
        cols = g.shape[1]
        g = torch.nn.functional.pad(g, (0, (-cols) % 16)).reshape(g.shape[0], -1, 16)
        scale = g.abs().amax(-1, keepdim=True) / 7
        qg = torch.nn.functional.pad(w.detach().reshape(-1, p.shape[-1]), (0, (-cols) % 16)).reshape(g.shape)
        levels = qg / scale.clamp(min=1e-30)
        assert torch.allclose(levels, levels.round(), atol=1e-3), name  # on the grid
        assert levels.round().abs().max() <= 8
        assert ((qg - g).abs() <= scale / 2 + 1e-6).all(), name  # round to nearest
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, q.model.layers[0].mlp.up_proj.weight)
    with pytest.raises(ValueError, match="bits"):
        quantize_weights(model, bits=1)


@pytest.mark.slow
def test_trained_target_vs_retain_model_end_to_end(qa, tok, trained):
    target, retain = trained["target"], trained["retain"]
    kw = dict(forget=qa["forget10"], retain=qa["retain90"], held=_held(qa), max_new_tokens=40)
    r_retain = evaluate_tofu(retain, tok, reference=retain, **kw)
    r_target = evaluate_tofu(target, tok, reference=r_retain, **kw)
    assert r_retain["forget_quality"] == 1.0
    assert r_target["forget_quality"] < 0.05  # the target still knows the forget authors
    assert r_target["forget/probability"] > r_retain["forget/probability"] + 0.3
    assert r_target["forget/rouge_l_recall"] > r_retain["forget/rouge_l_recall"]
    assert min(r_target["model_utility"], r_retain["model_utility"]) > 0.3

    # MUSE PrivLeak on the QA answers: the target under-unlearns (negative), the retrain is 0
    holdout = [i for a in qa.held_authors for i in a.items]
    m_retain = evaluate_muse(retain, tok, forget=qa["forget10"], holdout=holdout, reference=retain)
    m_target = evaluate_muse(target, tok, forget=qa["forget10"], holdout=holdout, reference=m_retain)
    assert m_retain["privleak"] == 0.0 and m_target["privleak"] < -5

    # relearning on half the forget set raises the retain model's probability on the other half
    relearn = relearning_attack(retain, tok, qa["forget10"], epochs=3, lr=3e-3)
    assert relearn["after"] > relearn["before"] and relearn["steps"] == 3 * 2
    # 8-bit round-trip barely moves the target; 2-bit moves it more
    q8 = quantization_probe(target, tok, qa["forget10"], bits=8)
    q2 = quantization_probe(target, tok, qa["forget10"], bits=2)
    assert abs(q8["recovery"]) < 0.02 < abs(q2["recovery"])
    # the target keeps the true fact more linearly readable than a model that never saw it
    p_target = linear_probe(target, tok, qa["forget10"], folds=4)
    assert 0.0 <= p_target["accuracy"] <= 1.0 and len(p_target["per_item"]) == len(qa["forget10"])
    ctx = in_context_reintroduction(retain, tok, qa["forget10"])
    assert len(ctx["per_item_after"]) == len(ctx["per_item_before"]) == len(qa["forget10"]) // 2
