import pytest
import torch
from torch import nn

import unlearnx as ux
from unlearnx.data import class_forget, digits_dataset
from unlearnx.methods.model_parts import output_linear, split_model
from unlearnx.methods.finetune import L1Sparse
from unlearnx.methods.training import reinitialize, train_classifier
from unlearnx.models import small_cnn

PART1 = {"retrain", "ft", "ga", "rl", "l1_sparse", "boundary_shrink", "boundary_expand", "scrub", "bad_teacher",
         "laf", "blindspot", "gaussian_amnesiac"}


def test_available_and_get():
    assert PART1 <= set(ux.methods.available())
    assert ux.methods.available() == sorted(ux.methods.available())
    for name in PART1:
        cls = ux.methods.get(name)
        assert cls.name == name and cls.paper and isinstance(cls.defaults, dict)
    assert ux.methods.get("FT") is ux.methods.get("ft")
    assert ux.methods.get("ft").defaults["lr"] == 0.01 and ux.methods.get("ga").defaults["lr"] == 1e-4


def test_unknown_method_names_close_matches():
    with pytest.raises(ValueError, match="scrub"):
        ux.methods.get("scrbu")
    with pytest.raises(ValueError, match="not a registered method"):
        ux.unlearn(nn.Linear(2, 2), "nope", forget=[], retain=[])
    with pytest.raises(TypeError):
        ux.methods.get(3)


def test_unknown_and_bad_hyperparameters():
    with pytest.raises(TypeError, match=r"learning_rate.*valid ones.*'lr'"):
        ux.unlearn(nn.Linear(2, 2), "ft", retain=[(torch.zeros(2), 0)], learning_rate=0.1)
    with pytest.raises(ValueError, match="lr"):
        ux.methods.get("ft")(lr=-1.0)
    with pytest.raises(ValueError, match="epochs"):
        ux.methods.get("ga")(epochs=0)
    with pytest.raises(ValueError, match="no_l1_epochs"):
        L1Sparse(epochs=3, no_l1_epochs=3)
    with pytest.raises(ValueError, match="max_steps"):
        ux.methods.get("scrub")(epochs=2, max_steps=3)
    with pytest.raises(ValueError, match="loss"):
        ux.methods.get("retrain")(loss="hinge")


def test_missing_data_and_bad_model():
    data = [(torch.zeros(2), 0)]
    with pytest.raises(ValueError, match="needs forget"):
        ux.unlearn(nn.Linear(2, 2), "ga")
    with pytest.raises(TypeError, match="model"):
        ux.unlearn("model", "ft", retain=data)
    with pytest.raises(TypeError, match="retain"):
        ux.unlearn(nn.Linear(2, 2), "ft", retain=3)


def test_register_method_rejects_bad_use():
    with pytest.raises(ValueError, match="lower-case"):
        ux.methods.register_method("FT")
    with pytest.raises(TypeError):
        ux.methods.register_method("x_test")(object)
    with pytest.raises(ValueError, match="already registered"):
        @ux.methods.register_method("ft")
        class Other(ux.methods.UnlearningMethod):
            paper = "x"


def test_l1_gamma_schedule():
    m = L1Sparse(epochs=10, gamma=1e-3, no_l1_epochs=2)
    got = [m.gamma_at(t) for t in range(10)]
    want = [1e-3 * (1 - t / 8) for t in range(8)] + [0.0, 0.0]
    assert got == pytest.approx(want)


def test_reinitialize_equals_fresh_build():
    torch.manual_seed(7)
    fresh = small_cnn(width=8)
    other = small_cnn(width=8)
    with torch.no_grad():
        other[1].running_mean.add_(1.0)
    reinitialize(other, 7)
    for a, b in zip(fresh.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)

    class NoReset(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2))

    with pytest.raises(ValueError, match="reset_parameters"):
        reinitialize(nn.Sequential(NoReset()), 0)


def test_split_protocol():
    cnn = small_cnn(width=8)
    ext, head = split_model(cnn)
    x = torch.randn(3, 1, 8, 8)
    cnn.eval()
    assert torch.allclose(head(ext(x)), cnn(x))
    assert output_linear(cnn)[2] is cnn[8]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU())
            self.classifier = nn.Linear(3, 2)

        def forward(self, x):
            return self.classifier(self.features(x))

    net = Net()
    assert split_model(net) == (net.features, net.classifier)
    assert output_linear(net)[2] is net.classifier
    with pytest.raises(ValueError, match="split"):
        split_model(cnn, split=0)
    with pytest.raises(ValueError, match="features"):
        split_model(nn.Conv2d(1, 1, 1))


def test_train_classifier_validates_and_learns():
    train, _ = digits_dataset()
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(small_cnn(), train, epochs=0, lr=0.1)
    with pytest.raises(ValueError, match="schedule"):
        train_classifier(small_cnn(), train, epochs=1, lr=0.1, schedule="step")
    with pytest.raises(ValueError, match="optimizer"):
        train_classifier(small_cnn(), train, epochs=1, lr=0.1, optimizer="rmsprop")
    torch.manual_seed(0)
    m = small_cnn(width=8)
    log = train_classifier(m, train, epochs=3, lr=0.05, progress=False)
    assert len(log["train_loss"]) == 3 and log["train_loss"][-1] < 0.5 * log["train_loss"][0]


def test_non_finite_loss_raises():
    scenario = class_forget(*digits_dataset(), classes=0)
    torch.manual_seed(0)
    with pytest.raises(FloatingPointError, match="lower lr"):
        ux.unlearn(small_cnn(width=8), "ga", forget=scenario.forget, lr=1e6, epochs=5, progress=False)
