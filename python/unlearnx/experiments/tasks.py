"""The task interface of the experiment engine, and the task registry.

A task is one kind of experiment (classifiers on image data, causal LMs on QA benchmarks,
diffusion models on image generation). It declares its config schema and implements the steps
the engine (unlearnx.experiments.run) drives, in this order, for every seed:

    setup = task.setup(run, seed)                       # data and forget/retain scenario
    original, rec = task.original(run, setup)           # the model before unlearning (trained or loaded)
    oracle, rec = task.oracle(run, setup)               # the Retrain oracle (or a given retain model)
    model, rec = task.unlearn(run, setup, entry, original, original_record)   # per configured method
    seed_result = task.evaluate(run, setup, models, records)

then `task.results(run, per_seed)` gives its part of results.json, `task.write_report(results,
out)` writes report.md / report.html (the task names its sections) and `task.summary(results)`
is what the CLI prints. Steps that produce a model go through `run.steps` (cached, resumable).

Registering a task:

    @register_task
    class MyTask(ExperimentTask):
        name = "mytask"
        ...

and importing its module in unlearnx/experiments/__init__.py (docs/architecture.md has the
checklist).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from unlearnx.experiments.run import Run

__all__ = ["ExperimentTask", "register_task", "available_tasks", "get_task"]

_TASKS: dict[str, ExperimentTask] = {}


class ExperimentTask:
    """Base class of an experiment task; subclasses fill in the class attributes and the steps."""

    #: the value of a config's `task` key and of `unlearnx demo --task`
    name: ClassVar[str] = ""
    #: the method registry this task's methods come from (unlearnx.methods tasks)
    method_task: ClassVar[str] = "classifier"
    #: one line for `unlearnx demo --help`
    demo_help: ClassVar[str] = ""
    #: the table labels of the model before unlearning and of the oracle
    original_label: ClassVar[str] = "Original"
    oracle_label: ClassVar[str] = "Retrain"

    # ---- configuration
    def schema(self) -> dict:
        """{key: Field or nested schema} of this task's configs (unlearnx.experiments.config)."""
        raise NotImplementedError

    def special_sections(self) -> Mapping:
        """{key: validator(value) -> dict} for sections whose keys depend on another key."""
        return {}

    def validate(self, cfg: dict) -> dict:
        """Task checks after the schema (ranges, files, methods); sets "_methods" and "_skipped"."""
        raise NotImplementedError

    def demo_config(self, *, methods: Sequence[str] | None = None, quick: bool = False, out_dir: str | None = None,
                    device: str = "cpu", options: Mapping[str, Any] | None = None) -> dict:
        """The config of `unlearnx demo --task <name>`. options: the task's own demo flags."""
        raise NotImplementedError

    def demo_options(self) -> dict[str, str]:
        """{flag name: help} of boolean demo flags this task understands (e.g. {"random": ...})."""
        return {}

    def seeds(self, cfg: dict) -> list[int]:
        return list(cfg["seeds"])

    # ---- one seed
    def setup(self, run: Run, seed: int):
        """Build the data and the forget/retain scenario of `seed`; returns the task's own object."""
        raise NotImplementedError

    def original(self, run: Run, setup) -> tuple[nn.Module, dict]:
        raise NotImplementedError

    def oracle(self, run: Run, setup) -> tuple[nn.Module, dict]:
        raise NotImplementedError

    def unlearn(self, run: Run, setup, entry: dict, original: nn.Module, original_record: dict) -> tuple[nn.Module, dict]:
        """Run the config entry {label, method, hparams} on a copy of `original`."""
        raise NotImplementedError

    def evaluate(self, run: Run, setup, models: dict, records: dict, cached: list[str]) -> dict:
        """Evaluate every model (labels -> models, oracle first); returns this seed's result."""
        raise NotImplementedError

    # ---- the whole run
    def results(self, run: Run, per_seed: list[dict]) -> dict:
        """This task's keys of results.json (the engine adds name, created, command, versions,
        machine, config, timings.total_s)."""
        raise NotImplementedError

    def write_report(self, results: dict, out) -> None:
        raise NotImplementedError

    def summary(self, results: dict) -> str:
        """What the CLI prints after a run: the main table and a line or two."""
        raise NotImplementedError


def register_task(cls: type[ExperimentTask]) -> type[ExperimentTask]:
    """Class decorator: register an ExperimentTask subclass under its `name`."""
    if not (isinstance(cls, type) and issubclass(cls, ExperimentTask)):
        raise TypeError(f"@register_task must decorate an ExperimentTask subclass, got {cls!r}")
    if not cls.name or cls.name != cls.name.lower():
        raise ValueError(f"{cls.__qualname__}.name must be a non-empty lower-case string, got {cls.name!r}")
    if cls.name in _TASKS and type(_TASKS[cls.name]) is not cls:
        raise ValueError(f"task {cls.name!r} is already registered by {type(_TASKS[cls.name]).__qualname__}")
    _TASKS[cls.name] = cls()
    return cls


def _load_builtin_tasks() -> None:
    import unlearnx.experiments  # noqa: F401  (imports and so registers the built-in tasks)


def available_tasks() -> list[str]:
    """Names of the registered experiment tasks, in registration order."""
    _load_builtin_tasks()
    return list(_TASKS)


def get_task(name: str) -> ExperimentTask:
    """The registered task `name` (ValueError naming the choices otherwise)."""
    _load_builtin_tasks()
    if name not in _TASKS:
        raise ValueError(f"task: unknown task {name!r}; expected one of {list(_TASKS)}")
    return _TASKS[name]
