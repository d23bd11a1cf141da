"""Small model builders for tests, the demo and the benchmarks (randomly initialised, no weights
downloaded). Set `torch.manual_seed` before building for a reproducible initialisation.

    build_model("small_cnn", num_classes=10)     # registry by name
    available_models()                           # -> ["mlp", "regression_mlp", "resnet_tiny", "small_cnn"]
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["mlp", "small_cnn", "resnet_tiny", "regression_mlp", "build_model", "available_models"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def _register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _REGISTRY[fn.__name__] = fn
    return fn


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _hidden_sizes(hidden, name: str = "hidden") -> tuple[int, ...]:
    if isinstance(hidden, int) or not isinstance(hidden, Sequence):
        raise ValueError(f"{name} must be a sequence of positive integers, got {hidden!r}")
    return tuple(_positive_int(h, name) for h in hidden)


def _mlp_body(in_features: int, hidden: tuple[int, ...], out_features: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


@_register
def mlp(in_features: int, num_classes: int, *, hidden: Sequence[int] = (256, 128)) -> nn.Sequential:
    """Classifier MLP: Flatten -> [Linear -> ReLU] per `hidden` width -> Linear to logits.

    Input `[B, ...]` with prod(...) == in_features; output logits `[B, num_classes]`.
    """
    return _mlp_body(_positive_int(in_features, "in_features"), _hidden_sizes(hidden),
                     _positive_int(num_classes, "num_classes"))


@_register
def regression_mlp(in_features: int, *, hidden: Sequence[int] = (64, 64), out_features: int = 1) -> nn.Sequential:
    """Regression MLP: Flatten -> [Linear -> ReLU] per `hidden` width -> Linear.

    Input `[B, in_features]`; output `[B, out_features]` (matches `regression_dataset`'s `[N, 1]`).
    """
    return _mlp_body(_positive_int(in_features, "in_features"), _hidden_sizes(hidden),
                     _positive_int(out_features, "out_features"))


@_register
def small_cnn(num_classes: int = 10, *, in_channels: int = 1, image_size: int = 8, width: int = 32) -> nn.Sequential:
    """Small CNN: (conv3x3 -> BN -> ReLU) x2 -> 2x2 max-pool -> Linear.

    Input `[B, in_channels, image_size, image_size]`; output logits `[B, num_classes]`. On
    scikit-learn's digits (8x8) it reaches >= 95 % test accuracy after a few CPU seconds.
    """
    num_classes = _positive_int(num_classes, "num_classes")
    in_channels = _positive_int(in_channels, "in_channels")
    image_size = _positive_int(image_size, "image_size")
    width = _positive_int(width, "width")
    if image_size < 2:
        raise ValueError(f"image_size must be >= 2 for the 2x2 pooling, got {image_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(width * (image_size // 2) ** 2, num_classes),
    )


class _BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 conv-BN with an identity or 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@_register
def resnet_tiny(
    num_classes: int = 10, *, in_channels: int = 3, width: int = 16, blocks: Sequence[int] = (1, 1, 1)
) -> nn.Sequential:
    """CIFAR-style ResNet: conv3x3 stem, one stage per entry of `blocks` (widths width·2^s,
    stride 2 from the second stage), global average pooling, Linear.

    Input `[B, in_channels, H, W]` (any H, W >= 1); output logits `[B, num_classes]`.
    """
    num_classes = _positive_int(num_classes, "num_classes")
    in_channels = _positive_int(in_channels, "in_channels")
    width = _positive_int(width, "width")
    blocks = _hidden_sizes(blocks, "blocks")
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
    ]
    c_in = width
    for stage, n_blocks in enumerate(blocks):
        c_out = width * 2**stage
        for b in range(n_blocks):
            layers.append(_BasicBlock(c_in, c_out, stride=2 if stage > 0 and b == 0 else 1))
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


def available_models() -> list[str]:
    """Names accepted by `build_model`, sorted."""
    return sorted(_REGISTRY)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model `name` with the builder's keyword arguments."""
    if name not in _REGISTRY:
        raise ValueError(f"name={name!r} is not a registered model; available: {available_models()}")
    return _REGISTRY[name](**kwargs)
