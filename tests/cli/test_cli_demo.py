"""`unlearnx demo` end to end, and `unlearnx bench` dispatch."""
import json
import time

import pytest

import unlearnx as ux
from unlearnx import cli
from unlearnx.experiments import get_task
from unlearnx.experiments.classification import DEMO_METHODS


@pytest.mark.slow
def test_demo_classification_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    start = time.perf_counter()
    assert cli.main(["demo", "--task", "classification", "--out", str(out), "--quiet"]) == 0
    wall = time.perf_counter() - start
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    ran = [m for m in DEMO_METHODS if m in ux.methods.available()]
    labels = [results["hparams"][k]["method"] for k in results["hparams"]]
    assert labels == ran and list(results["rows"])[:2] == ["Retrain", "Original"]
    for m in DEMO_METHODS:
        if m not in ran:
            assert f"note: {m} skipped" in printed
    md = (out / "report.md").read_text()
    for label in results["rows"]:
        assert f"| {label} |" in printed and f"| {label} |" in md
    assert (out / "report.html").exists() and (out / "seed-0" / "retrain.safetensors").exists()
    # The oracle is competent on digits, and retraining is timed.
    assert results["rows"]["Retrain"]["TA"] > 90 and results["rows"]["Retrain"]["RTE-s"] > 0
    # A second run reuses every finished step.
    assert cli.main(["demo", "--out", str(out), "--quiet"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert sorted(again["cached_steps"]["0"]) == sorted(["Original", "Retrain", *results["hparams"]])
    print(f"demo wall time {wall:.1f} s")


def test_bench_unknown_family_lists_the_available_ones(capsys):
    assert cli.main(["bench", "--family", "no_such_family"]) == 2
    err = capsys.readouterr().err
    assert "no_such_family" in err and "ssd" in err


@pytest.mark.slow
def test_bench_runs_a_quick_benchmark_and_writes_its_tables(tmp_path, capsys):
    out = tmp_path / "bench.md"
    assert cli.main(["bench", "--family", "ssd", "--quick", "--no-save", "--no-compile", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "-m unlearnx.bench.ssd --quick --no-save --no-compile" in printed and "| unlearnx" in printed.replace("  ", " ")
    assert "## ssd" in out.read_text()
