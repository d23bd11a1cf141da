import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from unlearnx.data import random_forget, regression_dataset
from unlearnx.eval import (
    anamnesis_index,
    evaluate,
    make_relearn_fn,
    mean_absolute_error,
    member_rate_svc_from_features,
    mia_svc_l1_loss,
    per_sample_l1,
    relearn_steps,
)
from unlearnx.models import regression_mlp


class Constant(nn.Module):
    """Predicts the scalar parameter w for every input: its L1 loss against targets 1 is |w − 1|."""

    def __init__(self, w: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(w)))

    def forward(self, x):
        return self.w.expand(len(x), 1)


def step_towards_one(model, step):
    with torch.no_grad():
        model.w += 0.1


def test_per_sample_l1_and_mae():
    out = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    tgt = torch.tensor([[0.0, 0.0], [0.5, -0.5]])
    assert per_sample_l1(out, tgt).tolist() == pytest.approx([1.5, 0.5])
    assert per_sample_l1(torch.tensor([[2.0], [3.0]]), torch.tensor([1.0, 1.0])).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="outputs and targets"):
        per_sample_l1(torch.zeros(2, 2), torch.zeros(2, 3))
    data = TensorDataset(torch.zeros(4, 3), torch.tensor([[1.0], [0.0], [2.0], [1.0]]))
    assert mean_absolute_error(Constant(1.0), data) == pytest.approx((0 + 1 + 1 + 0) / 4)


def test_l1_membership_attack_toy():
    # Identity "regressor": the loss of sample i is |x_i − y_i|, so we place the losses by hand.
    def data(losses):
        y = torch.zeros(len(losses), 1)
        return TensorDataset(torch.tensor(losses).unsqueeze(1), y)

    retain = data([0.01, 0.02, 0.03, 0.0, 0.015] * 4)
    test = data([1.0, 1.2, 1.4, 0.9] * 3)
    forget = data([0.02, 1.1, 0.01, 1.3])
    assert mia_svc_l1_loss(nn.Identity(), retain, forget, test) == pytest.approx(0.5)
    assert member_rate_svc_from_features([0.0, 0.01] * 5, [0.0, 0.0, 0.0], [1.0, 1.1] * 5) == pytest.approx(1.0)


def test_relearn_steps_and_anamnesis_index_toy():
    # target = 1.05 · 0.1 = 0.105; from w = 0.5 the loss 0.5 − 0.1k drops below it after k = 4
    # steps, from w = 0 after k = 9 steps: AIN = 4 / 9.
    forget_loss = lambda m: abs(m.w.item() - 1.0)  # noqa: E731
    assert relearn_steps(Constant(0.5), step_towards_one, forget_loss, 0.105) == (4, True)
    unlearned, retrained = Constant(0.5), Constant(0.0)
    ain = anamnesis_index(unlearned, retrained, 0.1, step_towards_one, forget_loss_fn=forget_loss)
    assert ain == pytest.approx(4 / 9)
    assert unlearned.w.item() == 0.5 and retrained.w.item() == 0.0  # deep copies relearn, not the inputs
    # the MAE on a forget set gives the same count (targets 1: loss = |w − 1|)
    forget = TensorDataset(torch.zeros(3, 1), torch.ones(3, 1))
    assert anamnesis_index(unlearned, retrained, 0.1, step_towards_one, forget=forget) == pytest.approx(4 / 9)
    with pytest.warns(RuntimeWarning, match="max_steps"):
        censored = anamnesis_index(unlearned, retrained, 0.1, step_towards_one, forget=forget, max_steps=5)
    assert censored == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="forget"):
        anamnesis_index(unlearned, retrained, 0.1, step_towards_one)
    with pytest.raises(ValueError, match="threshold"):
        anamnesis_index(unlearned, retrained, 0.1, step_towards_one, forget=forget, threshold=0.5)


def test_make_relearn_fn_is_deterministic_and_reduces_loss():
    train, _ = regression_dataset(n=200, d=4, seed=0)
    torch.manual_seed(0)
    a = regression_mlp(4, hidden=(16,))
    b = regression_mlp(4, hidden=(16,))
    b.load_state_dict(a.state_dict())
    relearn = make_relearn_fn(train, lr=1e-2, batch_size=32, seed=0)
    before = mean_absolute_error(a, train)
    for step in range(12):  # crosses an epoch boundary (7 batches per pass)
        relearn(a, step)
        relearn(b, step)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert mean_absolute_error(a, train) < before
    with pytest.raises(ValueError, match="optimizer"):
        make_relearn_fn(train, optimizer="lbfgs")


def test_evaluate_regression_suite():
    train, test = regression_dataset(n=300, d=4, seed=0)
    sc = random_forget(train, test, fraction=0.1, seed=0)
    torch.manual_seed(0)
    model = regression_mlp(4, hidden=(16,))
    out = evaluate(model, suite="regression", scenario=sc)
    assert set(out) == {"MAE-retain", "MAE-forget", "MAE-test", "MIA-L1"}
    assert out["MAE-forget"] == pytest.approx(mean_absolute_error(model, sc.forget))
    assert out["MAE-test"] == pytest.approx(mean_absolute_error(model, test))
    assert 0.0 <= out["MIA-L1"] <= 1.0
    assert out["MIA-L1"] == pytest.approx(mia_svc_l1_loss(model, sc.retain, sc.forget, test))
    ref = evaluate(model, suite="regression", scenario=sc, reference=model)
    assert ref["gap/MAE-test"] == 0.0 and "Avg.Gap" not in ref
