import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from unlearnx.data import badnets_poison, digits_dataset, random_forget
from unlearnx.eval import (
    accuracy,
    accuracy_from_probs,
    attack_success_rate,
    avg_gap,
    evaluate,
    js_divergence,
    member_rate_lr_from_features,
    mia_efficacy_from_features,
    mia_efficacy_svc_confidence,
    mia_member_rate_lr_entropy,
    predict,
    remaining_accuracy,
    results_table,
    run_time_efficiency,
    softmax_entropy,
    unlearning_accuracy,
    zrf,
    zrf_from_probs,
)
from unlearnx.models import small_cnn


def prob_data(probs, labels):
    """A data set whose inputs are log-probabilities: through nn.Identity the softmax is `probs`."""
    return TensorDataset(torch.tensor(probs, dtype=torch.float32).log(), torch.tensor(labels))


def confident(c, n_classes=3, p=0.9):
    row = [(1 - p) / (n_classes - 1)] * n_classes
    row[c] = p
    return row


def test_predict_eval_mode_no_grad_and_restores_mode():
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.9))
    model.train()
    data = TensorDataset(torch.randn(10, 4), torch.arange(10) % 3)
    p1, y = predict(model, data, batch_size=3)
    p2, _ = predict(model, DataLoader(data, batch_size=4))
    assert model.training  # restored
    assert torch.equal(p1, p2)  # eval mode: dropout is off, so both passes agree
    assert p1.shape == (10, 3) and not p1.requires_grad
    assert torch.allclose(p1.sum(1), torch.ones(10))
    assert torch.equal(y, torch.arange(10) % 3)


def test_accuracy_ua_arithmetic():
    # 4 samples, predictions 0, 1, 2, 0 against labels 0, 1, 0, 0 -> 3/4 correct
    data = prob_data([confident(0), confident(1), confident(2), confident(0)], [0, 1, 0, 0])
    model = nn.Identity()
    assert accuracy(model, data) == pytest.approx(75.0)
    assert unlearning_accuracy(model, data) == pytest.approx(25.0)
    assert remaining_accuracy(model, data) == pytest.approx(75.0)
    assert accuracy_from_probs(torch.eye(3), torch.tensor([0, 2, 2])) == pytest.approx(200 / 3)


def test_mia_efficacy_uses_first_test_size_retain_samples():
    # The first |test| = 10 retain features are high (members); the remaining 30 are low, like the
    # test features. With the SalUn rule the attack only sees the high ones, so low forget
    # features are non-members; an attack on all retain samples would call them members.
    retain = [0.95] * 10 + [0.2] * 30
    test = [0.2] * 10
    forget = [0.95, 0.95, 0.95, 0.2]
    assert mia_efficacy_from_features(retain, forget, test) == pytest.approx(25.0)
    # |retain| < |test|: all retain samples are used
    assert mia_efficacy_from_features([0.9, 0.95], [0.1, 0.9], [0.1] * 5 + [0.15] * 5) == pytest.approx(50.0)


def test_mia_efficacy_model_level_matches_features():
    rng = np.random.default_rng(0)
    retain = prob_data([confident(0, p=p) for p in rng.uniform(0.9, 0.99, 30)], [0] * 30)
    test = prob_data([confident(0, p=p) for p in rng.uniform(0.4, 0.6, 20)], [0] * 20)
    forget = prob_data([confident(0, p=0.95)] * 3 + [confident(0, p=0.5)] * 5, [0] * 8)
    assert mia_efficacy_svc_confidence(nn.Identity(), retain, forget, test) == pytest.approx(100 * 5 / 8)


def test_entropy_and_lr_member_rate():
    assert softmax_entropy(torch.tensor([[1.0, 0.0], [0.5, 0.5]])).tolist() == pytest.approx([0.0, math.log(2)])
    low, high = [0.05, 0.1, 0.08, 0.12] * 5, [1.0, 1.05, 0.95, 1.1] * 3
    assert member_rate_lr_from_features(low, [0.07, 0.09, 1.02, 0.1], high) == pytest.approx(0.75)
    # model level: confident (low entropy) retain vs near-uniform test
    retain = prob_data([confident(1, p=0.98)] * 12, [1] * 12)
    test = prob_data([[0.34, 0.33, 0.33]] * 6, [1] * 6)
    forget = prob_data([confident(1, p=0.98)] * 2 + [[0.34, 0.33, 0.33]] * 2, [1] * 4)
    assert mia_member_rate_lr_entropy(nn.Identity(), retain, forget, test) == pytest.approx(0.5)


def test_js_and_zrf_hand_computed():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.2, 0.8]])
    q = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1]])
    js = js_divergence(p, q)
    # JS([1,0] || [.5,.5]) by hand: m = [.75,.25]; ½ ln(4/3) + ½ (½ ln(2/3) + ½ ln 2)
    by_hand = 0.5 * math.log(4 / 3) + 0.5 * (0.5 * math.log(2 / 3) + 0.5 * math.log(2))
    assert js[0].item() == pytest.approx(by_hand)
    assert js[1].item() == pytest.approx(0.0)
    # scipy's jensenshannon is the square root of the divergence (natural log by default)
    assert js[2].item() == pytest.approx(jensenshannon([0.2, 0.8], [0.9, 0.1]) ** 2)
    assert zrf_from_probs(p, p) == pytest.approx(1.0)
    assert zrf_from_probs(torch.eye(2), torch.eye(2).flip(0)) == pytest.approx(1 - math.log(2))
    model = nn.Linear(4, 3)
    forget = TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))
    assert zrf(model, model, forget) == pytest.approx(1.0)
    assert zrf(model, nn.Linear(4, 3), forget) < 1.0


def test_attack_success_rate():
    data = prob_data([confident(0), confident(0), confident(2), confident(1)], [1, 2, 2, 1])
    assert attack_success_rate(nn.Identity(), data, 0) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="target_class"):
        attack_success_rate(nn.Identity(), data, 5)


def test_avg_gap_and_rte():
    m = {"UA": 5.0, "RA": 99.0, "TA": 90.0, "MIA-Efficacy": 20.0}
    ref = {"UA": 7.0, "RA": 100.0, "TA": 94.0, "MIA-Efficacy": 13.0}
    assert avg_gap(m, ref) == pytest.approx((2 + 1 + 4 + 7) / 4)
    assert avg_gap(m, ref, keys=("UA",)) == pytest.approx(2.0)
    with pytest.raises(KeyError, match="ZRF"):
        avg_gap(m, ref, keys=("ZRF",))
    assert run_time_efficiency(3.0, 12.0) == {"RTE-s": 3.0, "RTE-ratio": 0.25}
    with pytest.raises(ValueError, match="reference_seconds"):
        run_time_efficiency(3.0, 0.0)


def test_evaluate_classification_on_constructed_probs():
    forget = prob_data([confident(0), confident(1), confident(0), confident(2)], [0, 0, 0, 0])  # 2/4 right
    retain = prob_data([confident(1)] * 9 + [confident(2)], [1] * 10)  # 9/10 right
    test = prob_data([confident(2, p=0.5)] * 4 + [confident(0, p=0.5)], [2] * 5)  # 4/5 right
    model = nn.Identity()
    out = evaluate(model, forget=forget, retain=retain, test=test)
    assert set(out) == {"UA", "RA", "TA", "MIA-Efficacy", "MIA-MemberRate"}
    assert out["UA"] == pytest.approx(50.0)
    assert out["RA"] == pytest.approx(90.0)
    assert out["TA"] == pytest.approx(80.0)
    assert out["MIA-Efficacy"] == pytest.approx(mia_efficacy_svc_confidence(model, retain, forget, test))
    assert out["MIA-MemberRate"] == pytest.approx(mia_member_rate_lr_entropy(model, retain, forget, test))
    ref = {"UA": 40.0, "RA": 100.0, "TA": 70.0, "MIA-Efficacy": out["MIA-Efficacy"] + 4, "RTE-s": 8.0}
    gapped = evaluate(model, forget=forget, retain=retain, test=test, reference=ref, seconds=2.0,
                      extra={"also": test})
    assert gapped["gap/UA"] == pytest.approx(10.0) and gapped["gap/TA"] == pytest.approx(10.0)
    assert gapped["Avg.Gap"] == pytest.approx((10 + 10 + 10 + 4) / 4)
    assert "gap/MIA-MemberRate" not in gapped  # not in the reference
    assert gapped["RTE-s"] == 2.0 and gapped["RTE-ratio"] == pytest.approx(0.25)
    assert gapped["Acc/also"] == pytest.approx(80.0)


@pytest.fixture(scope="module")
def trained():
    """Digits, a BadNets scenario, and small CNNs trained on the poisoned and on the clean data."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread avoids oversubscription

    def fit(data, seed):
        torch.manual_seed(seed)
        model = small_cnn(10, width=16)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(seed)
        for _ in range(5):
            for x, y in DataLoader(data, batch_size=64, shuffle=True, generator=g):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
        return model.eval()

    try:
        train, test = digits_dataset(seed=0)
        sc = badnets_poison(train, test, poison_fraction=0.1, identified_fraction=0.5, seed=0)
        yield sc, fit(sc.train, 0), fit(train, 0), fit(sc.retain, 1)
    finally:
        torch.set_num_threads(threads)


def test_evaluate_corrective_badnets(trained):
    sc, poisoned, clean, _ = trained
    out_p = evaluate(poisoned, suite="corrective", scenario=sc)
    out_c = evaluate(clean, suite="corrective", scenario=sc)
    for out in (out_p, out_c):
        assert {"Acc_corr", "Acc_retain", "ASR", "UA", "RA", "TA"} <= set(out)
        assert out["Acc_retain"] == pytest.approx(out["TA"])  # clean_test is the test set
    # the backdoor works on the poisoned model and not on the clean one
    assert out_p["ASR"] > 80 and out_p["Acc_corr"] < 30
    assert out_c["ASR"] < 20 and out_c["Acc_corr"] > 60  # measured 78 %: the patch alone perturbs a clean model
    assert out_p["ASR"] == pytest.approx(attack_success_rate(poisoned, sc.extra["triggered_test"], 0))
    with pytest.raises(ValueError, match="triggered_test"):
        evaluate(poisoned, suite="corrective", forget=sc.forget, retain=sc.retain, test=sc.test)


def test_evaluate_reference_model_and_determinism(trained):
    sc, poisoned, _, retrained = trained
    train_clean, test = digits_dataset(seed=0)
    rf = random_forget(train_clean, test, fraction=0.1, seed=0)
    ref_metrics = evaluate(retrained, scenario=rf)
    a = evaluate(poisoned, scenario=rf, reference=retrained, random_model=small_cnn(10, width=16))
    b = evaluate(poisoned, scenario=rf, reference=ref_metrics)
    for k in ("UA", "RA", "TA", "MIA-Efficacy"):
        assert a[f"gap/{k}"] == pytest.approx(abs(a[k] - ref_metrics[k]))
        assert a[f"gap/{k}"] == pytest.approx(b[f"gap/{k}"])
    assert a["Avg.Gap"] == pytest.approx(b["Avg.Gap"])
    assert 1 - math.log(2) <= a["ZRF"] <= 1
    assert evaluate(retrained, scenario=rf) == ref_metrics  # deterministic on CPU


def test_results_table():
    rows = {"GA": {"UA": 1.234, "RA": 99.0, "Avg.Gap": 3.0, "gap/UA": 1.0},
            "Retrain": {"UA": 5.0, "RA": 100.0, "TA": 94.26, "RTE-s": 43.0}}
    table = results_table(rows)
    lines = table.strip().splitlines()
    assert lines[0] == "| Method | UA | RA | TA | Avg.Gap | RTE-s |"
    assert lines[2].startswith("| Retrain |") and lines[3].startswith("| GA |")
    assert lines[3] == "| GA | 1.23 | 99.00 | – | 3.00 | – |"
    assert "gap/UA" in results_table(rows, columns=["UA", "gap/UA"])
    with pytest.raises(ValueError, match="rows"):
        results_table({})


def test_evaluate_bad_arguments():
    data = prob_data([confident(0)] * 4, [0] * 4)
    with pytest.raises(ValueError, match="suite"):
        evaluate(nn.Identity(), suite="nope", forget=data, retain=data, test=data)
    with pytest.raises(ValueError, match="retain"):
        evaluate(nn.Identity(), forget=data, test=data)
    with pytest.raises(ValueError, match="probs"):
        accuracy_from_probs(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
