"""`unlearnx tune` for `task: diffusion`: the tuning run erases other concepts on other images (never
the reported run's), UA is maximised under the IRA/CRA budget, the chosen values feed back."""
import json

import pytest
import yaml

pytest.importorskip("optuna")
pytest.importorskip("diffusers")

from unlearnx import cli  # noqa: E402
from unlearnx.experiments import ConfigError, validate_config  # noqa: E402
from unlearnx.experiments.tune import PENALTY, DiffusionTuning, search_space  # noqa: E402


def tiny(out, **extra):
    cfg = {"task": "diffusion", "name": "tiny-diffusion-tune", "out_dir": str(out), "seeds": [0],
           "data": {"name": "canvas", "size": 8, "n_per_pair": 4, "n_styles": 3, "n_objects": 2},
           "scenario": {"kind": "style"},
           "model": {"block_out_channels": [16, 32], "text_dim": 16},
           "train": {"steps": 10, "batch_size": 16},
           "evaluator": {"epochs": 2},
           "methods": [{"name": "uce"}],
           "eval": {"n_per_prompt": 1, "sample_steps": 2, "grid_prompts": 1},
           "tune": {"trials": 2}}
    cfg.update(extra)
    return cfg


def test_budget_on_ira_and_cra_makes_damaging_trials_infeasible():
    adapter = DiffusionTuning()
    tcfg = {"utility_ratio": 0.9}
    metrics = {"Original": {"UA": 10.0, "IRA": 80.0, "CRA": 60.0}, "Retrain": {"UA": 90.0, "IRA": 80.0, "CRA": 60.0},
               "keeps": {"UA": 70.0, "IRA": 76.0, "CRA": 58.0}, "breaks": {"UA": 100.0, "IRA": 80.0, "CRA": 30.0}}
    rows = adapter.rows({"metrics": metrics})
    assert rows["keeps"]["retain/orig"] == pytest.approx(0.95) and rows["breaks"]["retain/orig"] == pytest.approx(0.5)
    ok, bad = (adapter.score([rows[k]], [{}], tcfg) for k in ("keeps", "breaks"))
    assert ok["feasible"] and ok["objective"] == 70.0
    assert not bad["feasible"] and bad["objective"] == pytest.approx(-PENALTY - 0.4)
    assert ok["objective"] > bad["objective"]  # maximised: any feasible trial beats every infeasible one
    # Two scenarios: the mean UA under the worst retain ratio; digits rows have no CRA.
    two = adapter.score([rows["keeps"], rows["breaks"]], [{}, {}], tcfg)
    assert two["value"] == 85.0 and two["constraints"]["retain/orig"] == pytest.approx(0.5) and not two["feasible"]
    digits = adapter.rows({"metrics": {"Original": {"UA": 0.0, "IRA": 50.0}, "m": {"UA": 40.0, "IRA": 47.0}}})
    assert digits["m"]["retain/orig"] == pytest.approx(0.94)


def test_fid_bound_makes_trials_that_degrade_generations_infeasible(tmp_path):
    # tune.fid_ratio (the 1.2): evaluator-FID <= 1.2x the tuning original's, worst over scenarios.
    adapter = DiffusionTuning()
    metrics = {"Original": {"UA": 0.0, "IRA": 90.0, "FID-eval": 0.5},
               "sharp": {"UA": 100.0, "IRA": 88.0, "FID-eval": 0.55}, "blurry": {"UA": 100.0, "IRA": 88.0, "FID-eval": 0.8}}
    rows = adapter.rows({"metrics": metrics})
    assert rows["blurry"]["fid/orig"] == pytest.approx(1.6)
    tcfg = {"utility_ratio": 0.9, "fid_ratio": 1.2}
    ok, bad = (adapter.score([rows[k]], [{}], tcfg) for k in ("sharp", "blurry"))
    assert ok["feasible"] and ok["constraints"]["fid/orig"] == pytest.approx(1.1)
    assert not bad["feasible"] and bad["objective"] == pytest.approx(-PENALTY - 0.4)
    assert adapter.score([rows["blurry"]], [{}], {"utility_ratio": 0.9, "fid_ratio": None})["feasible"]  # no bound
    assert adapter.budget(tcfg) == {"utility_ratio": 0.9, "fid_ratio": 1.2}
    with pytest.raises(ConfigError, match="tune.fid_ratio"):
        validate_config(tiny(tmp_path / "run", tune={"fid_ratio": 0.5}))


def test_time_bound_makes_trials_slower_than_a_tenth_of_retrain_infeasible(tmp_path):
    # tune.time_ratio (the 0.1): unlearning time <= 0.1x the tuning Retrain's, worst over scenarios.
    adapter = DiffusionTuning()
    metrics = {"Original": {"UA": 0.0, "IRA": 90.0, "FID-eval": 0.5},
               "fast": {"UA": 100.0, "IRA": 88.0, "FID-eval": 0.5, "RTE-ratio": 0.08},
               "slow": {"UA": 100.0, "IRA": 88.0, "FID-eval": 0.5, "RTE-ratio": 0.15}}
    rows = adapter.rows({"metrics": metrics})
    tcfg = {"utility_ratio": 0.9, "fid_ratio": 1.2, "time_ratio": 0.1}
    ok, bad = (adapter.score([rows[k]], [{}], tcfg) for k in ("fast", "slow"))
    assert ok["feasible"] and ok["constraints"]["time/Retrain"] == pytest.approx(0.08)
    assert not bad["feasible"] and bad["objective"] == pytest.approx(-PENALTY - 0.05)
    two = adapter.score([rows["fast"], rows["slow"]], [{}, {}], tcfg)  # the slower scenario decides
    assert not two["feasible"] and two["constraints"]["time/Retrain"] == pytest.approx(0.15)
    assert adapter.score([rows["slow"]], [{}], {"utility_ratio": 0.9})["feasible"]  # no bound
    assert adapter.budget(tcfg) == {"utility_ratio": 0.9, "fid_ratio": 1.2, "time_ratio": 0.1}
    with pytest.raises(ConfigError, match="tune.time_ratio"):
        validate_config(tiny(tmp_path / "run", tune={"time_ratio": 0}))


def test_split_erases_other_concepts_on_another_seed(tmp_path):
    cfg = validate_config(tiny(tmp_path / "run", seeds=[0, 1], scenario={"kind": "style", "target": "ocean"},
                               tune={"trials": 1, "scenarios": 2}))
    configs, split = DiffusionTuning().tuning_configs(cfg, cfg["tune"], tmp_path / "t")
    assert split["reported_target"] == "ocean" and "ocean" not in split["tuning_targets"]
    assert len(set(split["tuning_targets"])) == 2 == len(configs)
    seed = split["tuning_seed"]
    assert seed not in (0, 1, 7919, 7920) and seed + 7919 not in (0, 1, 7919, 7920)
    for c, target in zip(configs, split["tuning_targets"]):
        v = validate_config(c)
        assert v["seeds"] == [seed] and v["scenario"] == {"kind": "style", "target": target}
    # Digits: another class than the reported one.
    cfg = validate_config(tiny(tmp_path / "d", data={"name": "digits", "size": 8},
                               scenario={"kind": "class", "target": 3}, methods=[{"name": "salun"}]))
    assert DiffusionTuning().tuning_configs(cfg, cfg["tune"], tmp_path / "t2")[1]["tuning_targets"] == [4]


def test_sequential_and_bad_tune_input_name_the_key(tmp_path):
    cfg = validate_config(tiny(tmp_path / "run", scenario={"kind": "sequential", "targets": ["crimson", "ocean"]}))
    with pytest.raises(ConfigError, match="scenario.kind"):
        DiffusionTuning().tuning_configs(cfg, cfg["tune"], tmp_path / "t")
    cfg = validate_config(tiny(tmp_path / "run", tune={"scenarios": 3}))  # 3 styles: 2 besides the reported one
    with pytest.raises(ConfigError, match="tune.scenarios"):
        DiffusionTuning().tuning_configs(cfg, cfg["tune"], tmp_path / "t")
    with pytest.raises(ConfigError, match=r"tune\.space\.uce\.lamm"):
        validate_config(tiny(tmp_path / "run", tune={"space": {"uce": {"lamm": [0.01, 1.0, "log"]}}}))
    entry = validate_config(tiny(tmp_path / "run", methods=[{"name": "esd_x", "lr": 1e-3}]))["_methods"][0]
    space = search_space(entry, "diffusion")
    assert space["lr"] == [pytest.approx(1e-4), pytest.approx(1e-2), "log"] and "iterations" in space


def test_diffusion_tune_end_to_end(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny(tmp_path / "run")))
    presets = tmp_path / "presets.yaml"
    assert cli.main(["tune", str(path), "--out", str(tmp_path / "t"), "--write-presets", str(presets)]) == 0
    assert "trial 2/2" in capsys.readouterr().err
    summary = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert summary["objective"]["name"] == "UA" and summary["split"]["tuning_targets"] == ["ocean"]
    m = summary["methods"]["uce"]
    assert m["n_complete"] == 2 and m["chosen"] is not None
    assert m["trials"][0]["start"] and m["trials"][0]["params"] == {"lam": 0.1}  # the config's own value first
    for t in m["trials"]:
        assert set(t["constraints"]) == {"retain/orig"} and 0.0 <= t["value"] <= 100.0
    ref = summary["reference"]
    assert set(ref) == {"Original", "Retrain"} and "IRA" in ref["Original"] and "CRA" in ref["Original"]
    snippet = yaml.safe_load(presets.read_text())
    assert snippet["methods"][0]["name"] == "uce"
    validate_config({**tiny(tmp_path / "x"), "methods": snippet["methods"]})
    assert (tmp_path / "t" / "report.md").is_file()
