"""`budgeted`: one hyper-parameter of a base method chosen by a utility budget on a check set."""
import pytest
import torch

import unlearnx as ux
from unlearnx.eval.classification import accuracy

LRS = [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3]


def _budgeted(scenario, model, **hp):
    return ux.unlearn(model, "budgeted", forget=scenario.forget, retain=scenario.retain, seed=0, progress=False, **hp)


def test_budgeted_keeps_the_strongest_value_within_the_budget(classwise):
    # Measured (class 0, seed 0, Boundary Expanding): check accuracy 100 -> 100 (lr 1e-3), 99.6 (3e-3),
    # 97.3 (1e-2, over the 2-point budget: the walk stops); lr 3e-3 gives UA 100, RA 99.6, TA 95.7.
    scenario, model, orig, ref = classwise
    res = _budgeted(scenario, model, base="boundary_expand", values=LRS)
    trials, base = res.log["trials"], res.log["check_accuracy"]
    assert [v for v, _, _ in trials] == LRS[:len(trials)] and 2 <= len(trials) < len(LRS)
    assert all(base - acc <= 2.0 for _, acc, _ in trials[:-1]) and base - trials[-1][1] > 2.0  # stops at the first over
    assert all(f is None for *_, f in trials) and "forgot" not in res.log  # no forget accuracy without a target
    assert res.log["budget_met"] and res.log["chosen"] == trials[-2][0] and res.log["check_set"] == "retain"
    # the result is the base method's own run at the chosen value: same seed, same data order
    alone = ux.unlearn(model, "boundary_expand", forget=scenario.forget, retain=scenario.retain, seed=0,
                       progress=False, lr=res.log["chosen"])
    assert all(torch.equal(a, b) for a, b in zip(alone.model.parameters(), res.model.parameters()))
    m = ux.evaluate(res.model, scenario=scenario)
    assert m["UA"] >= 90.0 and abs(m["UA"] - ref["UA"]) <= 10.0, m  # forgets as Retrain does
    assert m["RA"] >= orig["RA"] - 2.0 and m["TA"] >= orig["TA"] - 3.0, m


def test_budgeted_flags_a_budget_no_value_meets(classwise):
    # A first value already over the budget is the one kept (the mildest asked for), and flagged.
    scenario, model, _, _ = classwise
    res = _budgeted(scenario, model, base="boundary_expand", values=[0.3, 1e-3], max_drop=0.0)
    assert len(res.log["trials"]) == 1 and res.log["chosen"] == 0.3 and not res.log["budget_met"]


def test_budgeted_reads_a_given_clean_check_set(classwise):
    scenario, model, _, _ = classwise
    res = _budgeted(scenario, model, base="ft", knob="epochs", values=[1, 2], lr=0.01, check=scenario.test)
    assert res.log["check_set"] == "given" and res.log["knob"] == "epochs"
    assert res.log["check_accuracy"] == pytest.approx(accuracy(model, scenario.test))
    ft = ux.unlearn(model, "ft", retain=scenario.retain, seed=0, progress=False, lr=0.01, epochs=1)
    assert res.log["trials"][0][1] == pytest.approx(accuracy(ft.model, scenario.test))


def test_budgeted_forget_target_takes_the_mildest_value_that_forgets(classwise):
    # forget_target: the first value (mildest first) whose accuracy on D_f is <= the target; the budget
    # is reported. With a zero budget the budget rule alone keeps lr 1e-3 (which does not forget).
    scenario, model, orig, ref = classwise
    res = _budgeted(scenario, model, base="boundary_expand", values=LRS, forget_target=10.0, max_drop=0.0)
    trials = res.log["trials"]
    assert [v for v, _, _ in trials] == LRS[:len(trials)]
    assert all(f > 10.0 for *_, f in trials[:-1]) and trials[-1][2] <= 10.0 and res.log["forgot"]
    assert res.log["chosen"] == trials[-1][0]
    assert res.log["budget_met"] == (res.log["check_accuracy"] - trials[-1][1] <= 0.0)
    assert accuracy(res.model, scenario.forget) == pytest.approx(trials[-1][2])
    plain = _budgeted(scenario, model, base="boundary_expand", values=LRS, max_drop=0.0)
    assert accuracy(plain.model, scenario.forget) > 10.0 or plain.log["chosen"] == res.log["chosen"]
    # no value reaches the target: the budget rule's choice, flagged
    weak = _budgeted(scenario, model, base="boundary_expand", values=[1e-5, 2e-5], forget_target=10.0)
    rule = _budgeted(scenario, model, base="boundary_expand", values=[1e-5, 2e-5])
    assert weak.log["forgot"] is False and all(f > 10.0 for *_, f in weak.log["trials"])
    assert weak.log["chosen"] == rule.log["chosen"] and weak.log["budget_met"] == rule.log["budget_met"]


@pytest.mark.parametrize("hp, error, match", [
    ({"base": "no_such_method", "values": [1e-3]}, ValueError, "base"),
    ({"base": "budgeted", "values": [1e-3]}, ValueError, "base"),
    ({"knob": "momentum_typo", "values": [1e-3]}, ValueError, "knob"),
    ({"lr": 0.1, "values": [1e-3]}, ValueError, "values="),
    ({}, ValueError, "values"),
    ({"values": []}, ValueError, "values"),
    ({"values": [-1.0]}, ValueError, "lr"),
    ({"values": [1e-3], "max_drop": -1.0}, ValueError, "max_drop"),
    ({"values": [1e-3], "check": "clean.pt"}, ValueError, "check"),
    ({"values": [1e-3], "check_fraction": 0.0}, ValueError, "check_fraction"),
    ({"values": [1e-3], "forget_target": 101}, ValueError, "forget_target"),
    ({"values": [1e-3], "alpha": 3.0}, TypeError, "alpha"),
])
def test_budgeted_refuses_bad_arguments(hp, error, match):
    with pytest.raises(error, match=match):
        ux.methods.get("budgeted")(**hp)
