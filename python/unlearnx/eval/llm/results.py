"""Evaluation results (aggregate + per-item values, JSON) and the metric cache.

`EvalResult` is a read-only mapping over its aggregate metrics, so it drops into
`unlearnx.eval.results_table`; its `per_item` values are what the KS test (forget quality) and
paired comparisons between models need.

`MetricCache` stores the output of one metric computation under
sha256(model weights, data, metric config): evaluating the same model on the same data with the
same settings again reads the stored value instead of recomputing it. With a directory, entries
are JSON files written atomically (temp + fsync + rename), so they survive the process. Under
torchrun (unlearnx.distributed) rank 0 alone reads and writes the directory and broadcasts each
stored value, so all ranks make the same hit/miss decisions.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unlearnx.eval.tables import results_table

from unlearnx.report.io import atomic_write_text

__all__ = ["EvalResult", "MetricCache", "summary_table", "fingerprint_model", "fingerprint_data",
           "fingerprint_tokenizer"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__type__": type(value).__name__, **_jsonable(dataclasses.asdict(value))}
    return value


@dataclasses.dataclass(frozen=True)
class EvalResult(Mapping):
    """One model's evaluation: `aggregate` {metric: float}, `per_item` {metric: [values]}, and the
    `config` it was computed with. Indexing / iterating reads `aggregate`."""

    suite: str
    aggregate: dict[str, float]
    per_item: dict[str, list] = dataclasses.field(default_factory=dict)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __getitem__(self, key: str) -> float:
        return self.aggregate[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.aggregate)

    def __len__(self) -> int:
        return len(self.aggregate)

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "aggregate": _jsonable(self.aggregate), "per_item": _jsonable(self.per_item),
                "config": _jsonable(self.config)}

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the result as JSON, atomically (a crash never leaves a half-written file)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=True))
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> EvalResult:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path: no such result file: {path}")
        d = json.loads(path.read_text(encoding="utf-8"))
        missing = {"suite", "aggregate"} - d.keys()
        if missing:
            raise ValueError(f"path: {path} is not an EvalResult JSON (missing {sorted(missing)})")
        return cls(suite=d["suite"], aggregate=d["aggregate"], per_item=d.get("per_item", {}),
                   config=d.get("config", {}))


def summary_table(results: Mapping[str, Mapping[str, float]], *, columns: Sequence[str] | None = None) -> str:
    """Markdown table, one row per model (EvalResult or metrics dict); see
    `unlearnx.eval.tables.results_table` (a "Retrain" row is listed first)."""
    return results_table(results, columns=columns)


def fingerprint_model(model: torch.nn.Module) -> str:
    """sha256 over every state-dict entry's name, dtype, shape and bytes (buffers included)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d: view needs a dim
    return h.hexdigest()


def fingerprint_data(data: Any) -> str:
    """sha256 of a canonical JSON rendering of `data` (QAItems, strings, lists, dicts, numbers)."""
    return hashlib.sha256(json.dumps(_jsonable(data), sort_keys=True, allow_nan=True).encode()).hexdigest()


def fingerprint_tokenizer(tokenizer) -> str:
    """sha256 of the tokenizer's serialized vocabulary, merges and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


class MetricCache:
    """A store of metric outputs keyed by sha256(model weights + data + metric config).

    Args:
        directory: where entries are kept as <key>.json; None keeps them in memory only.
    Attributes:
        hits, misses: how many `get_or_compute` calls reused / computed a value.
    """

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = None if directory is None else Path(directory)
        self._memory: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(*, model: str | torch.nn.Module, data: Any, config: Mapping[str, Any]) -> str:
        """The cache key: `model` is a module (fingerprinted) or a precomputed fingerprint."""
        if not isinstance(config, Mapping):
            raise TypeError(f"config: expected a mapping, got {type(config).__name__}")
        model_fp = model if isinstance(model, str) else fingerprint_model(model)
        return fingerprint_data({"model": model_fp, "data": fingerprint_data(data), "config": dict(config)})

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
        """The stored value of `key`, or `compute()` (JSON-serializable) stored under it."""
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        from unlearnx.distributed import current

        ctx = current()
        path = None if self.directory is None else self.directory / f"{key}.json"
        stored = None
        if path is not None and ctx.is_main and path.is_file():
            stored = {"value": json.loads(path.read_text(encoding="utf-8"))}
        if path is not None:
            # Under torchrun rank 0 alone reads the directory and sends what it found: every rank
            # takes the same hit/miss branch, so the collectives inside compute() stay matched.
            stored = ctx.broadcast(stored)
        if stored is not None:
            self._memory[key] = stored["value"]
            self.hits += 1
            return stored["value"]
        self.misses += 1
        # Round-trip through JSON so a computed value and a reloaded one are identical objects.
        value = json.loads(json.dumps(_jsonable(compute()), allow_nan=True))
        self._memory[key] = value
        if path is not None and ctx.is_main:  # one writer per directory
            atomic_write_text(path, json.dumps(value, allow_nan=True))
        return value

