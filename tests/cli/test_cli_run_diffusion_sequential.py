"""Sequential erasure in `task: diffusion` (scenario.kind sequential): validation, the per-step
Retrain oracles' data, the per-step results and the report's sequential table; canvas_metrics with
several erased styles."""
import json

import pytest
import torch

pytest.importorskip("diffusers")

from unlearnx.experiments import ConfigError, get_task, run_experiment, validate_config  # noqa: E402


def tiny(out, **extra):
    cfg = {"task": "diffusion", "name": "tiny-sequential", "out_dir": str(out), "seeds": [0],
           "data": {"name": "canvas", "size": 8, "n_per_pair": 4, "n_styles": 3, "n_objects": 2},
           "scenario": {"kind": "sequential", "targets": ["ocean", "crimson"]},
           "model": {"block_out_channels": [16, 32], "text_dim": 16},
           "train": {"steps": 10, "batch_size": 16},
           "evaluator": {"epochs": 2},
           "methods": [{"name": "uce"}, {"name": "esd_x", "iterations": 3}],
           "eval": {"n_per_prompt": 2, "sample_steps": 3, "grid_prompts": 2}}
    cfg.update(extra)
    return cfg


@pytest.mark.parametrize("change, message", [
    (lambda c: c["scenario"].update(targets=["ocean", "no-such-style"]), "scenario.targets[1]"),
    (lambda c: c["scenario"].update(targets=["ocean", "ocean"]), "scenario.targets': repeated"),
    (lambda c: c["scenario"].update(targets=["ocean"]), "scenario.targets': expected 2 to 2"),
    (lambda c: c["scenario"].update(targets=["ocean", "crimson", "forest"]), "scenario.targets': expected 2 to 2"),
    (lambda c: c["scenario"].update(targets="ocean"), "scenario.targets': expected a list"),
    (lambda c: c["scenario"].update(target="ocean"), "scenario.target'"),
    (lambda c: c.update(scenario={"kind": "style", "targets": ["ocean", "crimson"]}), "scenario.targets': only"),
    (lambda c: c.update(scenario={"kind": "sequential"}, data={"name": "canvas", "size": 8, "n_styles": 2}),
     "data.n_styles"),
    (lambda c: c.update(data={"name": "digits", "size": 8}), "scenario.kind"),
    (lambda c: c.update(attacks=["seed_search"]), "attacks"),
])
def test_sequential_config_errors_name_the_key(tmp_path, change, message):
    cfg = tiny(tmp_path / "out")
    change(cfg)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_config(cfg)


def test_default_targets_and_unchanged_single_target_scenarios(tmp_path):
    cfg = tiny(tmp_path)
    cfg["scenario"] = {"kind": "sequential"}
    cfg["data"]["n_styles"] = 4
    assert validate_config(cfg)["scenario"]["targets"] == ["crimson", "ocean", "forest"]
    cfg["data"]["n_styles"] = 3  # one style must stay for IRA: two steps
    assert validate_config(cfg)["scenario"]["targets"] == ["crimson", "ocean"]
    # The single-target kinds keep exactly their keys (they enter the cached steps' keys).
    for kind in ("style", "object"):
        assert validate_config(tiny(tmp_path, scenario={"kind": kind}))["scenario"] == {"kind": kind, "target": None}
    demo = validate_config(get_task("diffusion").demo_config(quick=True))
    assert demo["scenario"] == {"kind": "style", "target": None}


def test_canvas_metrics_with_several_erased_styles():
    """UA per erased style, their mean, IRA/CRA on the other styles, from labels planted in the pixels."""
    from unlearnx.eval.diffusion import canvas_metrics, canvas_prompt_grid

    styles, objects = ["crimson", "ocean", "forest"], ["circle", "square"]
    prompts, sids, oids = canvas_prompt_grid(styles, objects, 4)

    class Reads(torch.nn.Module):  # "classifies" an image by the id written into its channel `ch`
        def __init__(self, ch, k):
            super().__init__()
            self.ch, self.k, self.w = ch, k, torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, self.ch, 0, 0].long(), self.k).float() + self.w

    pred_s, pred_o = sids.clone(), oids.clone()
    pred_s[sids == 1] = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0])  # ocean: 6 of 8 not classified as ocean
    pred_s[sids == 0] = torch.tensor([0, 0, 0, 0, 0, 0, 2, 1])  # crimson: 2 of 8
    pred_s[(sids == 2).nonzero()[:2, 0]] = 0                      # forest (retained): 6 of 8 right
    pred_o[(sids == 2).nonzero()[:1, 0]] = 1 - pred_o[(sids == 2).nonzero()[0, 0]]  # 7 of 8 objects right
    images = torch.zeros(len(prompts), 3, 2, 2)
    images[:, 0, 0, 0], images[:, 1, 0, 0] = pred_s.float(), pred_o.float()
    kw = {"style_clf": Reads(0, 3), "object_clf": Reads(1, 2), "styles": styles, "objects": objects,
          "n_per_prompt": 4, "images": images}
    both = canvas_metrics(None, target=["ocean", "crimson"], **kw)
    assert both["ua_per_target"] == {"ocean": 75.0, "crimson": 25.0}
    assert both["ua"] == 50.0 and both["ira"] == 75.0 and both["cra"] == 87.5
    one = canvas_metrics(None, target="ocean", **kw)
    assert one["ua"] == 75.0 and "ua_per_target" not in one
    with pytest.raises(ValueError, match="generations"):
        canvas_metrics(None, target="ocean", **{**kw, "images": images[:5]})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("seq") / "out"
    return out, run_experiment(tiny(out), quiet=True)


def test_retrain_at_step_k_never_saw_the_styles_of_steps_1_to_k(finished):
    _, res = finished
    runs = res["runs"]["0"]
    # 4 images per pair x 2 objects per style; styles of the canvas: crimson, ocean, forest.
    assert runs["Retrain step 1"]["trained_on_styles"] == ["crimson", "forest"]
    assert runs["Retrain step 1"]["n_train"] == 16
    assert runs["Retrain step 2"]["trained_on_styles"] == ["forest"] and runs["Retrain step 2"]["n_train"] == 8
    assert runs["Retrain step 2"]["erased"] == ["ocean", "crimson"]
    assert res["scenario"] == {"data": "canvas", "kind": "sequential", "targets": ["ocean", "crimson"],
                               "n_train": 24, "n_forget": 16, "n_retain": 8}


def test_per_step_results(finished):
    _, res = finished
    seq = res["sequential"]
    assert seq["targets"] == ["ocean", "crimson"]
    assert [s["step"] for s in seq["steps"]] == [1, 2] and seq["steps"][1]["erased"] == ["ocean", "crimson"]
    for st in seq["steps"]:
        assert list(st["rows"]) == ["Retrain", "Original", "uce", "esd_x"]
        for row in st["rows"].values():
            per = [row[f"UA/{s}"] for s in st["erased"]]
            assert row["UA"] == pytest.approx(sum(per) / len(per))  # equal generations per style
            assert row["UA-last"] == row[f"UA/{st['erased'][-1]}"]
            assert ("UA-earlier" in row) == (st["step"] > 1)
            assert all(0.0 <= row[k] <= 100.0 for k in ("UA", "IRA", "CRA"))
        assert st["rows"]["Retrain"]["Avg.Gap"] == 0.0
    s1, s2 = (s["rows"] for s in seq["steps"])
    # The original is sampled once: its UA of ocean is the same at both steps.
    assert s1["Original"]["UA/ocean"] == s2["Original"]["UA/ocean"] == s2["Original"]["UA-earlier"]
    assert res["rows"] == s2  # the main table is the last step's
    runs = res["runs"]["0"]
    for label in ("uce", "esd_x"):
        # A method's cost of reaching step 2 is both its steps; Retrain's is its one training.
        both = runs[f"{label} step 1"]["seconds"] + runs[f"{label} step 2"]["seconds"]
        assert s2[label]["RTE-s"] == pytest.approx(both)
        assert s2[label]["changed-params"] > 0
    assert s2["Retrain"]["RTE-s"] == pytest.approx(runs["Retrain step 2"]["seconds"])
    assert res["hparams"]["esd_x"]["resolved"]["iterations"] == 3
    assert "After the last step (2 styles erased)" in res["reading"] and "Retention:" in res["reading"]


def test_report_has_the_sequential_table_and_a_rerun_reuses_every_step(finished):
    out, _ = finished
    md = (out / "report.md").read_text()
    assert "## Sequential erasure: after each step" in md
    header = next(line for line in md.splitlines() if line.startswith("| Model | 1: UA ocean"))
    assert "| 1: mean UA | 1: IRA | 2: UA crimson | 2: mean UA | 2: IRA |" in header
    assert "| esd_x |" in md and "Results after the last step" in md
    assert "Sequential erasure" in (out / "report.html").read_text()
    assert "sequential" in json.loads((out / "results.json").read_text())
    res = run_experiment(tiny(out), quiet=True)
    assert sorted(res["cached_steps"]["0"]) == sorted(
        ["style evaluator", "object evaluator", "Original", "Retrain step 1", "Retrain step 2",
         "uce step 1", "uce step 2", "esd_x step 1", "esd_x step 2"])
    assert (out / "seed-0" / "methods" / "esd_x_step_2.safetensors").is_file()
    assert (out / "seed-0" / "retrain_step_2.json").is_file()
    assert "erase styles ['ocean', 'crimson'] one after another" in get_task("diffusion").summary(res)


def test_other_targets_reuse_the_steps_they_share(finished, tmp_path):
    import shutil

    out, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    cfg = tiny(copy, scenario={"kind": "sequential", "targets": ["ocean", "forest"]}, methods=[{"name": "uce"}])
    res = run_experiment(cfg, quiet=True)
    # Step 1 (erase ocean) is the same request: reused; step 2 erases another style: computed.
    assert sorted(res["cached_steps"]["0"]) == sorted(["style evaluator", "object evaluator", "Original",
                                                      "Retrain step 1", "uce step 1"])
    assert res["runs"]["0"]["Retrain step 2"]["trained_on_styles"] == ["crimson"]


def test_eval_only_reloads_every_step_and_reproduces_the_table(finished, tmp_path):
    import shutil

    out, res = finished
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    again = run_experiment(tiny(copy), quiet=True, eval_only=True)
    assert again["command"] == "eval"
    # Same saved models, same sampling noise: the same per-step metrics.
    assert again["sequential"]["steps"] == res["sequential"]["steps"]
