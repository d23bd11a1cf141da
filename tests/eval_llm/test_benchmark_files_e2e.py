"""Published-schema files -> loaders -> a save_pretrained'd tiny Llama loaded back -> TOFU / MUSE suites."""
import json

import pytest

from unlearnx.data.benchmarks import load_muse, load_tofu
from unlearnx.eval.llm import evaluate_muse, evaluate_tofu
from unlearnx.models.lm import build_lm, load_pretrained_lm


def _jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("pretrained")
    build_lm("llama", tokenizer=tok, layers=1, hidden=32, heads=2, seed=2).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_tofu_files_with_pretrained_model(tmp_path, qa, model_dir):
    def rec(it, para=True):
        r = {"question": it.question, "answer": it.answer, "perturbed_answer": list(it.perturbed_answers)}
        return {**r, "paraphrased_answer": it.paraphrased_answer} if para else r

    _jsonl(tmp_path / "forget01_perturbed.json", [rec(i) for i in qa["forget10"][:4]])
    _jsonl(tmp_path / "retain_perturbed.json", [rec(i) for i in qa["retain90"][:4]])
    _jsonl(tmp_path / "real_authors_perturbed.json", [rec(i, False) for i in qa["real_authors"][:3]])
    _jsonl(tmp_path / "world_facts_perturbed.json", [rec(i, False) for i in qa["world_facts"][:3]])
    model, tok = load_pretrained_lm(str(model_dir))
    held = {name: load_tofu(tmp_path, f"{name}_perturbed") for name in ("real_authors", "world_facts")}
    res = evaluate_tofu(model, tok, forget=load_tofu(tmp_path, "forget01_perturbed"),
                        retain=load_tofu(tmp_path, "retain_perturbed"), held=held, reference=model, max_new_tokens=4)
    assert res["forget_quality"] == 1.0  # the reference is the model itself
    assert 0.0 <= res["model_utility"] <= 1.0 and len(res.per_item["forget/truth_ratio_raw"]) == 4


def test_muse_files_with_pretrained_model(tmp_path, qa, model_dir):
    texts = qa.texts()
    (tmp_path / "privleak").mkdir()
    (tmp_path / "privleak" / "forget.json").write_text(json.dumps(texts[:4]))
    (tmp_path / "privleak" / "holdout.json").write_text(json.dumps([{"text": t} for t in texts[4:8]]))
    _jsonl(tmp_path / "verbmem" / "forget.jsonl", [{"prompt": t[:20], "gt": t[20:60]} for t in texts[:2]])
    (tmp_path / "knowmem").mkdir()
    for name, items in (("forget_qa", qa["forget10"][:2]), ("retain_qa", qa["retain90"][:5])):
        (tmp_path / "knowmem" / f"{name}.json").write_text(
            json.dumps([{"question": i.question, "answer": i.answer} for i in items]))
    model, tok = load_pretrained_lm(str(model_dir))
    res = evaluate_muse(model, tok, forget=load_muse(tmp_path, "privleak", "forget"),
                        holdout=load_muse(tmp_path, "privleak", "holdout"),
                        verbmem_texts=load_muse(tmp_path, "verbmem", "forget"),
                        forget_qa=load_muse(tmp_path, "knowmem", "forget_qa"),
                        retain_qa=load_muse(tmp_path, "knowmem", "retain_qa"), reference=model,
                        verbmem_tokens=6, knowmem_tokens=6)
    assert res["privleak"] == 0.0
    assert len(res.per_item["verbmem_forget"]) == 2  # the two (prompt, gt) pairs
    assert {"verbmem_forget", "knowmem_forget", "knowmem_retain", "mink_auc"} <= set(res)
