"""The experiment engine: run directory, resumable steps, seeds, timing, records, report.

    results = run_experiment(cfg, "runs/x")     # -> the content of runs/x/results.json

For every seed the engine asks the config's task (unlearnx.experiments.tasks) for the data and
scenario, the original model, the Retrain oracle and one model per configured method, then for
their evaluation; it adds the records every run has (name, created, command, versions, machine,
config, total time), writes results.json atomically and lets the task write its report.

Steps are resumable: a step's model is saved as <stem>.safetensors with a JSON record <stem>.json
holding the step's key (a hash of everything it depends on) and the weights' SHA-256; a rerun
whose key and hash match reloads it instead of computing (`StepStore`). Under torchrun every rank
runs the experiment (the loops are collective); rank 0 alone reads and writes the folder.

A run that fails before anything was saved leaves no run folder behind.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import sys
import time
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

__all__ = ["Run", "StepStore", "run_experiment", "step_key", "file_stem", "file_sha256", "file_identity", "versions", "machine",
           "resolve_device", "loss_curves", "aggregate_seeds"]


def step_key(*parts) -> str:
    """A short stable hash of `parts` (JSON with sorted keys): what a cached step depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_stem(label: str, fallback: str) -> str:
    """An ASCII file name for a step's label (ℓ1-sparse -> l1-sparse), so run folders travel across
    file systems; `fallback` when nothing of the label is left."""
    ascii_label = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_label).strip("_") or fallback


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_identity(path) -> dict | None:
    """User files enter step keys by content, so editing one invalidates the cached steps."""
    return None if path is None else {"path": str(path), "sha256": file_sha256(path)}


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when torch sees a GPU, else cpu; other names as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def versions() -> dict[str, str]:
    """Versions of unlearnx, python, torch, numpy, scikit-learn and the kernel backend in use."""
    import numpy
    import sklearn

    import unlearnx
    from unlearnx import _native

    info = _native.build_info()
    return {"unlearnx": unlearnx.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "scikit-learn": sklearn.__version__,
            "native": "yes" if info.get("native") else "no (reference kernels)"}


def machine() -> dict[str, object]:
    """CPU model, logical CPUs, torch threads, OS and GPU (if any) of this process."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "os": platform.platform(), "gpu": gpu}


def loss_curves(log) -> dict[str, list[float]]:
    """The loss curves in a training or unlearning log: every entry named like "*loss*" holding a
    list of numbers (per epoch or step), e.g. {"retain_loss": [...], "forget_loss": [...]}."""
    if not isinstance(log, Mapping):
        return {}
    out = {}
    for key, value in log.items():
        if isinstance(value, torch.Tensor):
            value = value.flatten().tolist()
        if ("loss" in str(key) and isinstance(value, (list, tuple)) and value
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            out[str(key)] = [float(v) for v in value]
    return out


def aggregate_seeds(per_seed_metrics: list[dict]) -> tuple[dict, dict]:
    """Mean and (with several seeds) standard deviation of every metric: ({label: {metric: mean}},
    {label: {metric: std}}) from [{label: {metric: value}}] per seed; None values are left out."""
    labels = list(per_seed_metrics[0])
    rows, std = {}, {}
    for label in labels:
        keys = list(dict.fromkeys(k for s in per_seed_metrics for k in s[label]))
        rows[label], std[label] = {}, {}
        for k in keys:
            vals = [s[label][k] for s in per_seed_metrics if s[label].get(k) is not None]
            if not vals:
                continue
            rows[label][k] = statistics.fmean(vals)
            if len(vals) > 1:
                std[label][k] = statistics.stdev(vals)
    return rows, (std if len(per_seed_metrics) > 1 else {})


class StepStore:
    """Cached steps of one run directory: <stem>.safetensors + <stem>.json per step.

    eval_only: never compute; a step without a matching saved model raises FileNotFoundError.
    Under torchrun rank 0 alone reads and writes the folder and broadcasts its decision and the
    step's record, so all ranks reuse or compute alike.
    """

    def __init__(self, out: Path, echo: Callable[[str], None], *, eval_only: bool = False):
        from unlearnx.distributed import current

        self.out, self.echo, self.eval_only = out, echo, eval_only
        self.ctx = current()
        self.cached: list[str] = []

    def run(self, label: str, key: str, stem: Path, fresh_model: Callable[[], torch.nn.Module],
            compute: Callable[[], tuple[torch.nn.Module, dict]]) -> tuple[torch.nn.Module, dict]:
        """Load step `label` (files `stem`.json / `stem`.safetensors) when its record matches `key`
        and its weights' sha256, else compute it (compute() -> (model, record)) and save weights
        then record (a record always points at complete weights). A result whose class differs from
        `fresh_model()`'s (a wrapper with no skeleton to load into, e.g. a prompt guard) is saved
        for inspection but recomputed on a rerun: it cannot be rebuilt from its weights alone."""
        from unlearnx.distributed import broadcast_parameters_
        from unlearnx.report import atomic_write_json, load_state_dict, read_json, save_state_dict

        stem = Path(stem)
        weights, rec_path = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
        decision: tuple[str, object] = ("compute", None)
        if self.ctx.is_main:
            rec = read_json(rec_path)
            if (rec is not None and rec.get("key") == key and rec.get("reloadable", True) and weights.is_file()
                    and file_sha256(weights) == rec.get("sha256")):
                decision = ("reuse", rec)
            elif self.eval_only:
                decision = ("missing", "its result is a wrapper model that is not stored" if rec is not None
                            and not rec.get("reloadable", True) else "it is missing or was made with another config")
        action, value = self.ctx.broadcast(decision)  # rank 0 decides; every rank reuses or computes alike
        if action == "reuse":
            self.echo(f"{label}: reusing {weights.relative_to(self.out)}")
            self.cached.append(label)
            return load_state_dict(fresh_model(), weights), value
        if action == "missing":
            raise FileNotFoundError(f"{label}: no saved model to evaluate at {weights} ({value}); "
                                    "run `unlearnx run` first")
        start = time.perf_counter()
        model, rec = compute()
        self.echo(f"{label}: done in {time.perf_counter() - start:.1f} s")
        # Every rank continues from rank 0's weights, the ones saved.
        broadcast_parameters_(model, self.ctx)
        fresh = fresh_model()
        # Reloadable: the saved weights fit the skeleton (same class and state-dict keys; a method
        # that adds modules, e.g. SPM's adapters, is recomputed on a rerun instead).
        rec = {"label": label, "key": key, **rec,
               "reloadable": type(model) is type(fresh) and model.state_dict().keys() == fresh.state_dict().keys()}
        if self.ctx.is_main:
            save_state_dict(model, weights, metadata={"unlearnx_step": label, "key": key})
            rec["sha256"] = file_sha256(weights)
            rec["model_file"] = str(weights.relative_to(self.out))
            rec["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            atomic_write_json(rec_path, rec)
        # The other ranks need the record too (its sha256 keys the methods' steps).
        return model, self.ctx.broadcast(rec)


class Run:
    """State of one experiment run that the task's steps read: the validated config, the run
    directory, the device, the step store, and how to talk (echo, progress)."""

    def __init__(self, cfg: dict, out: Path, *, quiet: bool, eval_only: bool, echo: Callable[[str], None],
                 progress: bool | None = None):
        from unlearnx.distributed import current, init_distributed

        self.cfg, self.out, self.eval_only = cfg, out, eval_only
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
            # Under torchrun the config's device picks the process group: NCCL for cuda, gloo for cpu.
            init_distributed(cfg.get("device", "auto"))
        self.ctx = current()
        # Rank 0 alone talks: progress bars and step messages once, not once per process.
        self.quiet = quiet or not self.ctx.is_main
        self.echo = (lambda msg: None) if self.quiet else echo
        # Bars on a terminal only (or when asked): in logs and CI each step is one line of `echo`.
        self._progress = (not self.quiet) and (_stderr_is_terminal() if progress is None else bool(progress))
        self.device = resolve_device(cfg.get("device", "cpu"))
        if self.device.type == "cuda" and self.ctx.device.type == "cuda":
            self.device = self.ctx.device  # this rank's GPU
        self.steps = StepStore(out, self.echo, eval_only=eval_only)

    @property
    def progress(self) -> bool:
        """Whether long loops draw progress bars (on a terminal, or when asked)."""
        return self._progress


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _has_files(folder: Path) -> bool:
    return any(p.is_file() for p in folder.rglob("*"))


def run_experiment(config: Mapping, out_dir=None, *, quiet: bool = False, eval_only: bool = False,
                   echo: Callable[[str], None] | None = None, progress: bool | None = None) -> dict:
    """Run (or, with `eval_only`, re-evaluate) the experiment of `config`; return the results dict.

    config: a raw or validated config (validated here either way). out_dir: run directory
    (default: the config's out_dir). quiet: no progress bars or step messages. eval_only: never
    train or unlearn; load the saved models of the run directory and evaluate them again (fails
    with FileNotFoundError naming the missing file). Steps already finished with the same inputs
    are reused. progress: progress bars (default: only when stderr is a terminal; otherwise one
    line per finished step). Writes results.json and the task's report into the run directory.
    """
    from unlearnx.experiments.config import ConfigError, validate_config
    from unlearnx.experiments.tasks import get_task
    from unlearnx.report import atomic_write_json

    cfg = validate_config(config)
    task = get_task(cfg["task"])
    out = Path(out_dir if out_dir is not None else cfg["out_dir"])
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir: {out} exists and is not a directory")
    created = not out.exists()
    run = Run(cfg, out, quiet=quiet, eval_only=eval_only, progress=progress,
              echo=echo or (lambda msg: print(msg, file=sys.stderr, flush=True)))
    if run.ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    try:
        mach = machine()  # records the thread count the run used
        if run.ctx.world_size > 1:
            mach["processes"] = run.ctx.world_size  # torchrun: the same results, computed by N ranks
        per_seed = []
        for seed in task.seeds(cfg):
            n_cached = len(run.steps.cached)
            setup = task.setup(run, seed)
            original, original_rec = task.original(run, setup)
            oracle, oracle_rec = task.oracle(run, setup)
            models = {task.oracle_label: oracle, task.original_label: original}
            records = {task.oracle_label: oracle_rec, task.original_label: original_rec}
            for entry in cfg["_methods"]:
                models[entry["label"]], records[entry["label"]] = task.unlearn(run, setup, entry, original,
                                                                               original_rec)
            per_seed.append(task.evaluate(run, setup, models, records, run.steps.cached[n_cached:]))
        task_results = task.results(run, per_seed)
    except BaseException:
        # A run that saved nothing leaves no folder behind (the finished steps of a longer run stay,
        # so that a rerun reuses them).
        if created and run.ctx.is_main and out.is_dir() and not _has_files(out):
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    public_cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    timings = dict(task_results.pop("timings", {}))
    timings["total_s"] = time.perf_counter() - start
    results = {
        "format": task_results.pop("format"),
        **({"task": cfg["task"]} if cfg["task"] != "classification" else {}),
        "name": cfg["name"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "eval" if eval_only else "run",
        **task_results,
        "timings": timings,
        "versions": versions(),
        "machine": mach,
        "config": public_cfg,
    }
    # Keys starting with "_" (e.g. images for the report) reach the report but not results.json.
    private = {k: results.pop(k) for k in [k for k in results if k.startswith("_")]}
    if run.ctx.is_main:
        atomic_write_json(out / "results.json", results)
        task.write_report({**results, **private}, out)
    run.ctx.barrier()  # no rank returns before the results and the report exist
    return results
