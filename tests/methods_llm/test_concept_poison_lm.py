"""Concept-based class unlearning by data poisoning for causal LMs (methods/llm/concept_poison.py) on the
tiny model of conftest.py: 10 fictitious authors, forget10 = one author (the class)."""
import pytest
import torch

import unlearnx as ux
from unlearnx.data.lm_batches import QADataset
from unlearnx.data.text import QAItem
from unlearnx.methods.llm.base import prepare_lm
from unlearnx.methods.llm.concept_poison import poisoned_answer
from unlearnx.models.lm import build_lm
from unlearnx.models.lm_training import answer_nll, finetune_lm


def test_poisoned_answer_swaps_only_the_fact():
    a = QAItem("Where was Ann Lee born?", "Ann Lee was born in Velmora.", subject="Ann Lee", fact="birth_place",
               value="Velmora")
    b = QAItem("Where was Bo Kim born?", "Bo Kim was born in Ostrava.", subject="Bo Kim", fact="birth_place",
               value="Ostrava")
    assert poisoned_answer(a, b) == "Ann Lee was born in Ostrava."
    # without values: the other subject's answer, renamed
    a2, b2 = QAItem(a.question, a.answer, subject="Ann Lee"), QAItem(b.question, b.answer, subject="Bo Kim")
    assert poisoned_answer(a2, b2) == "Ann Lee was born in Ostrava."


@pytest.mark.parametrize("labels", ["random", "targeted"])
def test_poisoned_items_come_from_other_authors_same_fact(tiny, labels):
    algo = ux.methods.get("concept_poison", "causal_lm")(labels=labels, batch_size=8)
    _, loader = prepare_lm(algo, tiny.model(), tiny.forget, tiny.retain, tokenizer=tiny.tok, seed=0, progress=False)
    log = algo.concept_log
    forget_author = tiny.forget[0].subject
    # IG points at the forget author's own k-means concepts, and the PCBM separates the authors
    assert log["concept_owner_match"] >= 0.6, log
    assert log["pcbm_accuracy"] >= 0.8, log
    assert forget_author not in log["poison_subject_counts"]
    assert sum(log["poison_subject_counts"].values()) == len(tiny.forget)
    values = {(i.subject, i.fact): i.value for i in tiny.retain}
    pairs = loader.loader.forget.datasets["idk"].pairs
    for item, (q, a) in zip(tiny.forget, pairs):
        assert q == item.question and a != item.answer and item.value not in a
        new_value = a.replace(item.answer.split(item.value)[0], "").replace(item.answer.split(item.value)[1], "")
        assert any(values.get((s, item.fact)) == new_value for s in log["poison_subject_counts"]), (a, item)
    if labels == "targeted":
        # one target author per item, chosen by the PCBM with the forget concepts removed: it is a
        # retain author, and the choice is not uniform noise (few authors take most items)
        counts = sorted(log["poison_subject_counts"].values(), reverse=True)
        assert counts[0] >= 3, counts


class Memorized:
    """The conftest data on a model trained until it knows every fact (30 epochs), and its Retrain
    oracle (same recipe, without the forget author)."""

    def __init__(self, tiny_setup_class):
        self.setup = tiny_setup_class(epochs=30)
        forget_author = self.setup.forget[0].subject
        torch.manual_seed(0)
        self.retrain = build_lm("llama", tokenizer=self.setup.tok, layers=4, hidden=64)
        finetune_lm(self.retrain, QADataset([i for i in self.setup.qa["full"] if i.subject != forget_author],
                                            self.setup.tok), epochs=30, lr=3e-3, batch_size=16, progress=False)
        self.values: dict[str, set[str]] = {}
        for i in self.setup.qa["full"]:
            if i.value:
                self.values.setdefault(i.fact, set()).add(i.value)

    @torch.no_grad()
    def fact_accuracy(self, model, items) -> float:
        """Multiple choice over each fact's values (the true one and 7 others, written into the true
        answer): the fraction of items whose true answer has the lowest answer NLL."""
        hits = []
        for it in items:
            options = [it.value] + sorted(self.values[it.fact] - {it.value})[:7]
            ds = QADataset([(it.question, it.answer.replace(it.value, v)) for v in options], self.setup.tok)
            hits.append(int(answer_nll(model, ds.collate(list(ds))).argmin()) == 0)
        return sum(hits) / len(hits)


@pytest.fixture(scope="module")
def memorized(tiny_setup_class):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield Memorized(tiny_setup_class)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow  # a 30-epoch tiny model and its Retrain oracle (~25 s on 2 cores)
def test_concept_poison_erases_the_authors_facts_as_retrain_does(memorized):
    """The paper's claim on a small case: the forget class's facts go (forget fact accuracy from the
    original's to Retrain's), the other classes' facts stay. IdkNLL, which only teaches refusals,
    is the contrast: it leaves the facts in place (measured when written: original 1.00 / 1.00,
    Retrain 0.00 / 1.00, random 0.05 / 0.88, targeted 0.00 / 0.88, IdkNLL 0.95 / 1.00 (forget /
    retain fact accuracy))."""
    s = memorized.setup
    retain = s.retain[:60]
    acc = memorized.fact_accuracy
    base_f, base_r = acc(s._model, s.forget), acc(s._model, retain)
    oracle_f, oracle_r = acc(memorized.retrain, s.forget), acc(memorized.retrain, retain)
    assert base_f >= 0.9 and base_r >= 0.9 and oracle_f <= 0.2 and oracle_r >= 0.9  # the setup is meaningful
    for labels in ("random", "targeted"):
        res = ux.unlearn(s.model(), "concept_poison", forget=s.forget, retain=s.retain, tokenizer=s.tok,
                         progress=False, labels=labels, lr=1e-3, epochs=3, batch_size=8)
        f, r = acc(res.model, s.forget), acc(res.model, retain)
        assert f <= oracle_f + 0.15, (labels, f, oracle_f)
        assert r >= base_r - 0.2, (labels, r, base_r)
        assert res.log["concept_owner_match"] >= 0.6 and len(res.log["loss"]) > 0
    idk = ux.unlearn(s.model(), "idknll", forget=s.forget, retain=s.retain, tokenizer=s.tok, progress=False,
                     lr=1e-3, epochs=3, batch_size=8)
    assert acc(idk.model, s.forget) >= base_f - 0.2


def test_concept_poison_needs_subjects_and_other_authors(tiny):
    pairs = [(i.question, i.answer) for i in tiny.forget]
    with pytest.raises(ValueError, match="forget: method 'concept_poison' needs QA items with a subject"):
        ux.unlearn(tiny.model(), "concept_poison", forget=pairs, retain=tiny.retain, tokenizer=tiny.tok,
                   progress=False, epochs=1)
    with pytest.raises(ValueError, match="retain: method 'concept_poison' needs retain"):
        ux.unlearn(tiny.model(), "concept_poison", forget=tiny.forget, retain=tiny.forget, tokenizer=tiny.tok,
                   progress=False, epochs=1)
    with pytest.raises(ValueError, match="labels must be one of"):
        ux.unlearn(tiny.model(), "concept_poison", forget=tiny.forget, retain=tiny.retain, tokenizer=tiny.tok,
                   progress=False, labels="nearest")
