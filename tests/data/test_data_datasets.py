import math

import pytest
import torch
from torch.utils.data import Dataset, Subset

from unlearnx.data import (
    RelabeledDataset,
    TransformedDataset,
    digits_dataset,
    inputs_of,
    labels_of,
    regression_dataset,
    synthetic_images,
)


class ListDataset(Dataset):
    """A plain map-style Dataset (not a TensorDataset) to check the generic paths."""

    def __init__(self, xs, ys):
        self.xs, self.ys = xs, ys

    def __len__(self):
        return len(self.xs)

    def __getitem__(self, i):
        return self.xs[i], self.ys[i]


def test_digits_shapes_range_and_split():
    train, test = digits_dataset()
    x, y = train.tensors
    xt, yt = test.tensors
    assert len(train) + len(test) == 1797
    assert len(test) == math.ceil(0.2 * 1797)  # scikit-learn rounds the test share up
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)
    assert y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) == 1.0
    # stratified: every class has the same share (within one sample) in train and test
    for c in range(10):
        n_tr, n_te = int((y == c).sum()), int((yt == c).sum())
        assert abs(n_te / (n_tr + n_te) - 0.2) < 1.5 / (n_tr + n_te)
    # no image appears in both splits
    flat_tr = {tuple(r.tolist()) for r in x.reshape(len(x), -1)}
    overlap = sum(tuple(r.tolist()) in flat_tr for r in xt.reshape(len(xt), -1))
    assert overlap <= 5  # the raw digits data holds a handful of exact duplicate images


def test_digits_deterministic_per_seed():
    a, _ = digits_dataset(seed=3)
    b, _ = digits_dataset(seed=3)
    c, _ = digits_dataset(seed=4)
    assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    assert not torch.equal(a.tensors[1], c.tensors[1])


def test_digits_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        digits_dataset(test_fraction=1.5)


def test_regression_dataset():
    train, test = regression_dataset(n=200, d=5, noise=0.0, seed=1)
    assert len(train) == 160 and len(test) == 40
    assert train.tensors[0].shape == (160, 5) and train.tensors[1].shape == (160, 1)
    assert train.tensors[1].dtype == torch.float32
    again, _ = regression_dataset(n=200, d=5, noise=0.0, seed=1)
    assert torch.equal(train.tensors[1], again.tensors[1])
    # noise=0: the target is a deterministic function of x, so two equal-seed sets agree and the
    # non-linear sine term is present (a least-squares linear fit leaves a residual).
    x, y = train.tensors
    sol = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1)], 1), y).solution
    resid = y - torch.cat([x, torch.ones(len(x), 1)], 1) @ sol
    assert float(resid.abs().mean()) > 0.05
    for kwargs, name in (({"n": 0}, "n"), ({"d": -1}, "d"), ({"noise": -0.1}, "noise")):
        with pytest.raises(ValueError, match=name):
            regression_dataset(**kwargs)


def test_synthetic_images_are_class_dependent():
    train, test = synthetic_images(n_per_class=30, num_classes=4, image_size=16, seed=0)
    x, y = train.tensors
    assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert len(train) + len(test) == 120
    # Samples have random phases, so compare phase-free spectra: nearest class-mean of |FFT2|
    # on the test set is far above chance (25 %), i.e. the classes carry a learnable signal.
    def spectrum(a):
        return torch.fft.fft2(a).abs().flatten(1)

    means = torch.stack([spectrum(x[y == c]).mean(0) for c in range(4)])
    xt, yt = test.tensors
    pred = torch.cdist(spectrum(xt), means).argmin(1)
    assert float((pred == yt).float().mean()) > 0.8


def test_labels_and_inputs_of_generic_dataset():
    xs = [torch.full((1, 2, 2), float(i)) for i in range(5)]
    ds = ListDataset(xs, [i % 2 for i in range(5)])
    assert labels_of(ds).tolist() == [0, 1, 0, 1, 0]
    assert inputs_of(ds).shape == (5, 1, 2, 2)
    sub = Subset(ds, [4, 1])
    assert labels_of(sub).tolist() == [0, 1]
    assert inputs_of(sub)[0, 0, 0, 0] == 4.0


def test_labels_of_rejects_float_targets():
    train, _ = regression_dataset(n=20, d=2)
    with pytest.raises(ValueError, match="integer class labels"):
        labels_of(train)


def test_views():
    xs = [torch.zeros(1, 3, 3) for _ in range(4)]
    ds = ListDataset(xs, [0, 1, 2, 3])
    rel = RelabeledDataset(ds, torch.tensor([3, 2, 1, 0]))
    assert [int(rel[i][1]) for i in range(4)] == [3, 2, 1, 0]
    tr = TransformedDataset(ds, lambda x: x + 1, indices=[1, 3])
    assert [float(tr[i][0].sum()) for i in range(4)] == [0.0, 9.0, 0.0, 9.0]
    assert float(ds[1][0].sum()) == 0.0  # base untouched
    with pytest.raises(ValueError, match="labels"):
        RelabeledDataset(ds, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="indices"):
        TransformedDataset(ds, lambda x: x, indices=[7])
