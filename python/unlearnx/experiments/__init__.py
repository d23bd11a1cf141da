"""unlearnx.experiments: the config-driven experiment engine and one module per task.

    from unlearnx.experiments import load_config, run_experiment
    cfg = load_config("configs/methods/ssd.yaml", overrides=["seeds=[0,1]"])
    results = run_experiment(cfg, "runs/ssd")       # -> the content of runs/ssd/results.json

- config.py: the schema language (Field), validation with suggestions, overrides, loading.
- run.py: the engine: run directory, resumable steps (StepStore), seeds, timing, records, report.
- tasks.py: the task interface (ExperimentTask) and registry (register_task, available_tasks, get_task).
- classification.py, llm.py, diffusion.py: the tasks (`task:` in a config, `unlearnx demo --task`).

docs/architecture.md has the layers and the checklist for adding a task.
"""
from unlearnx.experiments.config import ConfigError, Field, apply_overrides, load_config, validate_config
from unlearnx.experiments.run import StepStore, machine, run_experiment, versions
from unlearnx.experiments.tasks import ExperimentTask, available_tasks, get_task, register_task
from unlearnx.experiments import classification  # noqa: F401,E402  (registers the task)
from unlearnx.experiments import llm  # noqa: F401,E402  (registers the task)
from unlearnx.experiments import diffusion  # noqa: F401,E402  (registers the task)

__all__ = ["ConfigError", "Field", "apply_overrides", "load_config", "validate_config", "run_experiment",
           "StepStore", "machine", "versions", "ExperimentTask", "available_tasks", "get_task", "register_task"]
