import re

import pytest

from unlearnx.data.authors import FACTS_PER_AUTHOR, author_corpus, forget_count, make_authors


@pytest.fixture(scope="module")
def qa():
    return make_authors()


def test_deterministic_given_seed(qa):
    assert make_authors() == qa
    other = make_authors(seed=1)
    assert other != qa
    assert {a.name for a in other.authors} != {a.name for a in qa.authors}


def test_default_split_sizes(qa):
    # 40 authors: forgetK = max(1, ceil(K% * 40)) authors = 1, 2, 4.
    sizes = {name: len(qa[name]) for name in qa.split_names()}
    assert sizes["full"] == 40 * FACTS_PER_AUTHOR == 800
    assert (sizes["forget01"], sizes["forget05"], sizes["forget10"]) == (20, 40, 80)
    assert (sizes["retain99"], sizes["retain95"], sizes["retain90"]) == (780, 760, 720)
    assert sizes["real_authors"] == 40 and sizes["world_facts"] == 40


def test_tofu_sized_forget_sets():
    big = make_authors(200, n_real_authors=0, n_world_facts=0)
    assert [len(big.forget_authors(p)) for p in (1, 5, 10)] == [2, 10, 20]
    assert forget_count(1, 40) == 1 and forget_count(10, 41) == 5


@pytest.mark.parametrize("percent", [1, 5, 10])
def test_forget_retain_complement(qa, percent):
    forget = qa[f"forget{percent:02d}"]
    retain = qa[f"retain{100 - percent}"]
    fq, rq = {i.question for i in forget}, {i.question for i in retain}
    assert not fq & rq
    assert fq | rq == {i.question for i in qa["full"]}
    assert len(fq) + len(rq) == len(qa["full"])
    # TOFU takes the forget authors from the end of the list.
    assert {i.subject for i in forget} == {a.name for a in qa.authors[-forget_count(percent, 40):]}


def test_forget_splits_nested(qa):
    f1, f5, f10 = ({i.question for i in qa[f"forget{p:02d}"]} for p in (1, 5, 10))
    assert f1 < f5 < f10


def test_every_question_has_paraphrase_and_distinct_perturbed(qa):
    for name in ("full", "real_authors", "world_facts"):
        for item in qa[name]:
            assert item.paraphrased_answer and item.paraphrased_answer != item.answer
            assert len(item.perturbed_answers) == 5
            assert len(set(item.perturbed_answers)) == 5
            assert item.answer not in item.perturbed_answers
            assert item.paraphrased_answer not in item.perturbed_answers
            assert item.value in item.answer and item.value in item.paraphrased_answer
            # Perturbed answers keep the paraphrase's wording: same subject, other value.
            for p in item.perturbed_answers:
                assert item.subject in p


def test_n_perturbed_argument():
    small = make_authors(4, n_perturbed=3, n_real_authors=1, n_world_facts=6)
    assert all(len(i.perturbed_answers) == 3 for i in small["full"] + small["world_facts"])


def test_questions_unique_across_all_splits(qa):
    questions = [i.question for n in ("full", "real_authors", "world_facts") for i in qa[n]]
    assert len(questions) == len(set(questions))


def _words(items):
    return {w for i in items for t in (i.question, i.answer, i.paraphrased_answer, *i.perturbed_answers)
            for w in re.findall(r"[A-Za-z]+", t)}


def test_held_sets_do_not_overlap_authors(qa):
    main_names = {a.name for a in qa.authors}
    held_names = {a.name for a in qa.held_authors}
    assert len(held_names) == 20 and not main_names & held_names
    main_words = _words(qa["full"])
    for item in qa["world_facts"]:
        # Invented subjects and values of world facts are words no author QA uses.
        assert not set(re.findall(r"[A-Za-z]+", item.subject)) & main_words
        if item.fact in ("capital", "river", "currency"):
            assert item.value not in main_words
    for name in held_names:
        assert not set(name.split()) & main_words


def test_author_names_unique_and_twenty_fact_types(qa):
    assert len({a.name for a in qa.authors}) == 40
    for a in qa.authors:
        assert len(a.items) == FACTS_PER_AUTHOR
        assert len({i.fact for i in a.items}) == FACTS_PER_AUTHOR


def test_texts_cover_every_answer(qa):
    texts = set(qa.texts())
    for item in qa["full"] + qa["world_facts"]:
        assert {item.question, item.answer, item.paraphrased_answer, *item.perturbed_answers} <= texts


@pytest.mark.parametrize("kwargs, arg", [
    ({"n_authors": 1}, "n_authors"), ({"n_authors": 40, "n_perturbed": 0}, "n_perturbed"),
    ({"n_authors": 40, "n_perturbed": 50}, "n_perturbed"), ({"n_authors": 40, "seed": -1}, "seed"),
    ({"n_authors": 40, "n_world_facts": 10_000}, "n_world_facts"), ({"n_authors": 2.5}, "n_authors"),
])
def test_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        make_authors(**kwargs)


def test_unknown_split(qa):
    with pytest.raises(KeyError, match="forget20"):
        qa["forget20"]


def test_author_corpus_matches_authors(qa):
    corpus = author_corpus()
    assert (len(corpus.forget), len(corpus.retain), len(corpus.holdout)) == (4, 36, 4)
    assert corpus.forget == tuple(a.biography() for a in qa.authors[-4:])
    assert corpus.retain == tuple(a.biography() for a in qa.authors[:-4])
    assert corpus.forget_qa == qa["forget10"] and corpus.retain_qa == qa["retain90"]
    for item in corpus.forget_qa:
        assert any(item.answer in text for text in corpus.forget)
    main_names = {a.name for a in qa.authors}
    for text in corpus.holdout:
        assert not any(name in text for name in main_names)
    assert author_corpus() == corpus


def test_author_corpus_bad_arguments():
    with pytest.raises(ValueError, match="forget_percent"):
        author_corpus(2, forget_percent=60)
    with pytest.raises(ValueError, match="n_holdout"):
        author_corpus(n_holdout=0)
