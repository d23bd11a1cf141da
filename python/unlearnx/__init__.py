"""unlearnx: machine unlearning for PyTorch.

Fast native ops (`torch.ops.unlearnx.*`), the unlearning methods of the literature composed from
them, and evaluation against a Retrain oracle.

    import unlearnx as ux
    res = ux.unlearn(model, method="salun", forget=forget_loader, retain=retain_loader)
    ux.evaluate(res.model, suite="classification", forget=..., retain=..., test=..., reference=retrained)
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from unlearnx import _native  # noqa: E402  (loads the native library, registers the ops)
from unlearnx import ops  # noqa: E402

_LAZY_SUBMODULES = ("stats", "methods", "eval", "data", "models", "exact", "integrations", "report", "guards")
_LAZY_FUNCTIONS = {"unlearn": "unlearnx.methods", "evaluate": "unlearnx.eval"}


def __getattr__(name: str):
    # Subpackages load on first use so `import unlearnx` stays fast and does not pull in
    # scikit-learn, matplotlib or transformers unless they are needed.
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"unlearnx.{name}")
    if name in _LAZY_FUNCTIONS:
        return getattr(importlib.import_module(_LAZY_FUNCTIONS[name]), name)
    raise AttributeError(f"module 'unlearnx' has no attribute {name!r}")


__all__ = ["__version__", "ops", "unlearn", "evaluate", *_LAZY_SUBMODULES]
