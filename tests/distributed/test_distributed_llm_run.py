"""`unlearnx run` with an LLM config (task: llm) under torchrun (CPU, gloo, 2 processes) against one process.

Every rank trains the target and the oracle whole (same seed; rank 0's weights are broadcast),
unlearns (GA, NPO: collective loops) and evaluates (collective scoring and generation); rank 0
alone writes. Tolerance: fp32 summation order (1e-5 relative on every metric).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "cli"))
try:
    from test_cli_run_llm import tiny
finally:
    sys.path.pop(0)


def _run(cfg_path: Path, nproc: int, command: str = "run") -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "python") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    args = ["unlearnx.cli", command, str(cfg_path), "--quiet"]
    cmd = [sys.executable, "-m", *args] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         "--max-restarts=0", "--module", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_llm_run_under_torchrun_matches_one_process_and_resumes(tmp_path):
    results, paths = {}, {}
    for name, nproc in (("one", 1), ("two", 2)):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(tiny(tmp_path / name)))
        proc = _run(paths[name], nproc)
        assert proc.returncode == 0, proc.stderr[-4000:]
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
    one, two = results["one"], results["two"]
    assert two["machine"]["processes"] == 2 and "processes" not in one["machine"]
    assert list(two["rows"]) == list(one["rows"]) == ["Retrain", "target", "ga", "NPO-b0.2"]
    for label, row in one["rows"].items():
        assert set(two["rows"][label]) == set(row), label
        for metric, value in row.items():
            if metric != "unlearn_s":
                assert two["rows"][label][metric] == pytest.approx(value, rel=1e-5, abs=1e-12), (label, metric)
    # The per-item forget truth ratios (the KS test's input) agree too, and the methods did move them.
    for label, r in one["tofu"].items():
        assert two["tofu"][label]["forget_truth_ratio_raw"] == pytest.approx(r["forget_truth_ratio_raw"], rel=1e-5)
    assert one["rows"]["ga"]["forget_prob"] < one["rows"]["target"]["forget_prob"]
    # Unlearning is collective (same loss curve); the same metric values were computed once each.
    for label in ("ga", "NPO-b0.2"):
        assert two["runs"][label]["loss_curve"] == pytest.approx(one["runs"][label]["loss_curve"], rel=1e-5)
    assert two["metric_cache"] == one["metric_cache"] and one["metric_cache"]["misses"] > 0
    # Training runs whole on every rank with the run's seed: the one-process target and oracle, bit for bit.
    for label in ("target", "Retrain"):
        a, b = (load_file(str(tmp_path / name / "models" / f"{label}.safetensors")) for name in ("one", "two"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), label
    # Rank 0 alone wrote: exactly the one-process files, no temp files from a second writer. Metric
    # cache entries are named by the evaluated weights, which differ in the last bits for the
    # unlearned models (fp32 summation order): compare how many there are, not their names.
    files = _files(tmp_path / "two")
    assert not [f for f in files if ".tmp" in f]

    def split(names):
        return [f for f in names if not f.startswith("cache/")], len([f for f in names if f.startswith("cache/")])

    assert split(files) == split(_files(tmp_path / "one"))
    # A rerun under torchrun reuses every step and every metric value, on every rank alike.
    proc = _run(paths["two"], 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    again = json.loads((tmp_path / "two" / "results.json").read_text())
    assert sorted(again["cached_steps"]) == sorted(one["rows"]) and not two["cached_steps"]
    assert again["metric_cache"]["misses"] == 0 and again["metric_cache"]["hits"] > 0
    assert again["rows"] == two["rows"]
    assert _files(tmp_path / "two") == files
    # `unlearnx eval` under torchrun re-evaluates the stored models on every rank alike.
    proc = _run(paths["two"], 2, "eval")
    assert proc.returncode == 0, proc.stderr[-4000:]
    ev = json.loads((tmp_path / "two" / "results.json").read_text())
    assert ev["command"] == "eval" and ev["rows"] == two["rows"]
