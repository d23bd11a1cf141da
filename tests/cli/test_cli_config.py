"""Config validation: every bad config fails before any work starts, with an error naming the key."""
from pathlib import Path

import pytest
import yaml

import _llm_files
from unlearnx import cli
from unlearnx.experiments import get_task
from unlearnx.experiments.classification import DEMO_METHODS
from unlearnx.experiments import ConfigError, apply_overrides, load_config, validate_config

ROOT = Path(__file__).resolve().parents[2]


def base():
    return {"name": "t", "data": {"name": "digits"}, "model": {"name": "small_cnn"},
            "scenario": {"kind": "random", "fraction": 0.1}, "train": {"epochs": 1}, "methods": ["ft"]}


def test_defaults_are_filled_and_methods_resolved():
    cfg = validate_config(base())
    assert cfg["seeds"] == [0] and cfg["eval"]["suite"] == "auto" and cfg["train"]["lr"] == 0.05
    assert cfg["out_dir"] == str(Path("runs") / "t")
    assert cfg["_methods"] == [{"label": "FT", "method": "ft", "hparams": {}}]
    # Validation is idempotent: a validated config validates to itself.
    again = validate_config(cfg)
    assert {k: v for k, v in again.items()} == cfg


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(modle={"name": "mlp"}), "unknown config key 'modle' (did you mean 'model'?)"),
    (lambda c: c["train"].update(lr="abc"), "config key 'train.lr': expected a number, got 'abc'"),
    (lambda c: c["train"].update(epochs=2.5), "config key 'train.epochs': expected an integer, got 2.5"),
    (lambda c: c["train"].update(epoch=3), "unknown config key 'train.epoch' (did you mean 'epochs'?)"),
    (lambda c: c.update(seeds="zero"), "config key 'seeds': expected a non-empty list of integers"),
    (lambda c: c.update(device="tpu"), "config key 'device': expected one of"),
    (lambda c: c["data"].update(path="/nonexistent/x.npz"), "data.path: file not found: /nonexistent/x.npz"),
    (lambda c: c["model"].update(path="/nonexistent/w.safetensors"), "model.path: file not found"),
    (lambda c: c["data"].update(kwargs={"test_frac": 0.3}), "unknown config key 'data.kwargs.test_frac'"),
    (lambda c: c["model"].update(name="small_cn"), "unknown model 'small_cn' (did you mean 'small_cnn'?)"),
    (lambda c: c["model"].update(kwargs={"widht": 8}), "unknown config key 'model.kwargs.widht'"),
    (lambda c: c["scenario"].update(classes=3), "unknown config key 'scenario.classes'"),
    (lambda c: c.update(scenario={"kind": "class", "classes": "three"}), "config key 'scenario.classes': expected"),
    (lambda c: c.update(scenario={"kind": "class", "classes": 3, "fraction": 0.1}),
     "unknown config key 'scenario.fraction' (allowed: classes, kind)"),
    (lambda c: c["scenario"].update(n=10), "give one of 'scenario.fraction' and 'scenario.n'"),
    (lambda c: c.update(methods=["fft"]), "unknown method 'fft' (did you mean 'ft'?)"),
    (lambda c: c.update(methods=[{"name": "ft", "lrr": 0.1}]), "unknown config key 'methods[0].lrr'"),
    (lambda c: c.update(methods=[{"name": "ft", "lr": "fast"}]), "config key 'methods[0].lr': expected a number"),
    (lambda c: c.update(methods=["ft", "ft"]), "the label 'FT' is used twice"),
    (lambda c: c.update(methods=["blindspot"]), "unlearns regression models"),
    (lambda c: c.update(methods=[]), "expected a non-empty list of methods"),
    (lambda c: c["eval"].update(suite="corrective") if "eval" in c else c.update(eval={"suite": "corrective"}),
     "'corrective' needs scenario.kind"),
])
def test_bad_configs_name_the_key(mutate, message):
    cfg = base()
    mutate(cfg)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert message in str(info.value)


def test_numbers_written_without_a_dot_are_accepted():
    # YAML 1.1 reads 5e-4 as a string; a number field takes it as the number it looks like.
    cfg = validate_config(yaml.safe_load("train: {weight_decay: 5e-4}\nmethods: [{name: ft, lr: 1e-3}]"))
    assert cfg["train"]["weight_decay"] == 5e-4 and cfg["_methods"][0]["hparams"]["lr"] == 1e-3


def test_optional_unknown_method_is_skipped_with_a_reason():
    cfg = base()
    cfg["methods"] = ["ft", {"name": "not_a_method", "optional": True}]
    out = validate_config(cfg)
    assert [m["method"] for m in out["_methods"]] == ["ft"]
    assert out["_skipped"][0]["method"] == "not_a_method"
    cfg["methods"] = [{"name": "not_a_method", "optional": True}]
    with pytest.raises(ConfigError, match="none of the listed methods is registered"):
        validate_config(cfg)


def test_overrides():
    cfg = apply_overrides(base(), ["train.epochs=3", "seeds=[0, 1]", "methods.ft.lr=0.02", "methods.0.epochs=2",
                                   "scenario.fraction=0.2", "eval.zrf=true"])
    out = validate_config(cfg)
    assert out["train"]["epochs"] == 3 and out["seeds"] == [0, 1] and out["eval"]["zrf"] is True
    assert out["_methods"][0]["hparams"] == {"lr": 0.02, "epochs": 2}
    assert out["scenario"]["fraction"] == 0.2
    for bad, message in (("train.epochs", "expected key=value"), ("methods.sgd.lr=1", "matches 0 method entries"),
                         ("methods.5.lr=1", "out of range"), ("a..b=1", "dotted path")):
        with pytest.raises(ConfigError, match=message):
            apply_overrides(base(), [bad])
    with pytest.raises(ConfigError, match="config key 'train.epochs': expected an integer, got 'x'"):
        validate_config(apply_overrides(base(), ["train.epochs=x"]))


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**base(), "out_dir": str(tmp_path / "run"), "trian": {"epochs": 1}}))
    assert cli.main(["run", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'trian' (did you mean 'train'?)" in err
    assert not (tmp_path / "run").exists()  # nothing was started
    assert cli.main(["run", str(cfg), "trian.epochs=1", "--quiet"]) == 2  # overrides cannot fix an unknown key
    assert cli.main(["eval", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_demo_config_skips_unregistered_defaults_and_rejects_unknown_explicit():
    import unlearnx as ux

    cfg = validate_config(get_task("classification").demo_config())
    ran = {m["method"] for m in cfg["_methods"]}
    skipped = {s["method"] for s in cfg["_skipped"]}
    assert ran | skipped == set(DEMO_METHODS) and not ran & skipped
    assert ran == set(DEMO_METHODS) & set(ux.methods.available())
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        validate_config(get_task("classification").demo_config(methods=["ft", "nope"]))


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT) for p in (ROOT / "configs").rglob("*.yaml")),
                         ids=str)
def test_example_configs_validate(path, tmp_path, monkeypatch):
    import numpy as np

    import unlearnx as ux

    raw = yaml.safe_load((ROOT / path).read_text())
    missing = [m if isinstance(m, str) else m["name"] for m in raw["methods"]
               if not (isinstance(m, dict) and m.get("optional"))
               and (m if isinstance(m, str) else m["name"]) not in ux.methods.available()]
    if missing:
        pytest.skip(f"{path} uses methods not registered yet: {missing}")
    overrides = _llm_files.fill_placeholders(raw, tmp_path)  # benchmark files + a pretrained model: tiny ones
    if "path" in raw.get("data", {}) and not overrides:
        # The user-data example reads a file from the current folder: provide one of the documented layout.
        monkeypatch.chdir(tmp_path)
        rng = np.random.default_rng(0)
        np.savez(raw["data"]["path"], x_train=rng.random((50, 4), dtype=np.float32), y_train=rng.integers(0, 3, 50),
                 x_test=rng.random((20, 4), dtype=np.float32), y_test=rng.integers(0, 3, 20))
    cfg = load_config(ROOT / path, overrides)
    assert cfg["_methods"]
