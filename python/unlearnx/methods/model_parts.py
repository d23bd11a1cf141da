"""Finding the parts of a classifier that some methods operate on.

Protocol (documented for users):
- A model with attributes `.features` and `.classifier` (both modules) computes
  `logits = model.classifier(model.features(x))`; the extractor is `.features`, the head `.classifier`.
- Otherwise an `nn.Sequential` is split at index `split`: extractor = model[:split],
  head = model[split:]; by default `split` is the index of the last top-level `nn.Linear`
  (every classifier of unlearnx.models: the extractor ends with the flattened features).
The output layer (Boundary expand's widened layer) is the last `nn.Linear` registered in
`.classifier` (or in the whole model when it has no `.classifier`).
"""
from __future__ import annotations

from torch import nn

__all__ = ["split_model", "output_linear"]


def split_model(model: nn.Module, split: int | None = None) -> tuple[nn.Module, nn.Module]:
    """(extractor, head) with head(extractor(x)) == model(x); see the module docstring."""
    if split is None and isinstance(getattr(model, "features", None), nn.Module) \
            and isinstance(getattr(model, "classifier", None), nn.Module):
        return model.features, model.classifier
    if not isinstance(model, nn.Sequential):
        raise ValueError("the model must have .features and .classifier modules, or be an nn.Sequential "
                         "(split at `split`, default: its last nn.Linear)")
    if split is None:
        linears = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("the nn.Sequential has no top-level nn.Linear to split at; pass split")
        split = linears[-1]
    if isinstance(split, bool) or not isinstance(split, int) or not 0 < split < len(model):
        raise ValueError(f"split must be an integer in [1, {len(model) - 1}], got {split!r}")
    return model[:split], model[split:]


def output_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent module, attribute name, layer) of the output layer: the last nn.Linear registered in
    `model.classifier` when the model has one, else in the whole model."""
    head = model.classifier if isinstance(getattr(model, "classifier", None), nn.Module) else model
    found = None
    for parent in head.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found = (parent, name, child)
    if isinstance(head, nn.Linear):
        found = (model, "classifier", head)
    if found is None:
        raise ValueError("the model has no nn.Linear output layer")
    return found
