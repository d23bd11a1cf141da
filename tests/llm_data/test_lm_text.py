import importlib.util
import json
import sys

import pytest

from unlearnx.data.authors import make_authors
from unlearnx.data.text import (
    QAItem, build_tokenizer, load_qa_jsonl, load_text_jsonl, load_tokenizer, qa_from_dataset,
    qa_from_records, save_tokenizer, texts_from_records,
)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_qa_jsonl_keeps_optional_fields(tmp_path):
    path = _write(tmp_path / "qa.jsonl", [
        json.dumps({"question": "Q1?", "answer": "A1."}),
        "",
        json.dumps({"question": "Q2?", "answer": "A2.", "paraphrased_answer": "P2.",
                    "perturbed_answers": ["W1.", "W2."], "subject": "s"}),
    ])
    items = load_qa_jsonl(path)
    assert items == [QAItem("Q1?", "A1."),
                     QAItem("Q2?", "A2.", "P2.", ("W1.", "W2."), subject="s")]


def test_load_qa_jsonl_missing_key_names_file_line_and_key(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [json.dumps({"question": "Q?", "answer": "A."}),
                                           json.dumps({"question": "Q2?", "response": "A."})])
    with pytest.raises(ValueError) as e:
        load_qa_jsonl(path)
    msg = str(e.value)
    assert "bad.jsonl:2" in msg and "'answer'" in msg


def test_load_qa_jsonl_custom_keys_and_errors(tmp_path):
    path = _write(tmp_path / "c.jsonl", [json.dumps({"prompt": "Q?", "response": "A."})])
    assert load_qa_jsonl(path, question_key="prompt", answer_key="response") == [QAItem("Q?", "A.")]
    with pytest.raises(ValueError, match=r"c\.jsonl:1.*'question'"):
        load_qa_jsonl(path)


@pytest.mark.parametrize("line, match", [
    ("{not json", r":3: invalid JSON"),
    (json.dumps({"question": "Q?", "answer": 3}), r":3: key 'answer' must be a string"),
    (json.dumps({"question": "Q?", "answer": "A", "perturbed_answers": "W"}), r":3: key 'perturbed_answers'"),
    (json.dumps(["Q?", "A"]), r":3: expected a JSON object"),
])
def test_load_qa_jsonl_bad_lines(tmp_path, line, match):
    good = json.dumps({"question": "Q?", "answer": "A."})
    path = _write(tmp_path / "x.jsonl", [good, good, line])
    with pytest.raises(ValueError, match=match):
        load_qa_jsonl(path)


def test_load_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_qa_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="no records"):
        load_text_jsonl(_write(tmp_path / "empty.jsonl", [""]))


def test_load_text_jsonl(tmp_path):
    path = _write(tmp_path / "t.jsonl", [json.dumps({"text": "one"}), json.dumps({"text": "two"})])
    assert load_text_jsonl(path) == ["one", "two"]
    bad = _write(tmp_path / "tb.jsonl", [json.dumps({"text": "one"}), json.dumps({"body": "two"})])
    with pytest.raises(ValueError, match=r"tb\.jsonl:2.*'text'"):
        load_text_jsonl(bad)


def test_records_loaders():
    records = [{"question": "Q?", "answer": "A.", "perturbed_answers": ["W."]}]
    assert qa_from_records(records) == [QAItem("Q?", "A.", perturbed_answers=("W.",))]
    with pytest.raises(ValueError, match=r"records\[1\].*'question'"):
        qa_from_records(records + [{"answer": "A."}])
    assert texts_from_records([{"text": "x"}]) == ["x"]


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="datasets not installed")
def test_qa_from_hf_dataset():
    import datasets

    ds = datasets.Dataset.from_list([{"question": "Q?", "answer": "A."}, {"question": "R?", "answer": "B."}])
    assert qa_from_dataset(ds) == [QAItem("Q?", "A."), QAItem("R?", "B.")]
    with pytest.raises(ValueError, match=r"dataset\[0\].*'text'"):
        from unlearnx.data.text import texts_from_dataset
        texts_from_dataset(ds)


def test_qa_from_dataset_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if the package were not installed
    with pytest.raises(ImportError, match="datasets"):
        qa_from_dataset([{"question": "Q?", "answer": "A."}])


def test_qaitem_validates_types():
    with pytest.raises(TypeError, match="answer"):
        QAItem("Q?", None)
    with pytest.raises(TypeError, match="perturbed_answers"):
        QAItem("Q?", "A.", perturbed_answers=[1])


@pytest.fixture(scope="module")
def texts():
    return make_authors(6, n_real_authors=2, n_world_facts=6).texts()


def test_tokenizer_deterministic_and_round_trips(texts):
    a = build_tokenizer(texts, vocab_size=600)
    b = build_tokenizer(texts, vocab_size=600)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) == 600
    sample = "Question: Where was Zq born?\nAnswer: Zq was born in Ümlaut-ville, 1961."
    ids = a(sample)["input_ids"]
    assert ids[0] == a.bos_token_id
    # Byte-level BPE decodes any string exactly, even characters it never saw.
    assert a.decode(ids, skip_special_tokens=True) == sample
    assert (a.pad_token_id, a.unk_token_id, a.bos_token_id, a.eos_token_id) == (0, 1, 2, 3)


def test_tokenizer_save_load(tmp_path, texts):
    tok = build_tokenizer(texts, vocab_size=600)
    path = save_tokenizer(tok, tmp_path / "tok")
    loaded = load_tokenizer(path)
    sample = texts[5]
    assert loaded(sample)["input_ids"] == tok(sample)["input_ids"]
    assert loaded.eos_token_id == tok.eos_token_id and len(loaded) == len(tok)
    with pytest.raises(FileExistsError, match="overwrite"):
        save_tokenizer(tok, path)
    other = build_tokenizer(texts, vocab_size=400)
    save_tokenizer(other, path, overwrite=True)
    assert len(load_tokenizer(path)) == 400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temporary left behind
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_tokenizer_bad_arguments(texts):
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(texts, vocab_size=100)
    with pytest.raises(TypeError, match="texts"):
        build_tokenizer("just one string")
    with pytest.raises(ValueError, match="texts"):
        build_tokenizer([])
