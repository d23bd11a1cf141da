"""Byte-reproducible outputs: the same config and seed give byte-identical model files and the same
results (issue 25, point 8: safetensors wrote its metadata keys in hash-map order)."""
import hashlib
import json
import re

import torch
from safetensors.torch import load

from unlearnx.experiments import run_experiment
from unlearnx.report.io import safetensors_bytes

# Wall-clock values legitimately differ between two identical runs: timestamps, timings and the
# run-time-efficiency metrics (RTE-s, RTE-ratio) computed from them.
NONDETERMINISTIC = {"seconds", "timings", "created", "finished_at"}


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _deterministic(value):
    if isinstance(value, str):  # the report's reading quotes a time ratio
        return re.sub(r" in \d+% of Retrain's time", "", value)
    if isinstance(value, dict):
        return {k: _deterministic(v) for k, v in value.items()
                if k not in NONDETERMINISTIC and not k.startswith("RTE")}
    if isinstance(value, list):
        return [_deterministic(v) for v in value]
    return value


def test_safetensors_bytes_fixed_metadata_order_and_readable():
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3, dtype=torch.float16),
               "i": torch.tensor([7], dtype=torch.int64)}
    meta = {f"key{k}": str(k) for k in range(12)}
    blobs = {safetensors_bytes(tensors, meta) for _ in range(8)}
    assert len(blobs) == 1  # the raw safetensors.save varies here: 12 keys in hash-map order
    data = blobs.pop()
    n = int.from_bytes(data[:8], "little")
    assert n % 8 == 0 and list(json.loads(data[8 : 8 + n])["__metadata__"]) == sorted(meta)
    back = load(data)
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)


def test_identical_runs_give_identical_model_bytes_and_results(tmp_path):
    cfg = {"name": "repro", "seeds": [0], "threads": 1, "data": {"name": "digits"},
           "model": {"name": "mlp", "kwargs": {"hidden": [16]}}, "scenario": {"kind": "random", "fraction": 0.1},
           "train": {"epochs": 1, "lr": 0.05, "batch_size": 128}, "methods": [{"name": "ft", "epochs": 1}]}
    res = [run_experiment(cfg, tmp_path / d, quiet=True) for d in ("a", "b")]
    models = {d: {p.relative_to(tmp_path / d).as_posix(): _sha(p) for p in sorted((tmp_path / d).rglob("*.safetensors"))}
              for d in ("a", "b")}
    assert len(models["a"]) >= 3, models  # original, retrain and the FT model
    assert models["a"] == models["b"]
    files = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("a", "b")]
    assert _deterministic(files[0]) == _deterministic(files[1])
    assert _deterministic(res[0]) == _deterministic(res[1])
