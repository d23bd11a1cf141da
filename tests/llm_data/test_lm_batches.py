import pytest
import torch

from unlearnx.data.authors import make_authors
from unlearnx.data.lm_batches import (
    IGNORE_INDEX, REFUSAL_TEMPLATES, ForgetRetainLoader, PairedQADataset, PerturbedQADataset, QADataset,
    QATemplate, TextDataset, encode_qa, idk_preference_dataset, refusal_items,
)
from unlearnx.data.text import build_tokenizer


@pytest.fixture(scope="module")
def qa():
    return make_authors(6, n_real_authors=2, n_world_facts=6)


@pytest.fixture(scope="module")
def tok(qa):
    t = QATemplate()
    texts = qa.texts() + [t.render(i.question, i.answer) for i in qa["full"]] + list(REFUSAL_TEMPLATES)
    return build_tokenizer(texts, vocab_size=800)


def test_labels_mask_exactly_prompt_and_padding(qa, tok):
    items = [qa["full"][i] for i in (0, 7, 13, 21)]  # answers of different lengths
    ds = QADataset(items, tok)
    batch = ds.collate([ds[i] for i in range(len(ds))])
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape and ids.dtype == torch.long
    lengths = mask.sum(1)
    assert len(set(lengths.tolist())) > 1  # the batch really is padded
    for b, item in enumerate(items):
        n = int(lengths[b])
        # Right padding: ones then zeros, pad ids and -100 on padding.
        assert mask[b, :n].all() and not mask[b, n:].any()
        assert (ids[b, n:] == tok.pad_token_id).all() and (labels[b, n:] == IGNORE_INDEX).all()
        # The prompt length comes from tokenizing the generation prompt on its own (with <bos>).
        n_prompt = len(tok(QATemplate().prompt(item.question))["input_ids"])
        assert (labels[b, :n_prompt] == IGNORE_INDEX).all()
        assert (labels[b, n_prompt:n] == ids[b, n_prompt:n]).all()
        assert ids[b, n - 1] == tok.eos_token_id and ids[b, 0] == tok.bos_token_id
        # Decoding the label tokens gives back exactly the answer (+ <eos>).
        answer_ids = labels[b][labels[b] != IGNORE_INDEX].tolist()
        assert answer_ids[-1] == tok.eos_token_id
        assert tok.decode(answer_ids[:-1]).strip() == item.answer
        rendered = QATemplate().render(item.question, item.answer)
        assert tok.decode(ids[b, :n].tolist(), skip_special_tokens=True) == rendered


def test_custom_template(qa, tok):
    t = QATemplate("[INST] {question} [/INST]{answer}")
    item = qa["full"][3]
    enc = encode_qa(tok, item.question, item.answer, template=t)
    assert tok.decode([i for i in enc["labels"] if i >= 0][:-1]) == item.answer
    assert tok.decode(enc["input_ids"], skip_special_tokens=True) == f"[INST] {item.question} [/INST]{item.answer}"


@pytest.mark.parametrize("text", ["{question}", "A: {answer} Q: {question}", "Q: {question} A: {answer}.",
                                  "Q {question} {question} A {answer}"])
def test_bad_templates(text):
    with pytest.raises(ValueError, match="text"):
        QATemplate(text)


def test_template_moves_space_into_answer():
    prompt, answer = QATemplate().split("Who?", "Me.")
    assert (prompt, answer) == ("Question: Who?\nAnswer:", " Me.")


def test_truncation(qa, tok):
    item = qa["full"][0]
    full = encode_qa(tok, item.question, item.answer)
    n_prompt = sum(1 for x in full["labels"] if x == IGNORE_INDEX)
    cut = encode_qa(tok, item.question, item.answer, max_length=n_prompt + 2)
    assert cut["input_ids"] == full["input_ids"][:n_prompt + 2]
    with pytest.raises(ValueError, match="max_length"):
        encode_qa(tok, item.question, item.answer, max_length=n_prompt)


def test_text_dataset_labels_every_token_but_bos(tok):
    ds = TextDataset(["A short text.", "A much longer text with more words in it."], tok)
    batch = ds.collate([ds[0], ds[1]])
    n0 = int(batch["attention_mask"][0].sum())
    assert batch["labels"][0, 0] == IGNORE_INDEX
    assert (batch["labels"][0, 1:n0] == batch["input_ids"][0, 1:n0]).all()
    assert (batch["labels"][0, n0:] == IGNORE_INDEX).all()
    # No <eos> on plain texts (MUSE): the ids are exactly tokenizer(text).
    assert batch["input_ids"][1].tolist() == tok("A much longer text with more words in it.")["input_ids"]
    with_eos = TextDataset(["A short text."], tok, eos=True)[0]["input_ids"]
    assert with_eos == tok("A short text.")["input_ids"] + [tok.eos_token_id]


def test_forget_retain_loader_covers_and_cycles(qa, tok):
    forget, retain = QADataset(qa["forget10"], tok), QADataset(qa["retain90"][:30], tok)
    loader = ForgetRetainLoader(forget, retain, batch_size=8, retain_batch_size=12, seed=3)
    assert len(loader) == 3  # 20 forget items
    seen_forget, seen_retain = [], []
    for batch in loader:
        assert set(batch) == {"forget", "retain"}
        assert batch["retain"]["input_ids"].shape[0] == 12
        seen_forget += [tuple(r[r != tok.pad_token_id].tolist()) for r in batch["forget"]["input_ids"]]
        seen_retain += [tuple(r[r != tok.pad_token_id].tolist()) for r in batch["retain"]["input_ids"]]
    # Every forget example once per epoch; retain: 36 draws from 30 examples = one full pass + 6.
    assert sorted(seen_forget) == sorted(tuple(f["input_ids"]) for f in forget.features)
    assert set(seen_retain[:30]) == {tuple(f["input_ids"]) for f in retain.features}
    assert len(seen_retain) == 36


def _signature(loader, epochs=2):
    return [(b["forget"]["input_ids"].sum().item(), b["retain"]["input_ids"].sum().item())
            for _ in range(epochs) for b in loader]


def test_forget_retain_loader_deterministic(qa, tok):
    forget, retain = QADataset(qa["forget10"], tok), QADataset(qa["retain90"], tok)
    a = _signature(ForgetRetainLoader(forget, retain, batch_size=4, seed=0))
    assert a == _signature(ForgetRetainLoader(forget, retain, batch_size=4, seed=0))
    assert a != _signature(ForgetRetainLoader(forget, retain, batch_size=4, seed=1))
    epoch0, epoch1 = a[:5], a[5:]
    assert epoch0 != epoch1  # reshuffled each epoch


def test_forget_retain_loader_validation(qa, tok):
    forget = QADataset(qa["forget10"], tok)
    with pytest.raises(ValueError, match="batch_size"):
        ForgetRetainLoader(forget, batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        ForgetRetainLoader(forget, batch_size=64, drop_last=True)
    with pytest.raises(ValueError, match="retain"):
        ForgetRetainLoader(forget, [], batch_size=2)
    only = list(ForgetRetainLoader(forget, batch_size=32))
    assert len(only) == 1 and set(only[0]) == {"forget"}


def test_refusals(qa):
    assert len(REFUSAL_TEMPLATES) == 20 and len(set(REFUSAL_TEMPLATES)) == 20
    items = qa["forget10"]
    idk = refusal_items(items, seed=0)
    assert [i.question for i in idk] == [i.question for i in items]
    assert all(i.answer in REFUSAL_TEMPLATES for i in idk)
    assert len({i.answer for i in idk}) > 5
    assert idk == refusal_items(items, seed=0) and idk != refusal_items(items, seed=1)
    with pytest.raises(ValueError, match="templates"):
        refusal_items(items, templates=[])


def test_idk_preference_pairs_share_prompts(qa, tok):
    items = qa["forget10"][:4]
    ds = idk_preference_dataset(items, tok)
    batch = ds.collate([ds[i] for i in range(4)])
    assert set(batch) == {"chosen", "rejected"}
    for b, item in enumerate(items):
        for key in ("chosen", "rejected"):
            labels = batch[key]["labels"][b]
            answer = tok.decode(labels[labels != IGNORE_INDEX][:-1].tolist()).strip()
            assert answer in REFUSAL_TEMPLATES if key == "chosen" else answer == item.answer
        n_prompt = len(tok(QATemplate().prompt(item.question))["input_ids"])
        assert torch.equal(batch["chosen"]["input_ids"][b, :n_prompt], batch["rejected"]["input_ids"][b, :n_prompt])


def test_paired_dataset_validation(qa, tok):
    with pytest.raises(ValueError, match="lengths differ"):
        PairedQADataset({"a": QADataset(qa["forget10"], tok), "b": QADataset(qa["retain90"], tok)})


def test_perturbed_dataset(qa, tok):
    items = qa["forget10"][:3]
    ds = PerturbedQADataset(items, tok)
    batch = ds.collate([ds[i] for i in range(3)])
    pert = batch["perturbed"]
    assert pert["input_ids"].shape[:2] == (3, 5) and pert["labels"].shape == pert["input_ids"].shape
    for b, item in enumerate(items):
        for j in range(5):
            labels = pert["labels"][b, j]
            assert tok.decode(labels[labels != IGNORE_INDEX][:-1].tolist()).strip() == item.perturbed_answers[j]
        labels = batch["paraphrased"]["labels"][b]
        assert tok.decode(labels[labels != IGNORE_INDEX][:-1].tolist()).strip() == item.paraphrased_answer
    with pytest.raises(ValueError, match="paraphrased_answer"):
        PerturbedQADataset(refusal_items(items), tok)


def test_qadataset_accepts_pairs_and_rejects_junk(tok):
    ds = QADataset([("Who?", "Me.")], tok)
    assert len(ds) == 1
    with pytest.raises(TypeError, match=r"items\[0\]"):
        QADataset([("Who?",)], tok)
    with pytest.raises(ValueError, match="items"):
        QADataset([], tok)


def test_tokenizer_without_bos_prefix(tok):
    # Qwen2 / GPT-2 style: encoding prepends nothing; QA and text encoding still label correctly.
    import copy

    from tokenizers import processors

    from unlearnx.data.lm_batches import encode_text

    nobos = copy.deepcopy(tok)
    nobos.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    assert nobos("Who?")["input_ids"][0] != tok.bos_token_id
    f = encode_qa(nobos, "Who?", "Ann.")
    n_prompt = len(nobos(QATemplate().split("Who?", "Ann.")[0])["input_ids"])
    assert f["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert f["labels"][n_prompt:] == f["input_ids"][n_prompt:] and f["input_ids"][-1] == tok.eos_token_id
    t = encode_text(nobos, "Plain words here.")
    assert t["input_ids"] == nobos("Plain words here.")["input_ids"] and t["labels"][0] == IGNORE_INDEX
