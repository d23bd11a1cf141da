"""Each metric against a hand-computed case (fixed numbers or the fixed-logits bigram model)."""
import math
import zlib

import numpy as np
import pytest
import torch

from unlearnx.data.lm_batches import encode_qa
from unlearnx.eval.llm import (
    exact_memorization,
    extraction_strength,
    forget_quality,
    gradnorm_scores,
    loss_scores,
    mia_auc,
    min_k_plus_plus_scores,
    min_k_scores,
    model_utility,
    muse_auc,
    normalized_probability,
    privleak,
    probability,
    reference_scores,
    rouge_l,
    score_tokens,
    truth_ratio,
    truth_ratio_score,
    zlib_scores,
)
from unlearnx.eval.llm.scoring import TokenScores, _token_stats


def test_probability_is_geometric_mean_of_token_probs():
    token_probs = [np.array([0.5, 0.25]), np.array([0.9])]
    mean_nll = [-np.log(p).mean() for p in token_probs]
    assert np.allclose(probability(mean_nll), [math.sqrt(0.5 * 0.25), 0.9])


def test_normalized_probability_over_options():
    # p_true = 0.5, perturbed 0.25 and 0.125 -> 0.5 / 0.875
    got = normalized_probability([-math.log(0.5)], [[-math.log(0.25), -math.log(0.125)]])
    assert np.isclose(got[0], 0.5 / 0.875)
    # extreme NLLs do not underflow to 0/0
    assert np.isclose(normalized_probability([2000.0], [[1000.0]])[0], math.exp(-1000.0))


def test_truth_ratio_direction_and_aggregations():
    # paraphrase p = 0.5, perturbed p = 0.2 and 0.05 (geometric mean 0.1): R = P(wrong)/P(right) = 0.2
    r = truth_ratio([-math.log(0.5)], [[-math.log(0.2), -math.log(0.05)]])
    assert np.isclose(r[0], 0.1 / 0.5)
    ratios = np.array([0.2, 4.0, 1.0])
    assert np.isclose(truth_ratio_score(ratios, forget=True), (0.2 + 0.25 + 1.0) / 3)
    assert np.isclose(truth_ratio_score(ratios, forget=False), (0.8 + 0.0 + 0.0) / 3)
    with pytest.raises(ValueError, match="ratios"):
        truth_ratio_score([0.0], forget=True)


def test_forget_quality_ks_pvalue():
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(0)
    x = rng.lognormal(size=40)
    assert forget_quality(x, x) == 1.0
    y = rng.lognormal(mean=2.0, size=40)
    assert forget_quality(x, y) == pytest.approx(ks_2samp(x, y).pvalue)
    assert forget_quality(x, y) < 1e-6


def test_model_utility_harmonic_mean():
    assert model_utility([0.5, 1.0, 0.25]) == pytest.approx(3 / (2 + 1 + 4))
    assert model_utility({"a": 0.3, "b": 0.0}) == 0.0
    with pytest.raises(ValueError, match="values"):
        model_utility([])


def test_extraction_strength_and_exact_memorization():
    correct = [np.array([1, 1, 1, 1], bool), np.array([0, 1, 1, 1], bool), np.array([1, 0, 1, 1], bool),
               np.array([1, 1, 1, 0], bool)]
    # k* = 0, 1, 2, 4 -> ES = 1, 3/4, 1/2, 0
    assert np.allclose(extraction_strength(correct), [1.0, 0.75, 0.5, 0.0])
    assert np.allclose(exact_memorization(correct), [1.0, 0.75, 0.75, 0.75])


def test_min_k_and_loss_and_zlib_hand_values():
    s = TokenScores(logp=[np.array([-1.0, -2.0, -3.0, -4.0, -5.0]), np.array([-0.5])],
                    mu=[np.zeros(5), np.zeros(1)], var=[np.ones(5), np.ones(1)], correct=[np.ones(5, bool)] * 2)
    # k = 0.4 of 5 tokens -> the 2 lowest (-5, -4); of 1 token -> at least 1
    assert np.allclose(min_k_scores(s, k=0.4), [4.5, 0.5])
    assert np.allclose(loss_scores(s), [3.0, 0.5])
    texts = ["some text here", "x"]
    assert np.allclose(zlib_scores(s, texts), [3.0 / len(zlib.compress(b"some text here")), 0.5 / len(zlib.compress(b"x"))])
    assert np.allclose(reference_scores(s, s), 0.0)
    with pytest.raises(ValueError, match="k"):
        min_k_scores(s, k=0.0)


def test_token_stats_and_min_k_plus_plus_match_log_softmax_reference():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 11, generator=g) * 3
    labels = torch.tensor([[3, 4, -100, 1, 2, 9], [-100, 0, 10, 5, 7, 7]])
    lp, mu, var = _token_stats(logits, labels)
    ref_z = [[], []]
    for b in range(2):
        for t in range(6):
            logp = torch.log_softmax(logits[b, t].double(), -1)
            if labels[b, t] == -100:
                assert lp[b, t] == 0 and mu[b, t] == 0 and var[b, t] == 0
                continue
            p = logp.exp()
            m = (p * logp).sum()
            v = (p * (logp - m) ** 2).sum()  # the centred form, independent of the code's sum-of-squares form
            assert lp[b, t].item() == pytest.approx(logp[labels[b, t]].item(), abs=1e-5)
            assert mu[b, t].item() == pytest.approx(m.item(), abs=1e-5)
            assert var[b, t].item() == pytest.approx(v.item(), abs=1e-4)
            ref_z[b].append(((logp[labels[b, t]] - m) / v.sqrt()).item())
    mask = labels != -100
    s = TokenScores(logp=[lp[b, mask[b]].double().numpy() for b in range(2)],
                    mu=[mu[b, mask[b]].double().numpy() for b in range(2)],
                    var=[var[b, mask[b]].double().numpy() for b in range(2)], correct=[np.ones(5, bool)] * 2)
    for k in (0.2, 0.4, 1.0):
        want = [-np.sort(z)[:max(1, int(len(z) * k))].mean() for z in map(np.array, ref_z)]
        assert np.allclose(min_k_plus_plus_scores(s, k=k), want, atol=1e-4)


def test_score_tokens_on_bigram_model_matches_table(tok, bigram):
    feats = [encode_qa(tok, "Where was Kor born?", "Kor was born in Vale."),
             encode_qa(tok, "Who?", "Me.")]
    s = score_tokens(bigram, feats, pad_token_id=tok.pad_token_id, batch_size=2)
    table = bigram.table.detach().double()
    for f, lp, correct in zip(feats, s.logp, s.correct):
        ids, labels = f["input_ids"], f["labels"]
        want = [torch.log_softmax(table[ids[t]], -1)[labels[t + 1]].item()
                for t in range(len(ids) - 1) if labels[t + 1] != -100]
        hits = [table[ids[t]].argmax().item() == labels[t + 1] for t in range(len(ids) - 1) if labels[t + 1] != -100]
        assert np.allclose(lp, want, atol=1e-5)
        assert correct.tolist() == hits
    # batching / padding does not change a sample's scores
    single = score_tokens(bigram, feats[1:], pad_token_id=tok.pad_token_id)
    assert np.allclose(single.logp[0], s.logp[1])


def test_gradnorm_matches_manual_per_parameter_norms(tok):
    from unlearnx.models.lm import build_lm

    model = build_lm("llama", tokenizer=tok, layers=1, hidden=16, heads=2)
    feat = encode_qa(tok, "Who?", "Me.")
    got = gradnorm_scores(model, [feat], pad_token_id=tok.pad_token_id)[0]
    ids = torch.tensor([feat["input_ids"]])
    labels = torch.tensor([feat["labels"]])
    loss = model(input_ids=ids, labels=labels).loss  # Hugging Face mean token NLL = avgNLL
    grads = torch.autograd.grad(loss, list(model.parameters()))
    want = torch.stack([g.norm() for g in grads]).mean().item()
    assert got == pytest.approx(want, rel=1e-4)
    assert all(p.grad is None for p in model.parameters())


def test_mia_auc_orientation_and_privleak_signs():
    members, unseen = [0.1, 0.2, 0.3], [1.0, 1.1, 1.2]
    # higher = less likely member: holdout (label 1) above forget -> attack AUC 1
    assert mia_auc(members, unseen) == 1.0
    assert mia_auc(unseen, members) == 0.0
    assert mia_auc([0.5, 0.5], [0.5, 0.5]) == 0.5
    # MUSE: a model that still memorizes the forget set -> PrivLeak near -100 (target row -99.8)
    retrain_auc = muse_auc([0.5, 0.7, 0.9], [0.6, 0.8, 1.0])  # retrain: no separation to speak of
    under = privleak(muse_auc(members, unseen), retrain_auc)
    over = privleak(muse_auc(unseen, members), retrain_auc)
    assert under == pytest.approx((0.0 - retrain_auc) / retrain_auc * 100)
    assert under < -5 and over > 5
    assert privleak(retrain_auc, retrain_auc) == 0.0
    with pytest.raises(ValueError, match="auc_retrain"):
        privleak(0.5, 0.0)


def test_rouge_l_recall_f1_with_and_without_stemmer():
    # LCS("the cat sat", "the cat on the mat") = "the cat": recall 2/5, precision 2/3
    assert rouge_l(["the cat sat"], ["the cat on the mat"], use_stemmer=False, kind="recall") == [pytest.approx(0.4)]
    f1 = rouge_l(["the cat sat"], ["the cat on the mat"], use_stemmer=False, kind="fmeasure")[0]
    assert f1 == pytest.approx(2 * 0.4 * (2 / 3) / (0.4 + 2 / 3))
    # TOFU stems ("writes" ~ "write"), MUSE does not
    assert rouge_l(["she write novels"], ["she writes novels"], use_stemmer=True, kind="recall") == [1.0]
    assert rouge_l(["she write novels"], ["she writes novels"], use_stemmer=False, kind="recall")[0] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="kind"):
        rouge_l(["a"], ["a"], use_stemmer=False, kind="f2")


def test_input_validation_names_arguments(tok, bigram):
    with pytest.raises(ValueError, match="nll_perturbed"):
        truth_ratio([1.0, 2.0], [[1.0]])
    with pytest.raises(ValueError, match="batch_size"):
        score_tokens(bigram, [encode_qa(tok, "a", "b")], pad_token_id=0, batch_size=0)
    with pytest.raises(ValueError, match="forget_scores"):
        mia_auc([], [1.0])
    with pytest.raises(ValueError, match="n"):
        normalized_probability([1.0], [[np.nan]])
