"""One tiny run of every registered method (classifier and causal-LM) with device="cuda".

Skipped without a GPU (scripts/gpu_check.sh runs it on one). The method list comes from the
registry, so a new method is covered as soon as it is registered. Each run is as short as the
method allows (one epoch, one step where the method has max_steps, tiny data and models); the test
checks that it finishes on CUDA with finite losses and leaves the model's floating tensors on CUDA.
To try the same code path on the CPU: UNLEARNX_METHODS_TEST_DEVICE=cpu (slow: every method).
"""
import math
import os

import pytest
import torch
from torch.utils.data import Subset

import unlearnx as ux
from unlearnx.data import digits_dataset, random_forget, regression_dataset
from unlearnx.models import regression_mlp, small_cnn

DEVICE = os.environ.get("UNLEARNX_METHODS_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")

SHORT = {"epochs": 1, "max_steps": 1}
# Arguments a method needs beyond the short schedule (the values its own tests use).
EXTRA = {
    "eco": {"target": 0.3, "classifier_steps": 5, "search_steps": 2},
    "uld": {"layers": 2},
}
REGRESSION = ("blindspot", "gaussian_amnesiac")  # regression methods: an MLP on regression_dataset


def _short(cls, extra) -> dict:
    hp = {k: v for k, v in SHORT.items() if k in cls.defaults}
    hp.update({k: v for k, v in extra.items() if k in cls.defaults})
    return hp


def _assert_ran(res, method):
    loss = res.log.get("loss", [])
    assert all(math.isfinite(float(v)) for v in loss), (method, loss)
    tensors = [p for p in res.model.parameters()] + [b for b in res.model.buffers() if b.is_floating_point()]
    assert tensors and all(t.device.type == torch.device(DEVICE).type for t in tensors), method


@pytest.fixture(scope="module")
def scenario():
    train, test = digits_dataset(seed=0)
    train, test = Subset(train, range(256)), Subset(test, range(64))
    return random_forget(train, test, fraction=0.1, seed=0)


@pytest.fixture(scope="module")
def regression():
    train, _ = regression_dataset(n=120, noise=0.5, seed=0)
    return Subset(train, range(12)), Subset(train, range(12, len(train)))


@pytest.mark.parametrize("method", ux.methods.available(task="classifier"))
def test_classifier_method_runs_on_device(method, scenario, regression):
    cls = ux.methods.get(method, "classifier")
    torch.manual_seed(0)
    if method in REGRESSION:
        model, (forget, retain) = regression_mlp(10, hidden=(32,)), regression
    else:
        model, forget, retain = small_cnn(), scenario.forget, scenario.retain
    res = ux.unlearn(model, method, forget=forget, retain=retain, device=DEVICE, progress=False,
                     **_short(cls, EXTRA.get(method, {})))
    _assert_ran(res, method)


@pytest.fixture(scope="module")
def moe(tiny_setup_class):
    return tiny_setup_class("moe", epochs=1, layers=2, hidden=32, heads=2, experts=4, top_k=2)


@pytest.mark.parametrize("method", ux.methods.available(task="causal_lm"))
def test_llm_method_runs_on_device(method, tiny, request):
    setup = request.getfixturevalue("moe") if method == "uoe" else tiny
    cls = ux.methods.get(method, "causal_lm")
    hp = {"batch_size": 4, **_short(cls, EXTRA.get(method, {}))}
    res = ux.unlearn(setup.model(), method, forget=setup.forget, retain=setup.retain, tokenizer=setup.tok,
                     device=DEVICE, progress=False, **hp)
    _assert_ran(res, method)
