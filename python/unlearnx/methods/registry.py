"""Method registry and the base class every unlearning method derives from.

    @register_method("ft")
    class FT(UnlearningMethod):
        defaults = {"epochs": 10, "lr": 0.01, ...}
        paper = "Warnecke et al. ..."
        def run(self, model, *, forget, retain, seed, progress): ...

`available()` lists the names, `get(name)` returns the class. `unlearnx.unlearn` (methods/__init__.py)
builds the method from its keyword hyper-parameters and times `run`.

Methods are keyed by (name, task), task in TASKS: "classifier" (classifiers and regressors, the
default), "causal_lm" (language models, unlearnx.methods.llm) or "diffusion" (diffusion models,
unlearnx.methods.diffusion, on an unlearnx.diffusion.DiffusionModel). One name may exist for both
tasks ("ga"); `get(name)` without a task returns the only registration of that name, or the
classifier one when both exist; `unlearnx.unlearn` picks the task from the model.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

__all__ = ["UnlearnResult", "UnlearningMethod", "register_method", "available", "get", "TASKS"]

TASKS = ("classifier", "causal_lm", "diffusion", "gan")
_REGISTRY: dict[tuple[str, str], type[UnlearningMethod]] = {}

# Hyper-parameters with these names must be strictly positive wherever a method declares them.
_POSITIVE = frozenset({"epochs", "lr", "batch_size", "forget_batch_size", "vae_epochs", "vae_lr", "lr_align",
                       "blind_epochs", "blind_lr", "temperature", "latent_dim", "vae_hidden"})


@dataclass
class UnlearnResult:
    """What `unlearnx.unlearn` returns.

    model: the unlearned model (the caller's object when inplace=True, else a deep copy).
    seconds: wall time of the unlearning procedure itself (RTE), excluding the deep copy.
    log: per-epoch losses and method-specific facts (e.g. {"retain_loss": [...]}).
    method, hparams: the registered name and the full hyper-parameter dict that was used.
    """

    model: nn.Module
    seconds: float
    log: dict = field(default_factory=dict)
    method: str = ""
    hparams: dict = field(default_factory=dict)


class UnlearningMethod:
    """Base class: holds validated hyper-parameters; subclasses implement `run`.

    Class attributes of a subclass:
    defaults: every hyper-parameter with its default (paper value, or a documented scaling).
    paper: the citation of the method's paper.
    requires: which of "forget", "retain" the method reads (the others may be None).
    """

    name: ClassVar[str] = ""
    task: ClassVar[str] = "classifier"
    defaults: ClassVar[Mapping[str, Any]] = {}
    paper: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ("forget", "retain")

    def __init__(self, **hparams):
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown hyper-parameter(s) {unknown}; "
                            f"valid ones: {sorted(self.defaults)}")
        self.hparams = {**self.defaults, **hparams}
        for key, value in self.hparams.items():
            _check_hparam(key, value, self.defaults[key])
        self.validate()

    @classmethod
    def defaults_for(cls, hparams: Mapping[str, Any]) -> Mapping[str, Any]:
        """The hyper-parameters (with defaults) accepted together with `hparams`: `defaults`, except
        for methods whose knobs depend on a choice (WAGLE takes its `base` method's too). Config
        validation and the tuner ask this rather than `defaults`."""
        return cls.defaults

    def validate(self) -> None:
        """Method-specific checks beyond the type/sign checks done for every hyper-parameter."""

    def run(self, model: nn.Module, *, forget, retain, seed: int, progress: bool) -> dict:
        """Unlearn in place. forget/retain: DataLoaders (or None when not in `requires`). Returns the log."""
        raise NotImplementedError


def _check_hparam(key: str, value, default) -> None:
    # The default's type says what a value must be; None defaults accept anything the method checks.
    if default is None:
        return
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be a bool, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be an integer >= 0, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
    elif isinstance(default, str) and not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    if key in _POSITIVE and isinstance(value, (int, float)) and value <= 0:
        raise ValueError(f"{key} must be > 0, got {value!r}")


def _check_task(task) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def register_method(name: str, *, task: str = "classifier"):
    """Class decorator: register an `UnlearningMethod` subclass under (`name`, `task`).

    name: lower case, unique within the task; task: "classifier" (default), "causal_lm" or "diffusion".
    """
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"name must be a non-empty lower-case string, got {name!r}")
    _check_task(task)

    def decorate(cls):
        if not (isinstance(cls, type) and issubclass(cls, UnlearningMethod)):
            raise TypeError(f"@register_method({name!r}) must decorate an UnlearningMethod subclass, got {cls!r}")
        key = (name, task)
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"method name {name!r} is already registered by {_REGISTRY[key].__qualname__}")
        if not cls.paper:
            raise ValueError(f"{cls.__qualname__} must cite its paper in `paper`")
        cls.name = name
        cls.task = task
        _REGISTRY[key] = cls
        return cls

    return decorate


def available(task: str | None = None) -> list[str]:
    """Registered method names, sorted: of one task, or of every task (task=None)."""
    if task is not None:
        _check_task(task)
    return sorted({n for n, t in _REGISTRY if task is None or t == task})


def get(name: str, task: str | None = None) -> type[UnlearningMethod]:
    """The method class registered under `name` (case-insensitive) for `task`.

    task=None: the only task that has `name`, or "classifier" when several do.
    """
    if not isinstance(name, str):
        raise TypeError(f"method must be a method name (str), got {type(name).__name__}")
    key = name.lower()
    if task is None:
        tasks = [t for t in TASKS if (key, t) in _REGISTRY]
        task = tasks[0] if tasks else "classifier"
    else:
        _check_task(task)
    if (key, task) not in _REGISTRY:
        names = available(task)
        close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"method={name!r} is not a registered method for task={task!r}{hint} available: {names}")
    return _REGISTRY[(key, task)]
