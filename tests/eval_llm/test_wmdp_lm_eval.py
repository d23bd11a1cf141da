"""WMDP accuracy by unlearnx == lm-evaluation-harness's on the same local items (tiny Llama)."""
import json

import numpy as np
import pytest
import torch

from unlearnx.data.benchmarks import MultipleChoiceItem, load_wmdp
from unlearnx.data.text import build_tokenizer
from unlearnx.eval.llm.lm_eval import lm_eval_available, run_lm_eval
from unlearnx.eval.llm.wmdp import multiple_choice_scores, wmdp_accuracy, wmdp_prompt
from unlearnx.models.lm import build_lm

_ITEMS = [{"question": f"Which option is number {k}? ", "choices": [f"option {c}{k}" for c in "wxyz"],
           "answer": k % 4} for k in range(10)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("wmdp")
    path = d / "wmdp-bio.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _ITEMS))
    items = load_wmdp(d, "bio")
    tok = build_tokenizer([wmdp_prompt(it) + " A B C D" for it in items], vocab_size=400)
    model = build_lm("llama", tokenizer=tok, layers=1, hidden=32, heads=2, seed=3)
    return path, items, tok, model


def test_prompt_is_lm_eval_template():
    it = MultipleChoiceItem("  What? ", ("a", "b", "c", "d"), 1, subject="biology")
    assert wmdp_prompt(it) == ("The following are multiple choice questions (with answers) about biology.\n\n"
                               "What?\nA. a\nB. b\nC. c\nD. d\nAnswer:")


def test_scores_are_choice_letter_logprobs(setup):
    _, items, tok, model = setup
    scores = multiple_choice_scores(model, tok, items[:2])
    ctx = tok(wmdp_prompt(items[1]))["input_ids"]
    whole = tok(wmdp_prompt(items[1]) + " C")["input_ids"]
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([whole])).logits[0].double().log_softmax(-1)
    want = sum(float(logp[t - 1, whole[t]]) for t in range(len(ctx), len(whole)))
    np.testing.assert_allclose(scores[1, 2], want, rtol=1e-4)
    res = wmdp_accuracy(model, tok, items)
    assert res["accuracy"] == np.mean(np.argmax(res["scores"], 1) == [it.answer for it in items])
    with pytest.raises(ValueError, match="items"):
        wmdp_accuracy(model, tok, [])


@pytest.mark.slow
@pytest.mark.skipif(not lm_eval_available(), reason="lm-evaluation-harness (unlearnx[lmeval]) not installed")
def test_accuracy_equals_lm_eval(setup, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    path, items, tok, model = setup
    task = {"task": "wmdp_bio_local", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(path)}},
            "test_split": "test", "output_type": "multiple_choice",
            "description": "The following are multiple choice questions (with answers) about biology.\n\n",
            "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
                           "D. {{choices[3]}}\nAnswer:",
            "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    ours = wmdp_accuracy(model, tok, items)
    theirs = run_lm_eval(model, tok, [task], batch_size=4)
    assert theirs["wmdp_bio_local"]["acc,none"] == pytest.approx(ours["accuracy"], abs=1e-12)
    assert 0 < ours["accuracy"] < 1  # a non-degenerate comparison


def test_evaluate_suite_routes_wmdp(setup):
    import unlearnx as ux

    _, items, tok, model = setup
    res = ux.evaluate(model, suite="wmdp", tokenizer=tok, items={"bio": items})
    assert res["wmdp_bio/accuracy"] == wmdp_accuracy(model, tok, items)["accuracy"]
