"""Built-in data sets (nothing is downloaded) and small map-style Dataset views.

- `digits_dataset`: scikit-learn's handwritten digits (1,797 8x8 grey images, 10 classes), which
  ships inside scikit-learn; the real data set of the tests and the demo.
- `regression_dataset`: a seeded synthetic regression problem.
- `synthetic_images`: a seeded CIFAR-shaped (3x32x32) 10-class image set with class-dependent
  patterns, for a larger case than digits.

Every builder returns `(train, test)` as `torch.utils.data.TensorDataset`s. The views
(`RelabeledDataset`, `TransformedDataset`) and the helpers `labels_of` / `inputs_of` work on any
map-style Dataset whose items are `(x, y)` pairs, so the scenario builders accept user data too.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = [
    "digits_dataset",
    "regression_dataset",
    "synthetic_images",
    "RelabeledDataset",
    "TransformedDataset",
    "labels_of",
    "inputs_of",
    "check_dataset",
]


def check_dataset(data, name: str) -> None:
    """Raise unless `data` is a non-empty map-style Dataset (has `__len__` and `__getitem__`)."""
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise TypeError(f"{name} must be a map-style Dataset with __len__ and __getitem__, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError(f"{name} is empty")


def _check_fraction(value, name: str, *, low_open: bool = True, high_closed: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value <= 1 if high_closed else value < 1
    if not (low_ok and high_ok):
        interval = f"{'(' if low_open else '['}0, 1{']' if high_closed else ')'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Lazy import: scikit-learn is only needed by the data builders and the attacks.
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y)
    return np.sort(train_idx), np.sort(test_idx)


def digits_dataset(*, seed: int = 0, test_fraction: float = 0.2) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's handwritten digits as image tensors, split train/test stratified by class.

    Returns `(train, test)` TensorDatasets of `x` float32 `[N, 1, 8, 8]` in [0, 1] (pixel / 16)
    and `y` int64 `[N]` in 0..9. The split is deterministic for a given `seed`; 1,797 images in
    total (360 test images at the default `test_fraction=0.2`).
    """
    from sklearn.datasets import load_digits

    test_fraction = _check_fraction(test_fraction, "test_fraction")
    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # [N, 1, 8, 8]
    y = torch.from_numpy(bunch.target.astype(np.int64))
    tr, te = _stratified_split(bunch.target, test_fraction, seed)
    return TensorDataset(x[tr], y[tr]), TensorDataset(x[te], y[te])


def regression_dataset(
    *, n: int = 1000, d: int = 10, noise: float = 0.1, seed: int = 0, test_fraction: float = 0.2
) -> tuple[TensorDataset, TensorDataset]:
    """Seeded synthetic regression data: y = x·w + 0.5·sin(2·x₀) + noise·ε.

    x ~ N(0, I_d), w ~ N(0, I_d / d), ε ~ N(0, 1); the sine term makes the target non-linear so a
    model can memorise samples beyond the linear fit. Returns `(train, test)` TensorDatasets of
    `x` float32 `[N, d]` and `y` float32 `[N, 1]` (one output column, matching `regression_mlp`).
    """
    n = _check_positive_int(n, "n")
    d = _check_positive_int(d, "d")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    n_test = round(n * test_fraction)
    if n_test < 1 or n_test >= n:
        raise ValueError(f"n={n} with test_fraction={test_fraction} leaves an empty train or test split")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g) / math.sqrt(d)
    y = x @ w + 0.5 * torch.sin(2.0 * x[:, 0]) + noise * torch.randn(n, generator=g)
    perm = torch.randperm(n, generator=g)
    te, tr = perm[:n_test].sort().values, perm[n_test:].sort().values
    y = y.unsqueeze(1)
    return TensorDataset(x[tr], y[tr]), TensorDataset(x[te], y[te])


def synthetic_images(
    *,
    n_per_class: int = 200,
    num_classes: int = 10,
    channels: int = 3,
    image_size: int = 32,
    noise: float = 0.15,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> tuple[TensorDataset, TensorDataset]:
    """A CIFAR-shaped synthetic image set: each class is an oriented colour grating plus noise.

    Class c has a fixed grating template (orientation, spatial frequency and per-channel colour
    drawn from a generator seeded by `seed`); each sample is its class template with a random
    phase shift, a random brightness scale in [0.8, 1.2] and Gaussian pixel noise of std `noise`,
    clipped to [0, 1]. Returns `(train, test)` TensorDatasets of `x` float32
    `[N, channels, image_size, image_size]` and `y` int64 `[N]`, split stratified by class.
    """
    n_per_class = _check_positive_int(n_per_class, "n_per_class")
    num_classes = _check_positive_int(num_classes, "num_classes")
    channels = _check_positive_int(channels, "channels")
    image_size = _check_positive_int(image_size, "image_size")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    g = torch.Generator().manual_seed(seed)
    coords = torch.arange(image_size, dtype=torch.float32) / image_size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # [H, W]
    # Evenly spaced orientations keep every pair of classes distinguishable.
    angles = torch.arange(num_classes, dtype=torch.float32) * (math.pi / num_classes)
    freqs = 2.0 + 4.0 * torch.rand(num_classes, generator=g)
    colours = 0.3 + 0.7 * torch.rand(num_classes, channels, generator=g)  # [C, ch]
    n = n_per_class * num_classes
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    phase = 2 * math.pi * torch.rand(n, generator=g)
    scale = 0.8 + 0.4 * torch.rand(n, generator=g)
    proj = (torch.cos(angles)[y, None, None] * xx + torch.sin(angles)[y, None, None] * yy)  # [N, H, W]
    wave = 0.5 + 0.5 * torch.sin(2 * math.pi * freqs[y, None, None] * proj + phase[:, None, None])
    x = scale[:, None, None, None] * colours[y][:, :, None, None] * wave[:, None]  # [N, ch, H, W]
    x = (x + noise * torch.randn(x.shape, generator=g)).clamp_(0.0, 1.0)
    tr, te = _stratified_split(y.numpy(), test_fraction, seed)
    return TensorDataset(x[tr], y[tr]), TensorDataset(x[te], y[te])


class RelabeledDataset(Dataset):
    """View of `base` with new labels: item i is `(base[i][0], labels[i])`.

    `labels` is an int64 tensor `[len(base)]` (e.g. the base labels with some entries changed).
    """

    def __init__(self, base: Dataset, labels: torch.Tensor):
        check_dataset(base, "base")
        labels = torch.as_tensor(labels)
        if labels.dtype != torch.int64 or labels.shape != (len(base),):
            raise ValueError(
                f"labels must be an int64 tensor of shape [{len(base)}], got {labels.dtype} {tuple(labels.shape)}"
            )
        self.base = base
        self.labels = labels

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i][0], self.labels[i]


class TransformedDataset(Dataset):
    """View of `base` where the inputs at `indices` (all if None) become `transform(x)`.

    Labels are unchanged. `transform` must not modify its argument in place (it receives the
    base data set's own tensor).
    """

    def __init__(self, base: Dataset, transform: Callable[[torch.Tensor], torch.Tensor], *, indices=None):
        check_dataset(base, "base")
        if not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.base = base
        self.transform = transform
        if indices is None:
            self._mask = None
        else:
            idx = torch.as_tensor(indices, dtype=torch.int64)
            if idx.numel() and (idx.min() < 0 or idx.max() >= len(base)):
                raise ValueError(f"indices must lie in [0, {len(base)}), got min {idx.min()} max {idx.max()}")
            self._mask = torch.zeros(len(base), dtype=torch.bool)
            self._mask[idx] = True

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        if self._mask is None or self._mask[i]:
            x = self.transform(x)
        return x, y


def labels_of(data: Dataset) -> torch.Tensor:
    """All labels of a map-style `(x, y)` Dataset as an int64 tensor `[len(data)]`.

    Reads `TensorDataset`, `Subset` and the views above without touching the inputs; any other
    Dataset is read item by item.
    """
    check_dataset(data, "data")
    if isinstance(data, TensorDataset) and len(data.tensors) >= 2:
        y = data.tensors[1]
        # Casting float regression targets to class ids would silently truncate them.
        if y.is_floating_point() or y.dim() != 1:
            raise ValueError(f"data must hold integer class labels of shape [N], got {y.dtype} {tuple(y.shape)}")
        return y.to(torch.int64)
    if isinstance(data, RelabeledDataset):
        return data.labels
    if isinstance(data, TransformedDataset):
        return labels_of(data.base)
    if isinstance(data, Subset):
        return labels_of(data.dataset)[torch.as_tensor(data.indices, dtype=torch.int64)]
    return torch.as_tensor([int(data[i][1]) for i in range(len(data))], dtype=torch.int64)


def inputs_of(data: Dataset) -> torch.Tensor:
    """All inputs of a map-style `(x, y)` Dataset stacked into one tensor `[len(data), ...]`."""
    check_dataset(data, "data")
    if isinstance(data, TensorDataset):
        return data.tensors[0]
    if isinstance(data, Subset) and isinstance(data.dataset, TensorDataset):
        return data.dataset.tensors[0][torch.as_tensor(data.indices, dtype=torch.int64)]
    return torch.stack([torch.as_tensor(data[i][0]) for i in range(len(data))])
