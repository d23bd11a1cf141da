"""RWKU protocol on tiny models and tiny files: prompts, self-generated forget corpus, metrics, batch."""
import copy

import numpy as np
import pytest

from unlearnx.data.benchmarks import RWKUData
from unlearnx.data.text import QAItem
from unlearnx.eval.llm import rwku as rwku_mod
from unlearnx.eval.llm.mia import mia_attacks
from unlearnx.eval.llm.rwku import (
    evaluate_rwku,
    evaluate_rwku_targets,
    rwku_forget_corpus,
    rwku_mmlu_accuracy,
    rwku_probe_prompt,
    rwku_triviaqa,
)
from unlearnx.models.lm import build_lm


@pytest.fixture(scope="module")
def llama(tok):
    return build_lm("llama", tokenizer=tok, layers=1, hidden=32, heads=2, seed=1)


def _data(name="Ann A"):
    p = lambda q, a, kind: QAItem(question=q, answer=a, subject=name, fact=kind)  # noqa: E731
    return RWKUData(
        targets=[name],
        forget={"level1": [p(f"{name} was born in ___.", "Velmora", "FB")],
                "level2": [p(f"Where was {name} born?", "Velmora city", "QA")],
                "level3": [p("Q1", "red blue", "prefix injection"), p("Q2", "green", "reverse query"),
                           p("Q3", "red", "prefix injection")]},
        neighbor={"level1": [p("Bob was born in ___.", "Kora", "FB")]},
        mia_forget=[f"{name} wrote many books about rivers.", f"{name} lived in Velmora."],
        mia_forget_subjects=[name, name],
        mia_retain=["A quiet river runs through a valley.", "Mountains rise over the plain."],
        mia_retain_subjects=[name, name])


def test_probe_prompts_plain_and_chat(tok):
    fb = QAItem("X was born in ___.", "Y", fact="FB")
    assert rwku_probe_prompt(tok, fb, 1) == ("Please complete the blank in the following question.\n"
                                             "Question: X was born in ___.\nAnswer:")
    assert rwku_probe_prompt(tok, QAItem("Q?", "A"), 2) == \
        "Please briefly answer the following question.\nQuestion: Q?\nAnswer:"
    assert rwku_probe_prompt(tok, QAItem("Q?", "A", fact="affirmative suffix"), 3) == \
        "Please briefly answer the following question.\nQuestion: Q?"
    assert rwku_probe_prompt(tok, QAItem("Q: ctx\nQ?", "A", fact="incontext learning"), 3) == \
        "Please briefly answer the following question.\nQ: ctx\nQ?\nAnswer:"
    t2 = copy.deepcopy(tok)
    t2.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    assert rwku_probe_prompt(t2, QAItem("Q?", "A"), 2) == \
        "<user>Please briefly answer the following question.\nQuestion: Q?\n<assistant>Answer:"
    with pytest.raises(ValueError, match="use_chat_template"):
        rwku_probe_prompt(tok, fb, 1, use_chat_template=True)
    with pytest.raises(ValueError, match="level"):
        rwku_probe_prompt(tok, fb, 4)


def test_forget_corpus_is_sampled_and_seeded(tok, llama):
    a = rwku_forget_corpus(llama, tok, "Ann A", n_texts=3, max_new_tokens=6, batch_size=2, seed=5)
    b = rwku_forget_corpus(llama, tok, "Ann A", n_texts=3, max_new_tokens=6, batch_size=2, seed=5)
    c = rwku_forget_corpus(llama, tok, "Ann A", n_texts=3, max_new_tokens=6, batch_size=2, seed=6)
    assert a == b and 1 <= len(a) <= 3 and all(isinstance(t, str) and t for t in a)
    assert a != c
    with pytest.raises(ValueError, match="target"):
        rwku_forget_corpus(llama, tok, " ")


def test_metrics_aggregate_per_level_and_attack_type(tok, llama, monkeypatch):
    data = _data()
    # Answer every probe with its own answer except "Q3" (answered "blue"): recall is known exactly.
    answers = {rwku_probe_prompt(tok, p, int(lv[-1])): ("blue" if p.question == "Q3" else p.answer)
               for group in (data.forget, data.neighbor) for lv, ps in group.items() for p in ps}
    monkeypatch.setattr(rwku_mod, "greedy_generate", lambda m, t, prompts, **kw: [answers[p] for p in prompts])
    res = evaluate_rwku(llama, tok, data)
    assert res["forget_fb"] == 1.0 and res["forget_qa"] == 1.0 and res["neighbor_fb"] == 1.0
    assert res["forget_aa/prefix injection"] == pytest.approx(0.5)  # Q1 -> 1, Q3 "blue" vs "red" -> 0
    assert res["forget_aa/reverse query"] == 1.0
    assert res["forget_aa"] == pytest.approx(2 / 3)
    mia = mia_attacks(llama, tok, data.mia_forget, data.mia_retain, k=0.2)
    assert res["mia/auc/min_k++"] == mia["min_k++"]["auc"]
    assert res["mia/fm/loss"] == pytest.approx(np.mean(mia["loss"]["forget"]))


def test_utility_sets(tok, llama):
    rec = {"question": "Which?", "choices": ["a", "b", "c", "d"], "answer": 1, "task": "world_history",
           "examples": [{"question": "Ex?", "choices": ["w", "x", "y", "z"], "answer": 0}]}
    acc = rwku_mmlu_accuracy(llama, tok, [rec, {**rec, "answer": 2}])
    assert acc["accuracy"] == 0.5  # the same prompt, two different gold letters: exactly one is right
    tq = rwku_triviaqa(llama, tok, [{"question": "Where?", "answers": ["Velmora"]}], max_new_tokens=4)
    assert 0.0 <= tq["f1"] <= 1.0 and len(tq["generation"]) == 1
    with pytest.raises(ValueError, match="examples"):
        rwku_mmlu_accuracy(llama, tok, [{"question": "Q"}])


def test_batch_over_targets(tok, llama):
    data = _data("Ann A")
    other = _data("Bob B")
    both = RWKUData(targets=["Ann A", "Bob B"],
                    forget={k: data.forget[k] + other.forget[k] for k in data.forget},
                    neighbor={k: data.neighbor[k] + other.neighbor[k] for k in data.neighbor})
    seen = []

    def unlearn(model, target, corpus):
        seen.append((target, len(corpus)))
        return model

    out = evaluate_rwku_targets(llama, tok, both, unlearn_fn=unlearn, n_texts=2,
                                corpus_kwargs={"max_new_tokens": 4}, max_new_tokens=4)
    assert [t for t, _ in seen] == ["Ann A", "Bob B"] and all(n >= 1 for _, n in seen)
    assert set(out["per_target"]) == {"Ann A", "Bob B"}
    assert out["mean"]["forget_fb"] == pytest.approx(np.mean([r["forget_fb"] for r in out["per_target"].values()]))
    assert out["per_target"]["Bob B"].config["targets"] == ["Bob B"]


def test_zero_shot_pipeline_with_a_registered_method(tok, llama):
    """The RWKU recipe end to end: self-generated corpus -> ux.unlearn (GA) -> evaluation."""
    import torch

    import unlearnx as ux
    from unlearnx.data.lm_batches import TextDataset

    def ga(model, target, corpus):
        return ux.unlearn(model, method="ga", forget=TextDataset(corpus, tok), lr=1e-2, epochs=1, batch_size=2,
                          warmup_epochs=0, progress=False, inplace=True).model

    before = {k: v.clone() for k, v in llama.state_dict().items()}
    out = evaluate_rwku_targets(llama, tok, _data(), unlearn_fn=ga, n_texts=2,
                                corpus_kwargs={"max_new_tokens": 8}, max_new_tokens=4)
    res = out["per_target"]["Ann A"]
    assert res.config["model"] != evaluate_rwku(llama, tok, _data(), max_new_tokens=4).config["model"]
    # The unlearned copy was evaluated (other weights); the input model is untouched.
    assert all(torch.equal(v, before[k]) for k, v in llama.state_dict().items())
