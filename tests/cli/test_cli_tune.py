"""`unlearnx tune`: the search end to end (classification, LLM), the disjoint tuning split, the
utility budget, resuming an interrupted study, and `tune` config errors naming the key."""
import json
import math

import pytest
import torch
import yaml

pytest.importorskip("optuna")

from unlearnx import cli  # noqa: E402
from unlearnx.experiments import ConfigError, validate_config  # noqa: E402
from unlearnx.experiments.classification import build_data, build_scenario  # noqa: E402
from unlearnx.experiments.tune import PENALTY, ClassificationTuning, LLMTuning, search_space, tune  # noqa: E402


def tiny_cls(out, **extra):
    cfg = {"name": "tiny-tune", "out_dir": str(out), "seeds": [0], "threads": 1,
           "data": {"name": "digits"}, "model": {"name": "small_cnn"},
           "scenario": {"kind": "class", "classes": 0}, "train": {"epochs": 2, "lr": 0.05},
           "methods": [{"name": "ga", "lr": 0.02, "epochs": 1}],
           "tune": {"trials": 2}}
    cfg.update(extra)
    return cfg


def tiny_llm(out, **extra):
    cfg = {"task": "llm", "name": "tiny-llm-tune", "out_dir": str(out), "seed": 0,
           "data": {"authors": 6, "n_real_authors": 2, "n_world_facts": 4, "vocab_size": 600},
           "model": {"name": "llama", "hidden": 32, "layers": 1, "heads": 2},
           "train": {"epochs": 3, "lr": 3e-3, "batch_size": 16},
           "methods": [{"name": "npo", "epochs": 1}],
           "eval": {"retain_subset": 8, "max_new_tokens": 8},
           "tune": {"trials": 2}}
    cfg.update(extra)
    return cfg


def test_classification_tune_end_to_end_and_disjoint_split(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_cls(tmp_path / "run")))
    presets = tmp_path / "presets.yaml"
    rc = cli.main(["tune", str(path), "--out", str(tmp_path / "t"), "--write-presets", str(presets)])
    assert rc == 0
    printed = capsys.readouterr()
    assert "trial 1/2" in printed.err and "trial 2/2" in printed.err  # one line per trial
    summary = json.loads((tmp_path / "t" / "tune.json").read_text())
    m = summary["methods"]["GA"]
    assert m["n_trials"] == 2 and m["chosen"] is not None
    # Trial 0 is the config's own values; every trial has its objective and constraint values.
    assert m["trials"][0]["start"] and m["trials"][0]["params"] == {"lr": 0.02, "epochs": 1}
    for t in m["trials"]:
        assert set(t["constraints"]) == {"RA_drop", "TA_drop"} and math.isfinite(t["value"])
    # The chosen values feed back as a config's methods list that validates.
    snippet = yaml.safe_load(presets.read_text())
    assert snippet["methods"][0]["name"] == "ga"
    validate_config({**tiny_cls(tmp_path / "x"), "methods": snippet["methods"]})
    assert (tmp_path / "t" / "report.md").is_file() and (tmp_path / "t" / "plots" / "tradeoff-GA.png").is_file()

    # The split, on indices of the reported run's training set.
    cfg = validate_config(tiny_cls(tmp_path / "run"))
    (train, test), _ = build_data(cfg["data"], 0)
    reported = build_scenario(cfg["scenario"], train, test, 0)
    split = summary["split"]
    rep_forget = set(reported.forget_indices.tolist())
    val, fit, t_forget = (set(split[k]) for k in ("validation_indices", "tuning_train_indices", "tuning_forget_indices"))
    assert split["reported_forget_indices"] == sorted(rep_forget)
    assert not val & rep_forget and not fit & rep_forget and not t_forget & rep_forget
    assert not val & fit and t_forget <= fit
    assert val | fit == set(reported.retain_indices.tolist())
    assert split["tuning_scenario"]["classes"] == [1]  # another class than the reported 0
    # The tuning test set is those training rows (never the reported test set).
    data = torch.load(tmp_path / "t" / "tuning_data.pt", weights_only=True)
    x = torch.stack([train[i][0] for i in sorted(val)])
    assert torch.equal(data["x_test"], x) and len(data["x_test"]) == split["sizes"]["validation"]


def test_budget_makes_trials_that_drop_ra_infeasible():
    adapter = ClassificationTuning()
    tcfg = {"ra_drop": 2.0, "ta_drop": 2.0}
    ref = {"Original": {"RA": 99.0, "TA": 97.0}, "Retrain": {"RA": 99.0, "TA": 97.0}}
    ok = adapter.score([{"RA": 98.0, "TA": 96.0, "Avg.Gap": 5.0}], [ref], tcfg)
    bad = adapter.score([{"RA": 90.0, "TA": 96.0, "Avg.Gap": 1.0}], [ref], tcfg)
    # Two tuning scenarios: the mean gap, the worst drop.
    two = adapter.score([{"RA": 98.0, "TA": 96.0, "Avg.Gap": 5.0}, {"RA": 96.0, "TA": 96.0, "Avg.Gap": 1.0}],
                        [ref, ref], tcfg)
    assert two["value"] == 3.0 and two["constraints"]["RA_drop"] == 3.0 and not two["feasible"]
    assert ok["feasible"] and ok["objective"] == 5.0
    assert not bad["feasible"] and bad["constraints"]["RA_drop"] == pytest.approx(9.0)
    assert bad["objective"] == pytest.approx(PENALTY + 7.0) and bad["objective"] > ok["objective"]
    llm = LLMTuning()
    lo = llm.score([{"forget_quality": 0.5, "MU/target": 0.8, "model_utility": 0.4}], [{}], {"utility_ratio": 0.9})
    hi = llm.score([{"forget_quality": 1e-4, "MU/target": 0.95, "model_utility": 0.5}], [{}], {"utility_ratio": 0.9})
    assert not lo["feasible"] and hi["feasible"] and hi["objective"] > lo["objective"]


def test_infeasible_trials_are_marked_in_a_real_search(tmp_path):
    # GA with a huge learning rate destroys the model: RA collapses, so every trial breaks the budget.
    cfg = tiny_cls(tmp_path / "run", tune={"trials": 2, "space": {"ga": {"lr": [5.0, 10.0, "log"]}}})
    summary = tune(cfg, tmp_path / "t", quiet=True)
    trials = summary["methods"]["GA"]["trials"]
    assert all(t["constraints"]["RA_drop"] > 2.0 and not t["feasible"] and t["objective"] >= PENALTY for t in trials)
    assert summary["methods"]["GA"]["n_feasible"] == 0 and not summary["methods"]["GA"]["chosen"]["feasible"]


def test_corrective_tuning_minimises_asr_on_fresh_poisonings_of_clean_data(tmp_path):
    # scenario.kind badnets: objective ASR under a clean-accuracy budget; the tuning data are the clean
    # samples of the reported training set (its poisoned samples left out), poisoned afresh.
    cfg = tiny_cls(tmp_path / "run", scenario={"kind": "badnets", "poison_fraction": 0.1, "identified_fraction": 0.1},
                   methods=[{"name": "boundary_expand", "lr": 1e-3, "epochs": 2}], eval={"suite": "corrective"},
                   tune={"trials": 2, "seed": 100, "scenarios": 2})
    summary = tune(cfg, tmp_path / "t", quiet=True)
    assert summary["objective"]["name"] == "ASR" and summary["objective"]["budget"] == {"clean_accuracy_drop": 2.0}
    for t in summary["methods"]["BE"]["trials"]:
        assert set(t["constraints"]) == {"Acc_retain_drop"} and 0.0 <= t["value"] <= 100.0
    split = summary["split"]
    v = validate_config(cfg)
    (train, test), _ = build_data(v["data"], 0)
    reported = build_scenario(v["scenario"], train, test, 0)
    poison = set(reported.meta["poison_indices"].tolist())
    val, fit = set(split["validation_indices"]), set(split["tuning_train_indices"])
    assert split["reported_poison_indices"] == sorted(poison) and set(split["reported_forget_indices"]) <= poison
    assert not val & fit and not (val | fit) & poison and val | fit == set(range(len(train))) - poison
    assert split["tuning_seeds"] == [100, 101] and len(summary["references"]) == 2
    assert summary["reference"]["Original"]["ASR"] > 50.0  # the tuning originals carry the fresh backdoor
    cfg_bad = tiny_cls(tmp_path / "run2", scenario={"kind": "confusion", "classes": [1, 7]}, eval={"suite": "corrective"})
    with pytest.raises(ConfigError, match="scenario.kind"):
        tune(cfg_bad, tmp_path / "t2", quiet=True)


def test_two_tuning_scenarios_forget_two_other_classes(tmp_path):
    summary = tune(tiny_cls(tmp_path / "run", tune={"trials": 1, "scenarios": 2}), tmp_path / "t", quiet=True)
    split = summary["split"]
    assert [sc["classes"] for sc in split["tuning_scenarios"]] == [[1], [2]]
    assert not set(split["tuning_forget_indices"]) & set(split["reported_forget_indices"])
    assert len(summary["references"]) == 2 and (tmp_path / "t" / "work-1").is_dir()
    assert summary["methods"]["GA"]["n_complete"] == 1


def test_resume_refuses_other_settings(tmp_path):
    tune(tiny_cls(tmp_path / "run", tune={"trials": 1}), tmp_path / "t", quiet=True)
    with pytest.raises(ConfigError, match="--out"):
        tune(tiny_cls(tmp_path / "run", tune={"trials": 1, "space": {"ga": {"lr": [1e-3, 1e-2, "log"]}}}),
             tmp_path / "t", quiet=True)


def test_resumed_study_continues(tmp_path, capsys):
    cfg = tiny_cls(tmp_path / "run")
    first = tune(cfg, tmp_path / "t", trials=2)
    capsys.readouterr()
    second = tune(cfg, tmp_path / "t", trials=3)
    err = capsys.readouterr().err
    assert "Original: reusing" in err and "Retrain: reusing" in err  # the tuning models are cached
    assert "resuming: 2 of 3 trials done" in err and "trial 3/3" in err and "trial 1/3" not in err
    a, b = first["methods"]["GA"]["trials"], second["methods"]["GA"]["trials"]
    assert len(b) == 3 and [t["params"] for t in b[:2]] == [t["params"] for t in a]
    assert [t["value"] for t in b[:2]] == [t["value"] for t in a]


@pytest.mark.parametrize("tune_section, message", [
    ({"trails": 3}, "did you mean 'trials'"),
    ({"trials": 0}, "tune.trials"),
    ({"space": {"gaa": {"lr": [1e-3, 1e-1]}}}, "tune.space.gaa"),
    ({"space": {"ga": {"lrr": [1e-3, 1e-1]}}}, "tune.space.ga.lrr"),
    ({"space": {"ga": {"lr": [1e-1, 1e-3, "log"]}}}, "tune.space.ga.lr"),
    ({"space": {"ga": {"lr": [0.0, 1e-1, "log"]}}}, "tune.space.ga.lr"),
    ({"space": {"ga": {"lr": [1e-3, 1e-1, "cubic"]}}}, "tune.space.ga.lr"),
    ({"space": {"ga": {"epochs": "many"}}}, "tune.space.ga.epochs"),
    ({"methods": ["salun"]}, "tune.methods"),
    ({"val_fraction": 1.5}, "tune.val_fraction"),
])
def test_bad_tune_config_names_the_key(tmp_path, tune_section, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate_config(tiny_cls(tmp_path, tune=tune_section))


def test_cli_exit_2_on_bad_tune_input(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_cls(tmp_path / "run", scenario={"kind": "confusion", "classes": [1, 7]})))
    assert cli.main(["tune", str(path), "--out", str(tmp_path / "t")]) == 2  # no tuning objective for confusion
    assert "scenario.kind" in capsys.readouterr().err
    path.write_text(yaml.safe_dump(tiny_cls(tmp_path / "run")))
    assert cli.main(["tune", str(path), "--methods", "nope", "--out", str(tmp_path / "t")]) == 2
    assert "--methods" in capsys.readouterr().err


def test_run_accepts_a_config_with_a_tune_section(tmp_path):
    cfg = validate_config(tiny_cls(tmp_path, tune={"trials": 4, "space": {"ga": {"lr": [1e-3, 1e-1, "log"]}}}))
    assert cfg["tune"]["space"] == {"ga": {"lr": [1e-3, 1e-1, "log"]}}
    assert validate_config(cfg)["tune"] == cfg["tune"]  # validating twice gives the same config


def test_search_space_is_around_the_config_values(tmp_path):
    cfg = validate_config(tiny_cls(tmp_path, methods=[{"name": "ssd", "alpha": 30.0}, {"name": "ga", "lr": 0.02}]))
    ssd, ga = cfg["_methods"]
    assert set(search_space(ssd, "classifier")) == {"alpha", "lam"}
    sp = search_space(ga, "classifier", {"ga": {"epochs": [1, 3, "int"]}})
    assert sp["lr"] == [pytest.approx(0.002), pytest.approx(0.2), "log"] and sp["epochs"] == [1, 3, "int"]


def test_llm_tuning_forgets_as_many_authors_as_the_reported_run(tmp_path):
    # 12 authors: the reported forget10 is 2 authors; the 10-author tuning run forgets 2 too (its own
    # 10% would be 1), so that epochs and lr mean the same number of steps in both runs.
    cfg = validate_config(tiny_llm(tmp_path / "run", data={"authors": 12, "n_real_authors": 2, "n_world_facts": 4,
                                                           "vocab_size": 600}))
    (raw,), split = LLMTuning().tuning_configs(cfg, cfg["tune"], tmp_path)
    assert raw["data"]["authors"] == 10 and raw["data"]["forget_authors"] == 2
    assert split["sizes"]["tuning_forget"] == split["sizes"]["reported_forget"] == 40
    assert not set(split["reported_forget_questions"]) & set(split["tuning_forget_questions"])
    tuning = validate_config(raw)
    assert tuning["data"]["forget_authors"] == 2
    with pytest.raises(ConfigError, match="data.forget_authors"):
        validate_config(tiny_llm(tmp_path / "run", data={"authors": 6, "forget_authors": 6}))


def test_llm_tuning_seeds_score_the_geometric_mean_under_the_worst_utility(tmp_path):
    cfg = validate_config(tiny_llm(tmp_path / "run", tune={"trials": 1, "scenarios": 3, "seed": 4}))
    raws, split = LLMTuning().tuning_configs(cfg, cfg["tune"], tmp_path)
    assert [r["seed"] for r in raws] == split["tuning_seeds"] == [4, 5, 6]
    assert len({r["out_dir"] for r in raws}) == 3 and len({json.dumps(r["data"]) for r in raws}) == 1
    rows = [{"forget_quality": 0.1, "MU/target": 0.95}, {"forget_quality": 0.001, "MU/target": 0.92},
            {"forget_quality": 1.0, "MU/target": 1.0}]
    sc = LLMTuning().score(rows, [], cfg["tune"])
    assert sc["feasible"] and math.isclose(sc["value"], 10 ** (-4 / 3)) and sc["constraints"]["MU/target"] == 0.92
    rows[1]["MU/target"] = 0.8
    sc = LLMTuning().score(rows, [], cfg["tune"])
    assert not sc["feasible"] and math.isclose(sc["violation"], 0.1) and sc["objective"] < -PENALTY


@pytest.mark.parametrize("section, key, value", [("data", "benchmark", "tofu"), ("model", "pretrained", "some/dir"),
                                                 ("oracle", "pretrained", "some/retain")])
def test_llm_tuning_refuses_user_files_naming_the_key(tmp_path, section, key, value):
    # The tuning split is carved from the built-in authors: a config on the user's benchmark files or
    # checkpoint must not be tuned silently on the built-in data.
    cfg = validate_config(tiny_llm(tmp_path / "run"))
    cfg[section] = {**(cfg.get(section) or {}), key: value}
    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        LLMTuning().tuning_configs(cfg, cfg["tune"], tmp_path)


@pytest.mark.slow
def test_llm_tune_end_to_end_on_other_authors(tmp_path):
    summary = tune(tiny_llm(tmp_path / "run"), tmp_path / "t", quiet=True)
    split = summary["split"]
    assert not set(split["reported_forget_questions"]) & set(split["tuning_forget_questions"])
    assert not set(split["reported_utility_questions"]) & set(split["tuning_utility_questions"])
    assert split["sizes"]["tuning_authors"] == 5
    assert split["sizes"]["tuning_forget"] == split["sizes"]["reported_forget"]  # same size: steps per epoch agree
    m = summary["methods"]["npo"]
    assert m["n_complete"] == 2 and m["chosen"] is not None
    assert all("MU/target" in t["constraints"] for t in m["trials"])
    assert (tmp_path / "t" / "report.html").is_file()


def test_demo_uses_the_tuned_presets_of_its_scenario():
    from unlearnx.experiments import get_task
    from unlearnx.methods.presets import DIGITS_CLASSWISE_TUNED, DIGITS_RANDOM_TUNED

    task = get_task("classification")
    cfg = validate_config(task.demo_config())
    for e in cfg["_methods"]:
        assert e["hparams"] == DIGITS_CLASSWISE_TUNED[e["method"]]
    random = validate_config(task.demo_config(options={"random": True}))
    assert random["scenario"]["kind"] == "random"
    for e in random["_methods"]:
        assert e["hparams"] == DIGITS_RANDOM_TUNED[e["method"]]
    assert DIGITS_RANDOM_TUNED["salun"] != DIGITS_CLASSWISE_TUNED["salun"]
    explicit = validate_config(task.demo_config(methods=["ssd"]))["_methods"]
    assert explicit[0]["hparams"] == DIGITS_CLASSWISE_TUNED["ssd"]


def test_random_forgetting_split_is_disjoint(tmp_path):
    cfg = tiny_cls(tmp_path / "run", scenario={"kind": "random", "fraction": 0.1}, tune={"trials": 1})
    summary = tune(cfg, tmp_path / "t", quiet=True)
    split = summary["split"]
    rep = set(split["reported_forget_indices"])
    val, fit, forget = (set(split[k]) for k in ("validation_indices", "tuning_train_indices", "tuning_forget_indices"))
    assert rep and forget and not (val | fit | forget) & rep and forget <= fit and not val & fit
    assert summary["methods"]["GA"]["n_complete"] == 1


def test_missing_optuna_exits_2_with_the_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_cls(tmp_path / "run")))
    assert cli.main(["tune", str(path), "--out", str(tmp_path / "t")]) == 2
    assert "unlearnx[tune]" in capsys.readouterr().err
