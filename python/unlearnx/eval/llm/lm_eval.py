"""EleutherAI's lm-evaluation-harness on an in-memory model (optional extra `unlearnx[lmeval]`).

`run_lm_eval` wraps the model object the caller already holds (no reload, no copy) in lm-eval's
`HFLM` and calls `lm_eval.simple_evaluate` in the same process, so the unlearned model is scored
by the harness's own task definitions (MMLU, WMDP, TruthfulQA, ...). Tasks are lm-eval task names
or task config dicts (a custom task over local files: `dataset_path: "json"` with
`dataset_kwargs: {data_files: {...}}`). Nothing is downloaded by unlearnx; lm-eval's own tasks
read their data sets through `datasets` (from the local cache when the machine is offline).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from unlearnx._modes import training_mode

__all__ = ["lm_eval_available", "run_lm_eval"]


def lm_eval_available() -> bool:
    """True when the `lm_eval` package (lm-evaluation-harness >= 0.4) can be imported."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def run_lm_eval(model: torch.nn.Module, tokenizer, tasks: Sequence[str | Mapping], *, limit: int | float | None = None,
                batch_size: int = 8, num_fewshot: int | None = None, seed: int = 0) -> dict[str, dict[str, float]]:
    """Scores of `model` on lm-eval `tasks`: {task: {metric: value}} (e.g. {"wmdp_bio": {"acc,none": 0.31,
    "acc_stderr,none": 0.01}}), numbers only, as lm-eval's `results` reports them.

    Args:
        model: a transformers causal LM (or a peft model around one), used as is.
        tokenizer: its tokenizer.
        tasks: lm-eval task names and/or task config dicts.
        limit: at most this many documents per task (an int), or a fraction of each (a float < 1).
        batch_size: lm-eval's batch size.
        num_fewshot: few-shot examples (None: each task's default).
    """
    if not lm_eval_available():
        raise ImportError("run_lm_eval: needs lm-evaluation-harness; install the extra: pip install 'unlearnx[lmeval]'")
    if isinstance(tasks, (str, Mapping)) or not isinstance(tasks, Sequence) or not tasks:
        raise ValueError("tasks: expected a non-empty list of lm-eval task names or task config dicts")
    for i, t in enumerate(tasks):
        if not isinstance(t, (str, Mapping)):
            raise TypeError(f"tasks[{i}]: expected a task name or a config dict, got {type(t).__name__}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise ValueError(f"limit: must be None or a number > 0, got {limit!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be an int >= 1, got {batch_size!r}")
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    with training_mode(model):
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, num_fewshot=num_fewshot,
                                      random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                      fewshot_random_seed=seed, log_samples=False)
    if out is None:  # simple_evaluate returns None on non-zero ranks
        return {}
    return {task: {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for task, metrics in out["results"].items()}
