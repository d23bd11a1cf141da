import time

import pytest
import torch
from torch.nn import functional as F

from unlearnx.data import digits_dataset
from unlearnx.models import available_models, build_model, mlp, regression_mlp, resnet_tiny, small_cnn


def test_output_shapes():
    assert mlp(64, 10)(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    assert mlp(12, 3, hidden=(7,))(torch.randn(2, 12)).shape == (2, 3)
    assert small_cnn(10)(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert small_cnn(7, in_channels=3, image_size=32, width=8)(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert resnet_tiny(10, width=8)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert resnet_tiny(5, in_channels=1, width=4, blocks=(1, 2))(torch.randn(3, 1, 8, 8)).shape == (3, 5)
    assert regression_mlp(6)(torch.randn(9, 6)).shape == (9, 1)


def test_registry():
    assert available_models() == sorted(["mlp", "small_cnn", "resnet_tiny", "regression_mlp"])
    m = build_model("mlp", in_features=64, num_classes=10, hidden=(16,))
    assert m(torch.randn(2, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match="name"):
        build_model("resnet152")


@pytest.mark.parametrize(
    "fn, kwargs, name",
    [
        (mlp, {"in_features": 0, "num_classes": 3}, "in_features"),
        (mlp, {"in_features": 4, "num_classes": 3, "hidden": 5}, "hidden"),
        (small_cnn, {"num_classes": 0}, "num_classes"),
        (small_cnn, {"width": -1}, "width"),
        (resnet_tiny, {"blocks": (1, 0)}, "blocks"),
        (regression_mlp, {"in_features": 3, "out_features": 0}, "out_features"),
    ],
)
def test_bad_arguments(fn, kwargs, name):
    with pytest.raises(ValueError, match=name):
        fn(**kwargs)


def test_small_cnn_learns_digits():
    """small_cnn reaches >= 95 % test accuracy on digits within a few CPU seconds (Adam, 6 epochs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI machine has 2 shared cores; one thread avoids oversubscription
    try:
        train, test = digits_dataset(seed=0)
        x, y = train.tensors
        torch.manual_seed(0)
        model = small_cnn(10)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        for _ in range(6):
            perm = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), 64):
                idx = perm[i : i + 64]
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            acc = float((model(test.tensors[0]).argmax(1) == test.tensors[1]).float().mean())
    finally:
        torch.set_num_threads(threads)
    assert acc >= 0.95
    assert seconds < 20
