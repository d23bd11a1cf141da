"""Blindspot and Gaussian amnesiac on the synthetic regression data: the forget-set MAE moves from the
original's (memorised, low) toward Retrain's while the test MAE stays close."""
import pytest
import torch
from torch.utils.data import Subset

import unlearnx as ux
from unlearnx.data import regression_dataset
from unlearnx.methods import train_classifier
from unlearnx.methods.regression import attention_map
from unlearnx.models import regression_mlp

RECIPE = {"epochs": 200, "lr": 3e-3, "optimizer": "adam", "weight_decay": 0.0, "schedule": "constant",
          "loss": "l1", "batch_size": 32}


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    train, test = regression_dataset(n=600, noise=0.5, seed=0)
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    forget, retain = Subset(train, perm[:48].tolist()), Subset(train, perm[48:].tolist())
    torch.manual_seed(0)
    model = regression_mlp(10, hidden=(128, 128))
    train_classifier(model, train, progress=False, **RECIPE)
    retrain = ux.unlearn(model, "retrain", retain=retain, progress=False, **RECIPE).model

    def mae(m):
        return ux.evaluate(m, suite="regression", forget=forget, retain=retain, test=test)

    return model, forget, retain, mae, mae(model), mae(retrain)


def test_setup_memorises(setup):
    _, _, _, _, orig, ref = setup
    assert ref["MAE-forget"] > 3 * orig["MAE-forget"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["blindspot", "gaussian_amnesiac"])
def test_forget_mae_moves_toward_retrain(setup, name):
    model, forget, retain, mae, orig, ref = setup
    res = ux.unlearn(model, name, forget=forget, retain=retain, epochs=10, progress=False)
    m = mae(res.model)
    assert orig["MAE-forget"] * 1.4 < m["MAE-forget"] < ref["MAE-forget"], m
    assert abs(m["MIA-L1"] - ref["MIA-L1"]) < abs(orig["MIA-L1"] - ref["MIA-L1"]), m
    assert m["MAE-test"] < orig["MAE-test"] * 1.1, m
    assert set(res.log) >= {"mixed_loss"}


def test_attention_map():
    a = torch.randn(4, 3, 5, 5)
    at = attention_map(a)
    assert at.shape == (4, 25)
    assert torch.allclose(at.norm(dim=1), torch.ones(4))
    assert torch.allclose(at, torch.nn.functional.normalize(a.pow(2).mean(1).flatten(1)))
    assert torch.equal(attention_map(torch.randn(4, 7)), torch.ones(4, 1))


@pytest.mark.parametrize("name", ["blindspot", "gaussian_amnesiac"])
def test_class_labels_are_refused_with_a_clear_error(name):
    # integer class labels used to reach F.l1_loss and fail on a broadcasting error
    x = torch.randn(8, 4)
    forget = torch.utils.data.TensorDataset(x[:2], torch.tensor([0, 1]))
    retain = torch.utils.data.TensorDataset(x[2:], torch.tensor([0, 1, 2, 0, 1, 2]))
    with pytest.raises(ValueError, match=f"{name} is a regression method.*forget has torch.int64 targets"):
        ux.unlearn(torch.nn.Linear(4, 3), name, forget=forget, retain=retain)
