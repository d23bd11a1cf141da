"""`unlearnx run` / `eval` end to end on a tiny digits experiment: outputs, determinism, resume."""
import json
import shutil

import pytest
import torch
import yaml

from unlearnx import cli
from unlearnx.experiments import run_experiment
from unlearnx.models import small_cnn
from unlearnx.report import load_state_dict


def tiny_config(out):
    return {"name": "tiny", "out_dir": str(out), "seeds": [0], "threads": 1, "data": {"name": "digits"},
            "model": {"name": "small_cnn", "kwargs": {"width": 8}}, "scenario": {"kind": "random", "fraction": 0.1},
            "train": {"epochs": 3, "lr": 0.05, "batch_size": 128},
            "methods": [{"name": "ft", "epochs": 1}, {"name": "ga", "epochs": 1, "lr": 0.05}, {"name": "rl", "epochs": 1}]}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    cfg_path = root / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(root / "out")))
    assert cli.main(["run", str(cfg_path), "--quiet"]) == 0
    return cfg_path, root / "out"


def _mtimes(out):
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("seed-*/**/*.safetensors")}


def test_outputs_hold_every_method(finished_run):
    _, out = finished_run
    results = json.loads((out / "results.json").read_text())
    labels = ["Retrain", "Original", "FT", "GA", "RL"]
    assert list(results["rows"]) == labels
    for label in labels:
        row = results["rows"][label]
        for metric in ("UA", "RA", "TA", "MIA-Efficacy", "Avg.Gap"):
            assert 0.0 <= row[metric] <= 100.0
    assert results["rows"]["Retrain"]["Avg.Gap"] == 0.0
    # GA with a large lr must move the forget set: its UA exceeds the original model's.
    assert results["rows"]["GA"]["UA"] > results["rows"]["Original"]["UA"]
    assert results["rows"]["FT"]["RTE-s"] > 0 and results["rows"]["FT"]["RTE-ratio"] > 0
    assert results["versions"]["torch"] == torch.__version__ and results["machine"]["logical_cpus"] >= 1
    assert results["config"]["train"]["epochs"] == 3 and results["seeds"] == [0]
    per_item = results["per_item"]["0"]
    n_forget = results["scenario"]["n_forget"]
    assert len(per_item["forget_indices"]) == n_forget == len(per_item["models"]["GA"]["p_true"])
    # Per-item correctness agrees with the aggregate UA.
    correct = per_item["models"]["GA"]["correct"]
    assert results["rows"]["GA"]["UA"] == pytest.approx(100 - 100 * sum(correct) / n_forget)
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for label in labels:
        assert f"| {label} |" in md and f"<td>{label}</td>" in html
    for png in ("metrics.png", "tradeoff.png", "loss_curves.png"):
        assert (out / "plots" / png).read_bytes().startswith(b"\x89PNG")
        assert f"plots/{png}" in md
    assert html.count("data:image/png;base64,") == 3 and "<script" not in html
    # Saved models load into the architecture and reproduce the reported forget accuracy.
    model = load_state_dict(small_cnn(width=8), out / "seed-0" / "methods" / "GA.safetensors")
    from unlearnx.eval import unlearning_accuracy
    from unlearnx.experiments import validate_config
    from unlearnx.experiments.classification import build_data as _build_data, build_scenario as _build_scenario

    cfg = validate_config(results["config"])
    (train, test), _ = _build_data(cfg["data"], 0)
    sc = _build_scenario(cfg["scenario"], train, test, 0)
    assert unlearning_accuracy(model, sc.forget) == pytest.approx(results["rows"]["GA"]["UA"])
    # Audit hashes match the files.
    import hashlib

    for entry in results["audit"]["models"].values():
        assert hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    assert not list(out.rglob("*.tmp"))


def test_resume_recomputes_only_what_is_missing(finished_run, tmp_path):
    cfg_path, out = finished_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = json.loads((copy / "results.json").read_text())
    mtimes = _mtimes(copy)
    (copy / "seed-0" / "methods" / "GA.json").unlink()  # simulate an interruption before GA finished
    assert cli.main(["run", str(cfg_path), "--out", str(copy), "--quiet"]) == 0
    after = json.loads((copy / "results.json").read_text())
    assert sorted(after["cached_steps"]["0"]) == ["FT", "Original", "RL", "Retrain"]
    new = _mtimes(copy)
    changed = {k for k in mtimes if new[k] != mtimes[k]}
    assert changed == {"seed-0/methods/GA.safetensors"}
    # Recomputing GA is deterministic: the same metrics as the first run.
    for label, row in before["rows"].items():
        for metric in ("UA", "RA", "TA", "MIA-Efficacy", "Avg.Gap"):
            assert after["rows"][label][metric] == pytest.approx(row[metric], abs=1e-9), (label, metric)

    # Changing one method's hyper-parameter recomputes that method only.
    mtimes = _mtimes(copy)
    assert cli.main(["run", str(cfg_path), "methods.ft.lr=0.02", "--out", str(copy), "--quiet"]) == 0
    after = json.loads((copy / "results.json").read_text())
    assert "FT" not in after["cached_steps"]["0"] and "GA" in after["cached_steps"]["0"]
    assert {k for k, v in _mtimes(copy).items() if v != mtimes[k]} == {"seed-0/methods/FT.safetensors"}

    # A damaged weights file is detected by its hash and recomputed, never silently reused.
    (copy / "seed-0" / "retrain.safetensors").write_bytes(b"garbage")
    assert cli.main(["run", str(cfg_path), "methods.ft.lr=0.02", "--out", str(copy), "--quiet"]) == 0
    after = json.loads((copy / "results.json").read_text())
    assert "Retrain" not in after["cached_steps"]["0"]


def test_eval_reevaluates_saved_models(finished_run, tmp_path, capsys):
    cfg_path, out = finished_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = json.loads((copy / "results.json").read_text())
    mtimes = _mtimes(copy)
    assert cli.main(["eval", str(cfg_path), "--out", str(copy), "--quiet"]) == 0
    after = json.loads((copy / "results.json").read_text())
    assert after["command"] == "eval" and _mtimes(copy) == mtimes
    for label, row in before["rows"].items():
        assert after["rows"][label]["UA"] == pytest.approx(row["UA"]) and after["rows"][label]["TA"] == pytest.approx(row["TA"])
    # Without saved models there is nothing to evaluate: a clear error, exit code 2.
    assert cli.main(["eval", str(cfg_path), "--out", str(tmp_path / "empty"), "--quiet"]) == 2
    assert "run `unlearnx run` first" in capsys.readouterr().err


def test_user_data_and_user_weights(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6)).astype(np.float32) * 3
    y = rng.integers(0, 3, 240)
    x = centers[y] + rng.normal(size=(240, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x[:180], y_train=y[:180], x_test=x[180:], y_test=y[180:])
    cfg = {"name": "user", "seeds": [0], "threads": 1, "data": {"path": str(tmp_path / "d.npz")},
           "model": {"name": "mlp", "kwargs": {"hidden": [16]}}, "scenario": {"kind": "class", "classes": 2},
           "train": {"epochs": 5, "lr": 0.1, "batch_size": 32}, "methods": [{"name": "ft", "epochs": 1}]}
    res = run_experiment(cfg, tmp_path / "a", quiet=True)
    assert res["scenario"]["data"] == "d.npz" and res["rows"]["Retrain"]["TA"] > 80
    # The trained original, given back as model.path, is used as is (not retrained).
    cfg["model"]["path"] = str(tmp_path / "a" / "seed-0" / "original.safetensors")
    res2 = run_experiment(cfg, tmp_path / "b", quiet=True)
    assert not (tmp_path / "b" / "seed-0" / "original.safetensors").exists()
    assert res2["rows"]["Original"]["TA"] == pytest.approx(res["rows"]["Original"]["TA"])
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=x, y_train=y)
    cfg["data"]["path"] = str(bad)
    with pytest.raises(ValueError, match="lacks"):
        run_experiment(cfg, tmp_path / "c", quiet=True)


def test_two_seeds_report_mean_and_std(tmp_path):
    cfg = tiny_config(tmp_path / "out")
    cfg.update(seeds=[0, 1], methods=[{"name": "ga", "epochs": 1, "lr": 0.05}])
    res = run_experiment(cfg, quiet=True)
    ua = [res["per_seed_metrics"][s]["GA"]["UA"] for s in ("0", "1")]
    assert res["rows"]["GA"]["UA"] == pytest.approx(sum(ua) / 2)
    assert res["std"]["GA"]["UA"] == pytest.approx(abs(ua[0] - ua[1]) / 2 ** 0.5)
    assert res["audit"]["forget_digest"]["0"] != res["audit"]["forget_digest"]["1"]
    assert " ± " in (tmp_path / "out" / "report.md").read_text()


def test_reading_is_computed_from_the_numbers(finished_run):
    from unlearnx.experiments.classification import reading

    _, out = finished_run
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    best = min((n for n in rows if n not in ("Retrain", "Original")), key=lambda n: rows[n]["Avg.Gap"])
    assert results["reading"].startswith(f"{best} is closest to Retrain (Avg. Gap {rows[best]['Avg.Gap']:.2f}")
    assert f"{100 * rows[best]['RTE-ratio']:.0f}% of Retrain's time" in results["reading"]
    assert "**In short:** " + results["reading"] in (out / "report.md").read_text()
    rows = {"Retrain": {"Avg.Gap": 0.0}, "Original": {"Avg.Gap": 5.0}, "A": {"Avg.Gap": 7.0, "RTE-ratio": 0.1},
            "B": {"Avg.Gap": 1.0, "RTE-ratio": 0.25}}
    text = reading(rows)
    assert text.startswith("B is closest to Retrain (Avg. Gap 1.00 points in 25% of Retrain's time).")
    assert "A ends farther from it than doing nothing" in text
    assert reading({"Retrain": {}, "Original": {}}) == ""


def test_without_a_terminal_each_step_is_one_line(tmp_path):
    lines = []
    cfg = tiny_config(tmp_path / "out")
    cfg["methods"] = [{"name": "ga", "epochs": 1, "lr": 0.05}]
    cfg["train"]["epochs"] = 1
    run_experiment(cfg, echo=lines.append, progress=None)  # stderr is not a terminal under pytest
    done = [ln for ln in lines if ": done in " in ln]
    assert [ln.split(":")[0] for ln in done] == ["Original", "Retrain", "GA"]
