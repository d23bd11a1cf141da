"""`unlearnx demo --task llm`: argument errors, and the quick run end to end with its resume."""
import json
import time

import pytest

import unlearnx as ux
from unlearnx import cli
from unlearnx.experiments.llm import LLM_DEMO_METHODS, run_llm_demo


def test_unknown_method_exits_2_naming_it(tmp_path, capsys):
    out = tmp_path / "llm"
    assert cli.main(["demo", "--task", "llm", "--quick", "--methods", "npo", "no_such_method", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no_such_method" in err and "methods" in err and "npo" in err  # names it and lists the available ones
    assert not (out / "results.json").exists()  # failed before any work


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(ValueError, match="methods"):
        run_llm_demo(tmp_path, methods="npo")  # a string, not a list
    with pytest.raises(ValueError, match="seed"):
        run_llm_demo(tmp_path, seed=1.5)
    with pytest.raises(ValueError, match="duplicate"):
        run_llm_demo(tmp_path, methods=["npo", "npo"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="out_dir"):
        run_llm_demo(tmp_path / "file", methods=["npo"])
    assert cli.main(["demo", "--task", "classification", "--quick"]) == 2
    assert "--quick" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_llm_quick_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "demo-llm"
    start = time.perf_counter()
    assert cli.main(["demo", "--task", "llm", "--quick", "--out", str(out), "--quiet"]) == 0
    wall = time.perf_counter() - start
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    ran = [m for m in LLM_DEMO_METHODS if m in ux.methods.available(task="causal_lm")]
    assert results["methods"] == ran and {"ga", "graddiff", "npo", "simnpo"} <= set(ran)
    assert list(results["rows"]) == ["Retrain", "target", *ran]
    for m in LLM_DEMO_METHODS:
        if m not in ran:
            assert f"note: {m} skipped" in printed
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for label in results["rows"]:
        assert f"| {label} |" in printed and f"| {label} |" in md and f"<td>{label}</td>" in page
        assert (out / "models" / f"{label}.safetensors").is_file()
    assert (out / "plots" / "tradeoff.png").is_file() and (out / "plots" / "loss_curves.png").is_file()
    rows = results["rows"]
    # KS test of the oracle's truth ratios against themselves: identical samples, p = 1.
    assert rows["Retrain"]["forget_quality"] == 1.0
    # The target knows the forget authors much better than the oracle, so the KS test separates them,
    # and gradient ascent drives the forget-set probability below the target's.
    assert rows["target"]["forget_quality"] < 0.05 and rows["target"]["MU/target"] == 1.0
    assert rows["target"]["forget_prob"] > 2 * rows["Retrain"]["forget_prob"]
    assert rows["ga"]["forget_prob"] < rows["target"]["forget_prob"]
    assert results["cached_steps"] == [] and results["metric_cache"]["misses"] > 0
    # A second run with the same config reuses every model and every metric value.
    assert cli.main(["demo", "--task", "llm", "--quick", "--out", str(out), "--quiet"]) == 0
    assert "reused finished steps: target, Retrain" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    assert sorted(again["cached_steps"]) == sorted(["target", "Retrain", *ran])
    assert again["metric_cache"]["misses"] == 0 and again["rows"] == rows
    # Another method set reuses the target/oracle but runs the new method.
    assert cli.main(["demo", "--task", "llm", "--quick", "--methods", "ga", "--out", str(out), "--quiet"]) == 0
    third = json.loads((out / "results.json").read_text())
    assert "target" in third["cached_steps"] and list(third["rows"]) == ["Retrain", "target", "ga"]
    print(f"llm demo --quick wall time {wall:.1f} s")


def test_llm_demo_uses_the_tuned_presets():
    from unlearnx.experiments.config import validate_config
    from unlearnx.experiments.llm import BASE_HPARAMS, METHOD_HPARAMS, llm_demo_config
    from unlearnx.methods.presets import LLM_DEMO_TUNED, LLM_QUICK_TUNED

    assert {"ga", "graddiff", "npo", "simnpo"} <= set(LLM_QUICK_TUNED) & set(LLM_DEMO_TUNED)
    # The default panel (quick) and explicitly named methods carry the tuned values.
    quick = validate_config(llm_demo_config(quick=True))["_methods"]
    named = validate_config(llm_demo_config(quick=True, methods=sorted(LLM_QUICK_TUNED)))["_methods"]
    assert [e["method"] for e in named] == sorted(LLM_QUICK_TUNED)
    for e in quick + named:
        preset = LLM_QUICK_TUNED.get(e["method"])
        if preset is not None:
            assert {k: e["hparams"][k] for k in preset} == preset, e["method"]
    assert any(e["method"] in LLM_QUICK_TUNED for e in quick)
    # The full size has its own tuned values (LLM_DEMO_TUNED); methods tuned only at the quick size
    # keep the tiny-model values there.
    full = validate_config(llm_demo_config(methods=sorted(LLM_QUICK_TUNED)))["_methods"]
    for e in full:
        expected = {**BASE_HPARAMS, **METHOD_HPARAMS.get(e["method"], {}), **LLM_DEMO_TUNED.get(e["method"], {})}
        assert all(e["hparams"][k] == v for k, v in expected.items() if k in e["hparams"]), e["method"]
    assert any(e["method"] in LLM_DEMO_TUNED for e in validate_config(llm_demo_config())["_methods"])
    assert LLM_DEMO_TUNED["npo"] != LLM_QUICK_TUNED["npo"]
    # The CLI's demo path builds the same config.
    from unlearnx.experiments import get_task

    assert get_task("llm").demo_config(quick=True) == llm_demo_config(quick=True)
