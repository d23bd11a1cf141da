"""`unlearnx run` / `demo` with diffusion configs (task: diffusion): validation before any work, a
tiny canvas run end to end (metrics, Retrain, image grid, resume), class-wise digits."""
import json

import pytest
import yaml

pytest.importorskip("diffusers")

from unlearnx import cli  # noqa: E402
from unlearnx.experiments import ConfigError, get_task, run_experiment, validate_config  # noqa: E402


def tiny(out, **extra):
    cfg = {"task": "diffusion", "name": "tiny-diffusion", "out_dir": str(out), "seeds": [0],
           "data": {"name": "canvas", "size": 8, "n_per_pair": 4, "n_styles": 2, "n_objects": 2},
           "scenario": {"kind": "style"},
           "model": {"block_out_channels": [16, 32], "text_dim": 16},
           "train": {"steps": 20, "batch_size": 16},
           "evaluator": {"epochs": 2},
           "methods": [{"name": "esd_x", "iterations": 3}, {"name": "uce"}],
           "eval": {"n_per_prompt": 2, "sample_steps": 3, "grid_prompts": 2}}
    cfg.update(extra)
    return cfg


@pytest.mark.parametrize("change, message", [
    (lambda c: c["scenario"].update(target="no-such-style"), "scenario.target"),
    (lambda c: c["scenario"].update(kind="class"), "scenario.kind"),
    (lambda c: c["data"].update(size=9), "data.size"),
    (lambda c: c["data"].update(n_styles=0), "data.n_styles"),
    (lambda c: c["train"].update(lr=0.0), "train.lr"),
    (lambda c: c.update(methods=["esd_x", "no_such_method"]), "no_such_method"),
    (lambda c: c.update(methods=[{"name": "esd_x", "iterashuns": 3}]), "methods[0].iterashuns"),
    (lambda c: c["model"].update(block_out_channels=[12, 24]), "model.block_out_channels"),
    (lambda c: c["evaluator"].update(n_per_pair=2), "evaluator.n_per_pair"),
])
def test_config_errors_name_the_key(tmp_path, change, message):
    cfg = tiny(tmp_path / "out")
    change(cfg)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_config(cfg)


def test_demo_config_validates_and_skips_unregistered_methods():
    cfg = validate_config(get_task("diffusion").demo_config(quick=True))
    assert cfg["task"] == "diffusion" and cfg["_methods"]


def test_diffusion_demo_uses_the_tuned_presets():
    from unlearnx.experiments.diffusion import DIFFUSION_DEMO_HPARAMS, diffusion_demo_config
    from unlearnx.methods.presets import DIFFUSION_DEMO_TUNED

    assert DIFFUSION_DEMO_TUNED  # only methods with a feasible tuning trial are listed
    full = validate_config(diffusion_demo_config())["_methods"]
    named = validate_config(diffusion_demo_config(methods=sorted(DIFFUSION_DEMO_TUNED)))["_methods"]
    assert [e["method"] for e in named] == sorted(DIFFUSION_DEMO_TUNED)
    for e in full + named:
        expected = {**DIFFUSION_DEMO_HPARAMS.get(e["method"], {}), **DIFFUSION_DEMO_TUNED.get(e["method"], {})}
        assert {k: e["hparams"][k] for k in expected} == expected, e["method"]
    assert any(e["method"] in DIFFUSION_DEMO_TUNED for e in full)
    # --quick trains a smaller model the tuning never saw: hand-set values only.
    for e in validate_config(diffusion_demo_config(quick=True))["_methods"]:
        for k, v in DIFFUSION_DEMO_HPARAMS.get(e["method"], {}).items():
            assert e["hparams"][k] == v, e["method"]
        for k, v in DIFFUSION_DEMO_TUNED.get(e["method"], {}).items():
            assert k in DIFFUSION_DEMO_HPARAMS.get(e["method"], {}) or e["hparams"].get(k) != v, e["method"]
    assert get_task("diffusion").demo_config() == diffusion_demo_config()


def test_a_weak_evaluator_is_reported(tmp_path, capsys):
    """Evaluators below 95% held-out accuracy make UA / IRA / CRA unreliable: the run says so."""
    cfg = tiny(tmp_path / "out", methods=[{"name": "uce"}])
    cfg["evaluator"] = {"epochs": 1, "n_per_pair": 5}
    res = run_experiment(cfg, quiet=False)
    captured = capsys.readouterr()
    out = captured.out + captured.err
    weak = {k: a for k, a in res["evaluators"]["0"].items() if a < 0.95}
    assert weak  # one epoch on 16 images per class does not reach 95% on this data
    for name, acc in weak.items():
        assert f"warning: the {name} evaluator reaches {acc:.0%} held-out accuracy" in out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff")
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump(tiny(root / "out")))
    assert cli.main(["run", str(path), "--quiet"]) == 0
    return path, root / "out"


def test_canvas_run_end_to_end(finished):
    _, out = finished
    res = json.loads((out / "results.json").read_text())
    assert list(res["rows"])[:2] == ["Retrain", "Original"] and {"esd_x", "uce"} <= set(res["rows"])
    for label, row in res["rows"].items():
        for key in ("UA", "IRA", "CRA"):
            assert 0.0 <= row[key] <= 100.0
        assert row["Avg.Gap"] >= 0.0
    assert res["rows"]["Retrain"]["Avg.Gap"] == 0.0
    # Both edit the UNet: the change is counted (UCE edits only cross-attention key/value projections).
    assert res["rows"]["uce"]["changed-params"] > 0 and res["rows"]["esd_x"]["changed-params"] > 0
    assert set(res["evaluators"]["0"]) == {"style", "object"}
    assert (out / "plots" / "grid.png").read_bytes().startswith(b"\x89PNG")
    md = (out / "report.md").read_text()
    assert "grid.png" in md and "| Retrain |" in md and "_grids" not in (out / "results.json").read_text()


def test_rerun_reuses_every_step(finished):
    path, out = finished
    res = run_experiment(validate_config(yaml.safe_load(path.read_text())), out, quiet=True)
    assert sorted(res["cached_steps"]["0"]) == sorted(["style evaluator", "object evaluator", "Original", "Retrain",
                                                      "esd_x", "uce"])


@pytest.mark.slow
def test_digits_classwise_run(tmp_path):
    cfg = tiny(tmp_path / "out", data={"name": "digits", "size": 8}, scenario={"kind": "class", "target": 3},
               methods=[{"name": "esd_u", "iterations": 3}])
    res = run_experiment(cfg, quiet=True)
    assert set(res["rows"]) == {"Retrain", "Original", "esd_u"}
    assert "CRA" not in res["rows"]["Original"] and 0 <= res["rows"]["esd_u"]["UA"] <= 100


@pytest.mark.parametrize("method", ["esd_x", "uce", "fmn", "spm", "advunlearn"])
def test_text_only_methods_are_refused_on_the_digits_before_any_work(tmp_path, method):
    # they act on prompts or on cross-attention, which a class-conditional UNet2DModel has not
    cfg = tiny(tmp_path / "out", data={"name": "digits", "size": 8}, scenario={"kind": "class", "target": 3},
               methods=[{"name": "esd_u", "iterations": 3}, {"name": method}])
    with pytest.raises(ConfigError, match=r"methods\[1\]\.name.*needs a text-conditional model"):
        validate_config(cfg)
    assert not (tmp_path / "out").exists()
    cfg["methods"] = [{"name": "esd_u"}, {"name": "sfd"}, {"name": "concept_ablation"}, {"name": "doco"}]
    assert [e["method"] for e in validate_config(cfg)["_methods"]] == ["esd_u", "sfd", "concept_ablation", "doco"]


def test_attacks_are_validated_by_name_kind_and_budget(tmp_path):
    with pytest.raises(ConfigError, match=r"attacks\.nope"):
        validate_config(tiny(tmp_path, attacks=["nope"]))
    with pytest.raises(ConfigError, match=r"attacks\.seed_search\.budgett"):
        validate_config(tiny(tmp_path, attacks={"seed_search": {"budgett": 2}}))
    with pytest.raises(ConfigError, match=r"attacks\.unlearndiff.*class"):
        validate_config(tiny(tmp_path, data={"name": "digits", "size": 8}, scenario={"kind": "class"},
                             methods=["esd_u"], attacks=["unlearndiff"]))
    cfg = validate_config(tiny(tmp_path, attacks=["seed_search"]))
    assert cfg["attacks"] == {"seed_search": {}}
    robust = validate_config(get_task("diffusion").demo_config(quick=True, options={"robust": True}))
    assert {"unlearndiff", "relearning"} <= set(robust["attacks"])


def test_robustness_columns_with_retrain_as_the_floor(tmp_path):
    cfg = tiny(tmp_path / "out", methods=[{"name": "uce"}],
               attacks={"seed_search": {"budget": 2}, "relearning": {"steps": [0, 2]}})
    res = run_experiment(cfg, quiet=True)
    for label in ("Retrain", "Original", "uce"):
        row = res["rows"][label]
        assert 0.0 <= row["ASR/seed_search"] <= 100.0 and 0.0 <= row["ASR/relearning"] <= 100.0
    assert set(res["robustness"]["0"]) == {"Retrain", "Original", "uce"}
    assert "Robustness: attack success rate" in (tmp_path / "out" / "report.md").read_text()


def test_aliases_train_the_original_on_every_word_while_the_methods_see_the_canonical_name(tmp_path):
    """data.aliases: the original's vocabulary knows the other words (it was trained on them); the
    erasure request (the methods' forget set) names the style once; bad values name the key."""
    from unlearnx.experiments.run import Run

    for bad, message in (({"aliases": 4}, "data.aliases"), ({"name": "digits", "aliases": 1}, "data.aliases")):
        cfg = tiny(tmp_path / "bad")
        cfg["data"].update(bad)
        if cfg["data"]["name"] == "digits":
            cfg["scenario"], cfg["methods"] = {"kind": "class"}, ["salun"]
        with pytest.raises(ConfigError, match=message):
            validate_config(cfg)
    cfg = tiny(tmp_path / "out")
    cfg["data"].update(aliases=2, n_per_pair=8)
    cfg = validate_config(cfg)
    task = get_task("diffusion")
    setup = task.setup(Run(cfg, tmp_path / "out", quiet=True, eval_only=False, echo=print), 0)
    assert set(setup.forget.prompts) == {"a circle in crimson style", "a square in crimson style"}
    train_words = {p.split()[-2] for p in setup.data.prompts}
    assert {"crimson", "scarlet", "ruby", "ocean", "azure", "navy"} <= train_words
    vocab = setup.fresh(cfg).tokenizer.get_vocab()
    assert {"crimson", "scarlet", "ruby"} <= set(vocab)
    # other captions, another original: nothing is reused from the run without aliases
    plain = validate_config(tiny(tmp_path / "p"))
    assert task.setup(Run(plain, tmp_path / "p", quiet=True, eval_only=False, echo=print), 0).base_key != setup.base_key
