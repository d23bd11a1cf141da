"""MUSE fidelity (issue #22): plain texts are scored as tokenizer(text) with no <eos>, and the
KnowMem prompt ends with "Answer: " exactly as MUSE's."""
import numpy as np
import torch

from unlearnx.eval.llm import encode_items, knowmem_prompt, min_k_scores, score_tokens
from unlearnx.data.text import QAItem


def test_plain_text_scores_exactly_tokenizer_encode_without_eos(tok, bigram):
    text = "A plain forget text about an invented author."
    ids = tok(text)["input_ids"]
    assert tok.eos_token_id not in ids
    feats = encode_items(tok, [text])
    assert feats[0]["input_ids"] == ids
    scored = score_tokens(bigram, feats, pad_token_id=tok.pad_token_id)
    # MUSE: log p(ids[t] | ids[:t]) for t = 1..n-1, recomputed here from the bigram table.
    logp = torch.log_softmax(bigram.table.detach().double(), -1)
    want = np.array([float(logp[ids[t - 1], ids[t]]) for t in range(1, len(ids))])
    np.testing.assert_allclose(scored.logp[0], want, rtol=1e-5)
    # Min-K% (k=0.4) over exactly those tokens: int(0.4 * n) lowest.
    n = max(1, int(0.4 * len(want)))
    np.testing.assert_allclose(min_k_scores(scored, k=0.4)[0], -np.sort(want)[:n].mean(), rtol=1e-5)


def test_qa_answers_keep_eos(tok):
    feats = encode_items(tok, [QAItem(question="Who?", answer="Nobody.")])
    assert feats[0]["input_ids"][-1] == tok.eos_token_id and feats[0]["labels"][-1] == tok.eos_token_id


def test_knowmem_prompt_is_muse_exact():
    shot = QAItem(question="Q1?", answer="A1")
    assert knowmem_prompt("Q2?", [shot]) == "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: "
    assert knowmem_prompt("Q2?", [shot], trailing_space=False).endswith("Question: Q2?\nAnswer:")


def test_verbmem_takes_muse_prompt_gt_pairs(tok, bigram):
    from unlearnx.eval.llm import greedy_generate, rouge_l, verbmem

    pairs = [QAItem(question="The author was born in", answer=" a small town by the river.")]
    res = verbmem(bigram, tok, pairs, max_new_tokens=6)
    assert res["truth"] == [pairs[0].answer]
    gen = greedy_generate(bigram, tok, [pairs[0].question], max_new_tokens=6)
    assert res["generation"] == gen
    assert res["rouge_l_f1"] == [100 * s for s in rouge_l(gen, [pairs[0].answer], use_stemmer=False, kind="fmeasure")]
