"""Shared fixtures of the classifier-method tests: digits, and an original model with its Retrain
oracle trained by one recipe (the same as benchmarks/bench_methods_classification.py)."""
import pytest
import torch

import unlearnx as ux
from unlearnx.data import class_forget, digits_dataset
from unlearnx.methods import train_classifier
from unlearnx.models import small_cnn

# The recipe of the original model (and of Retrain), as in benchmarks/bench_methods_classification.py.
RECIPE = {"epochs": 20, "lr": 0.05, "batch_size": 64}


def trained(scenario):
    """(original model, its metrics, Retrain's metrics) for a scenario."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = small_cnn()
    train_classifier(model, scenario.train, seed=0, progress=False, **RECIPE)
    retrain = ux.unlearn(model, "retrain", retain=scenario.retain, seed=0, progress=False, **RECIPE)
    return model, ux.evaluate(model, scenario=scenario), ux.evaluate(retrain.model, scenario=scenario)


@pytest.fixture(scope="session")
def train_with_oracle():
    """The `trained` function, for fixtures that build their own scenario."""
    return trained


@pytest.fixture(scope="module")
def digits():
    return digits_dataset(seed=0)


@pytest.fixture(scope="module")
def classwise(digits):
    scenario = class_forget(*digits, classes=0)
    return (scenario, *trained(scenario))


