"""`unlearnx run` / `eval` with LLM configs (task: llm): validation before any work, a tiny run end
to end, resume and re-evaluation."""
import json
from pathlib import Path

import pytest
import yaml

from unlearnx import cli
from unlearnx.experiments import ConfigError, load_config, validate_config


def tiny(out, **extra):
    cfg = {"task": "llm", "name": "tiny-llm", "out_dir": str(out), "seed": 0,
           "data": {"authors": 4, "n_real_authors": 2, "n_world_facts": 4, "vocab_size": 600},
           "model": {"name": "llama", "hidden": 32, "layers": 1, "heads": 2},
           "train": {"epochs": 4, "lr": 3e-3, "batch_size": 16},
           "methods": [{"name": "ga", "epochs": 2}, {"name": "npo", "label": "NPO-b0.2", "beta": 0.2, "epochs": 2}],
           "eval": {"retain_subset": 8, "max_new_tokens": 8}}
    cfg.update(extra)
    return cfg


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(trian={}), "did you mean 'train'"),
    (lambda c: c["model"].update(name="llamma"), "model.name"),
    (lambda c: c.update(methods=["npo", "no_such_method"]), "no_such_method"),
    (lambda c: c.update(methods=[{"name": "npo", "betta": 0.1}]), "methods[0].betta"),
    (lambda c: c.update(methods=[{"name": "npo", "beta": "high"}]), "methods[0].beta"),
    (lambda c: c.update(methods=[{"name": "npo", "lr": -1.0}]), "methods[0]"),
    (lambda c: c.update(methods=["npo", "npo"]), "duplicate"),
    (lambda c: c["data"].update(authors=1), "data.authors"),
    (lambda c: c["model"].update(kwargs={"layers": 3}), "model.kwargs"),
    (lambda c: c.update(task="vision"), "task"),
])
def test_config_errors_name_the_key(tmp_path, change, message):
    cfg = tiny(tmp_path / "out")
    change(cfg)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_config(cfg)
    assert not (tmp_path / "out").exists()


def test_hyper_parameters_layer_defaults_and_entry_values(tmp_path):
    cfg = validate_config(tiny(tmp_path))
    ga, npo = cfg["_methods"]
    assert ga == {"label": "ga", "method": "ga", "hparams": {"lr": 1e-3, "epochs": 2, "batch_size": 8}}
    assert npo["label"] == "NPO-b0.2" and npo["hparams"]["beta"] == 0.2 and npo["hparams"]["lr"] == 1e-3


def test_shipped_llm_configs_validate(tmp_path):
    import _llm_files

    paths = sorted(Path(__file__).resolve().parents[2].glob("configs/llm/*.yaml"))
    assert len(paths) >= 7
    for path in paths:
        # *_files.yaml name placeholder paths: tiny benchmark files and a tiny saved Llama stand in.
        raw = yaml.safe_load(path.read_text())
        cfg = load_config(path, _llm_files.fill_placeholders(raw, tmp_path / path.stem))
        assert cfg["task"] == "llm" and cfg["_methods"], path
    # ECO without a target source validates: the run hands it the retain oracle.
    eco = [e for e in load_config(paths[[p.name for p in paths].index("inference_time.yaml")])["_methods"]
           if e["method"] == "eco"]
    assert eco and eco[0]["hparams"].get("target") is None


@pytest.mark.slow
def test_tiny_llm_run_end_to_end_resume_and_eval(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny(tmp_path / "out")))
    assert cli.main(["run", str(path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert list(results["rows"]) == ["Retrain", "target", "ga", "NPO-b0.2"]
    assert results["runs"]["NPO-b0.2"]["hparams"]["beta"] == 0.2
    for label in results["rows"]:
        assert f"| {label} |" in printed and (out / "models" / f"{label}.safetensors").is_file()
    rows = results["rows"]
    assert rows["Retrain"]["forget_quality"] == 1.0
    assert rows["ga"]["forget_prob"] < rows["target"]["forget_prob"]  # gradient ascent moved the forget set
    # A rerun reuses every step; `eval` re-evaluates the stored models without training.
    assert cli.main(["run", str(path), "--quiet"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert sorted(again["cached_steps"]) == sorted(results["rows"]) and again["rows"] == rows
    assert cli.main(["eval", str(path), "--quiet"]) == 0
    ev = json.loads((out / "results.json").read_text())
    assert ev["command"] == "eval" and ev["rows"] == rows
    # eval on a config whose steps never ran fails naming the missing model, without training.
    assert cli.main(["eval", str(path), "train.epochs=5", "--quiet"]) == 2
    assert "no saved model" in capsys.readouterr().err


def test_rmu_runs_in_the_llm_task_on_a_two_layer_model(tmp_path):
    # RMU used to need >= 3 layers; the built-in model has 2 (adaptive c, METHOD_HPARAMS' alpha 30)
    # measured: forget probability 0.944 -> 0.142 (MU/target 0.73 on this 4-author, hidden-32 model)
    path = tmp_path / "rmu.yaml"
    cfg = tiny(tmp_path / "out", methods=["rmu"], model={"name": "llama", "hidden": 32, "layers": 2, "heads": 2},
               train={"epochs": 30, "lr": 1e-2, "batch_size": 16})  # a target that knows its forget set
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["run", str(path), "--quiet"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["runs"]["rmu"]["hparams"]["steering"] == "adaptive"
    assert results["runs"]["rmu"]["hparams"]["alpha"] == 30.0
    rows = results["rows"]
    assert rows["target"]["forget_prob"] > 0.3
    assert rows["rmu"]["forget_prob"] < 0.5 * rows["target"]["forget_prob"], rows
    print(f"rmu forget probability {rows['target']['forget_prob']:.3f} -> {rows['rmu']['forget_prob']:.3f}, "
          f"MU/target {rows['rmu']['MU/target']:.2f}")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_is_refused_before_any_work_without_a_gpu(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--task", "llm", "--quick", "--device", "cuda", "--out", str(out), "--quiet"]) == 2
    assert "device" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ConfigError, match="'device'"):
        validate_config(tiny(tmp_path / "x", device="cuda"))
    with pytest.raises(ConfigError, match="dtype"):
        validate_config(tiny(tmp_path / "x", dtype="float8"))


def test_bfloat16_runs_under_autocast_and_is_recorded(tmp_path):
    import torch

    from unlearnx.experiments import run_experiment

    cfg = tiny(tmp_path / "out", dtype="bfloat16")
    cfg["train"]["epochs"] = 1
    cfg["methods"] = [{"name": "ga", "epochs": 1}]
    res = run_experiment(cfg, quiet=True)
    assert res["device"] == {"device": "cpu", "dtype": "bfloat16", "gpu": None}
    assert all(v is not None for v in res["rows"]["ga"].values())
    # Master weights stay fp32: the saved models are fp32, so precision only changes the compute.
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "models" / "ga.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
