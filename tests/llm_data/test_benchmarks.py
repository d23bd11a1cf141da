"""Benchmark file loaders: tiny files written in each published schema, loaded back; schema errors."""
import json

import pytest

from unlearnx.data.benchmarks import (
    BenchmarkSchemaError,
    MultipleChoiceItem,
    load_benchmark,
    load_muse,
    load_rwku,
    load_tofu,
    load_wmdp,
    load_wmdp_corpus,
    read_records,
    rwku_targets,
)
from unlearnx.data.text import QAItem


def _jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _json(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2))
    return path


def test_tofu_plain_and_perturbed(tmp_path):
    # TOFU's ".json" files are JSON Lines.
    _jsonl(tmp_path / "forget01.json", [{"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "answer": "A2."}])
    _jsonl(tmp_path / "forget01_perturbed.json", [
        {"question": "Q1?", "answer": "A1.", "paraphrased_answer": "P1.", "paraphrased_question": "Q1'?",
         "perturbed_answer": ["W1.", "W2."]}])
    _jsonl(tmp_path / "world_facts_perturbed.json", [{"question": "Q?", "answer": "A.", "perturbed_answer": ["B."]}])
    assert load_tofu(tmp_path, "forget01") == [QAItem("Q1?", "A1."), QAItem("Q2?", "A2.")]
    (it,) = load_tofu(tmp_path, "forget01_perturbed")
    assert it.paraphrased_answer == "P1." and it.perturbed_answers == ("W1.", "W2.")
    (wf,) = load_benchmark("tofu", tmp_path, split="world_facts_perturbed")
    assert wf.paraphrased_answer is None and wf.perturbed_answers == ("B.",)
    assert load_tofu(tmp_path / "forget01.json", "forget01")[1].answer == "A2."


def test_tofu_errors_name_file_field_schema(tmp_path):
    _jsonl(tmp_path / "forget05.json", [{"question": "Q?", "answer": "A."}, {"question": "Q?", "anwser": "A."}])
    with pytest.raises(BenchmarkSchemaError, match=r"forget05\.json: record 1: missing field 'answer'.*"
                                                  r"expected schema: question \(str\), answer \(str\)"):
        load_tofu(tmp_path, "forget05")
    _jsonl(tmp_path / "retain_perturbed.json", [{"question": "Q?", "answer": "A.", "paraphrased_answer": "P",
                                                 "perturbed_answer": "not a list"}])
    with pytest.raises(BenchmarkSchemaError, match="'perturbed_answer' must be a list of str"):
        load_tofu(tmp_path, "retain_perturbed")
    with pytest.raises(FileNotFoundError, match="forget10"):
        load_tofu(tmp_path, "forget10")
    with pytest.raises(ValueError, match="split"):
        load_tofu(tmp_path, "forget50")


def test_muse_layouts(tmp_path):
    _json(tmp_path / "privleak" / "forget.json", ["text one", "text two"])
    _json(tmp_path / "privleak" / "holdout.json", [{"text": "held"}])
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "forget.txt").write_text("A whole raw document.")
    _json(tmp_path / "verbmem" / "forget.json", [{"prompt": "Once upon", "gt": "a time"}])
    _json(tmp_path / "knowmem" / "retain_qa_icl.json", [{"question": "Q?", "answer": "A"}])
    assert load_muse(tmp_path, "privleak", "forget") == ["text one", "text two"]
    assert load_muse(tmp_path, "privleak", "holdout") == ["held"]
    assert load_muse(tmp_path, "raw", "forget") == ["A whole raw document."]
    assert load_muse(tmp_path, "verbmem", "forget") == [QAItem("Once upon", "a time")]
    assert load_benchmark("muse", tmp_path, subset="knowmem", split="retain_qa_icl") == [QAItem("Q?", "A")]
    _json(tmp_path / "knowmem" / "forget_qa.json", [{"question": "Q?", "ans": "A"}])
    with pytest.raises(BenchmarkSchemaError, match=r"forget_qa\.json: record 0: missing field 'answer'"):
        load_muse(tmp_path, "knowmem", "forget_qa")
    with pytest.raises(ValueError, match="subset"):
        load_muse(tmp_path, "bogus", "forget")


def test_muse_parquet_shards(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "scal").mkdir()
    pq.write_table(pa.table({"text": ["s1", "s2"]}), tmp_path / "scal" / "forget_2-00000-of-00001.parquet")
    assert load_muse(tmp_path, "scal", "forget_2") == ["s1", "s2"]
    assert read_records(tmp_path / "scal" / "forget_2-00000-of-00001.parquet") == [{"text": "s1"}, {"text": "s2"}]


def test_wmdp(tmp_path):
    rec = {"question": "Which?", "choices": ["a", "b", "c", "d"], "answer": 2}
    _jsonl(tmp_path / "wmdp-cyber.jsonl", [rec])
    (item,) = load_wmdp(tmp_path, "cyber")
    assert item == MultipleChoiceItem("Which?", ("a", "b", "c", "d"), 2, subject="computer security")
    _jsonl(tmp_path / "wmdp-bio.jsonl", [{**rec, "answer": "C"}])
    with pytest.raises(BenchmarkSchemaError, match=r"wmdp-bio\.jsonl: record 0: field 'answer' must be an int"):
        load_wmdp(tmp_path, "bio")
    _jsonl(tmp_path / "wmdp-chem.jsonl", [{**rec, "choices": ["a", "b"]}])
    with pytest.raises(BenchmarkSchemaError, match="2 choices"):
        load_wmdp(tmp_path, "chem")
    corpus = _jsonl(tmp_path / "cyber-forget-corpus.jsonl", [{"text": "t1"}, {"text": "t2"}])
    assert load_wmdp_corpus(corpus) == ["t1", "t2"]
    assert load_benchmark("wmdp", corpus, split="corpus") == ["t1", "t2"]


def _rwku_target(d, name):
    _json(d / "intro.json", [{"target": name, "intro": f"{name} is famous."}])
    _json(d / "forget_level1.json", [{"subject": name, "query": f"{name} was born in ___.", "answer": "Paris",
                                      "level": "1"}])
    _json(d / "forget_level2.json", [{"subject": name, "query": f"Where was {name} born?", "answer": "Paris",
                                      "level": "2"}])
    _json(d / "forget_level3.json", [{"subject": name, "query": "Where?", "answer": "Paris", "level": "3",
                                      "type": "prefix injection"},
                                     {"subject": name, "query": "Who?", "answer": "Paris", "level": "3",
                                      "type": "reverse query"}])
    _json(d / "neighbor_level1.json", [{"subject": name, "query": "N ___.", "answer": "x", "level": "1"}])
    _json(d / "forget_mia.json", [{"text": f"{name} text", "subject": name}])
    _json(d / "retain_mia.json", [{"text": "other text", "subject": name}])
    _json(d / "fluency.json", [{"instruction": "Write.", "output": "ok"}])


def test_rwku_target_folder_and_batch(tmp_path):
    _rwku_target(tmp_path / "Target" / "2_Bob_B", "Bob B")
    _rwku_target(tmp_path / "Target" / "1_Ann_A", "Ann A")
    (name, folder), _ = rwku_targets(tmp_path / "Target")
    assert name == "Ann A"
    data = load_rwku(folder)
    assert data.targets == ["Ann A"]
    assert [p.fact for p in data.forget["level3"]] == ["prefix injection", "reverse query"]
    assert data.forget["level1"][0].fact == "FB" and data.forget["level2"][0].fact == "QA"
    assert set(data.neighbor) == {"level1"} and data.mia_forget == ["Ann A text"]
    assert set(data.utility) == {"fluency"}
    assert load_benchmark("rwku", folder, split="Ann A").forget["level1"][0].answer == "Paris"
    # An All-style folder holds every target; for_target keeps one target's records.
    all_dir = tmp_path / "All"
    _rwku_target(all_dir, "Ann A")
    _json(all_dir / "intro.json", [{"target": "Ann A"}, {"target": "Bob B"}])
    _json(all_dir / "forget_level1.json", [
        {"subject": s, "query": f"{s} ___.", "answer": s[0], "level": "1"} for s in ("Ann A", "Bob B")])
    _json(all_dir / "triviaqa.json", [{"question": "Q", "answers": ["a"], "subject": s} for s in ("Ann A", "Bob B")])
    bob = load_rwku(all_dir).for_target("Bob B")
    assert [p.answer for p in bob.forget["level1"]] == ["B"] and bob.forget["level2"] == []
    assert [r["subject"] for r in bob.utility["factuality"]] == ["Bob B"] and bob.mia_forget == []
    with pytest.raises(ValueError, match="target"):
        load_rwku(all_dir).for_target("Carl C")


def test_rwku_errors(tmp_path):
    d = tmp_path / "1_X"
    _rwku_target(d, "X")
    _json(d / "forget_level3.json", [{"subject": "X", "query": "Q", "answer": "A", "level": "3"}])
    with pytest.raises(BenchmarkSchemaError, match=r"forget_level3\.json: record 0: missing field 'type'"):
        load_rwku(d)
    _json(d / "forget_level3.json", [{"subject": "X", "query": "Q", "answer": "A", "level": "2", "type": "t"}])
    with pytest.raises(BenchmarkSchemaError, match="level '2' in a level-3 file"):
        load_rwku(d)
    (d / "forget_level3.json").unlink()
    with pytest.raises(FileNotFoundError, match="forget_level3"):
        load_rwku(d)


def test_read_records_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(BenchmarkSchemaError, match=r"bad\.jsonl:2"):
        read_records(bad)
    empty = _json(tmp_path / "forget10.json", [])
    with pytest.raises(BenchmarkSchemaError, match="holds no records"):
        load_tofu(empty, "forget10")
    with pytest.raises(ValueError, match="name"):
        load_benchmark("nope", tmp_path)
