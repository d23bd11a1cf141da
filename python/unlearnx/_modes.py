"""`training_mode(module, train)`: set a module's train/eval mode for a block, restore it after.

Statistics, evaluation and generation run the model in eval mode (no dropout, frozen norms) but
must hand the caller's model back in the mode it came in, also when the block raises.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["training_mode"]


@contextmanager
def training_mode(module: nn.Module, train: bool = False) -> Iterator[nn.Module]:
    """`with training_mode(model):` runs the block with `model.train(train)` (default: eval mode)
    and restores the previous mode on exit."""
    was_training = module.training
    module.train(train)
    try:
        yield module
    finally:
        module.train(was_training)
