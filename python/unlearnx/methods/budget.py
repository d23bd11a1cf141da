"""Utility budgets: a hyper-parameter chosen per request by the accuracy it leaves on a check set.

An unlearning method's strength knob (a learning rate, SSD's α) has a narrow working range that moves
from one model and request to the next (docs/benchmarks.md: Boundary Expanding removes a BadNets
backdoor within the 2-point clean-accuracy budget at lr 1.5e-3 on some seeds and breaks the budget
there on others). The rule used here, as the unlearning papers state their targets ("the best
forgetting subject to a utility drop of at most d"), is: walk the knob's values from the mildest to the
most aggressive and keep the last one whose model stays within `max_drop` accuracy points of the
model before unlearning on a check set, stopping at the first that breaks it.

`check_set` builds that check set (shared by `budgeted` and `ssd_budget`); `Budgeted` applies the rule
to any classifier method.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from unlearnx.methods.registry import UnlearningMethod, available, get, register_method
from unlearnx.methods.training import dataset_of, model_device, seeded

__all__ = ["Budgeted", "check_set", "validate_check", "validate_forget_target", "walk_budget"]


def validate_check(check, check_fraction) -> None:
    """The checks of the `check` / `check_fraction` hyper-parameters, naming them."""
    if isinstance(check_fraction, bool) or not isinstance(check_fraction, (int, float)) \
            or not 0.0 < check_fraction <= 1.0:
        raise ValueError(f"check_fraction must be in (0, 1], got {check_fraction!r}")
    if check is not None:
        if not isinstance(check, (Dataset, DataLoader)):
            raise ValueError(f"check must be a labelled torch Dataset or DataLoader (a clean set the caller "
                             f"trusts), got {type(check).__name__}")
        dataset_of(check, "check")


def check_set(check, check_fraction: float, retain, seed: int) -> tuple[Dataset, str]:
    """(the check set, its source): `check` as given ("given": a labelled set the caller trusts to be
    clean), else a seeded `check_fraction` of D_r ("retain": the only data an unlearner holds besides
    D_f; the test set is never read). Corrective unlearning needs the former: there D_r still holds
    the unidentified poison, so removing a backdoor *lowers* the accuracy on a D_r split."""
    if check is not None:
        return dataset_of(check, "check"), "given"
    if retain is None:
        raise ValueError("a utility budget needs check= (a clean labelled set) or retain= data to split one from")
    retain_ds = dataset_of(retain, "retain")
    g = torch.Generator().manual_seed(seed)
    n = max(1, round(check_fraction * len(retain_ds)))
    return Subset(retain_ds, torch.randperm(len(retain_ds), generator=g)[:n].sort().values.tolist()), "retain"


_OWN = {"base": "boundary_expand", "knob": "lr", "values": None, "max_drop": 2.0, "check": None,
        "check_fraction": 0.2, "forget_target": None}


def validate_forget_target(target) -> None:
    """`forget_target`: None or an accuracy on D_f in percent, naming the argument."""
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))
                               or not 0.0 <= target <= 100.0):
        raise ValueError(f"forget_target must be None or a percentage in [0, 100], got {target!r}")


def walk_budget(candidates, trial, *, base_acc: float, max_drop: float, forget_target=None):
    """The selection rule of `budgeted` and `ssd_budget`. `candidates` are ordered mildest first;
    `trial(c)` -> (check accuracy, accuracy on D_f or None, payload) for candidate c.

    Budget rule (forget_target None): the last candidate whose check accuracy is within `max_drop`
    points of `base_acc`, the walk stopping at the first one over it (the first candidate when even it
    is over). forget_target: the first candidate whose accuracy on D_f is <= forget_target, whatever
    its drop; when none is, the budget rule's choice (the walk goes on past the budget looking for it).
    Returns (candidate, its payload, trials [(candidate, check accuracy, forget accuracy)],
    budget_met: the chosen candidate is within the budget, forgot: it reached forget_target)."""
    trials, chosen, over = [], None, False
    for c in candidates:
        acc, f_acc, payload = trial(c)
        trials.append((c, acc, f_acc))
        within = base_acc - acc <= max_drop
        hit = forget_target is not None and f_acc <= forget_target
        if hit or (within and not over) or chosen is None:
            chosen = (c, payload, within, hit)
        if hit:
            break
        if not within:
            over = True  # the budget rule's choice is fixed from here on
            if forget_target is None:
                break
    c, payload, met, forgot = chosen
    return c, payload, trials, met, forgot


@register_method("budgeted")
class Budgeted(UnlearningMethod):
    """Any classifier method (`base`) with one hyper-parameter (`knob`) chosen by a utility budget:
    `values` are tried in the order given (mildest first: ascending for a learning rate or a number
    of epochs), each as a full run of `base` from the model before unlearning, with the same seed and
    data order as `unlearnx.unlearn(model, base, knob=value, seed=seed)`; the result is the run at the
    last value whose accuracy on the check set is within `max_drop` points of the model's before
    unlearning, stopping at the first value over the budget. When even the first value breaks the
    budget its run is kept and log["budget_met"] is False.

    The check set is `check` (a labelled Dataset/DataLoader the caller trusts to be clean: Python API),
    else a seeded `check_fraction` of D_r (`check_set`). Every other hyper-parameter goes to `base`
    (its defaults apply). Cost: up to len(values) runs of `base` plus one forward pass over the check
    set each; the reported time includes the search. log: the chosen run's log, plus "knob",
    "chosen", "trials" [(value, check accuracy, forget accuracy or None)], "check_accuracy" (before
    unlearning), "budget_met", "check_set" ("given" or "retain").

    forget_target (percent; default None): the rule becomes "the mildest value whose accuracy on D_f
    (its labels as given: the class for class-wise forgetting, the poisoned label for identified
    poison) is <= forget_target", the budget reported (budget_met) rather than enforced; when no
    value reaches it, the budget rule decides and log["forgot"] is False.
    """

    paper = "utility-budget selection of one hyper-parameter of a base method (unlearnx; docs/methods.md)"
    requires = ("forget", "retain")
    defaults = dict(_OWN)

    @classmethod
    def _base_class(cls, hparams):
        name = hparams.get("base", _OWN["base"])
        if not isinstance(name, str) or name == "budgeted" or name not in available("classifier"):
            others = [m for m in available("classifier") if m != "budgeted"]
            raise ValueError(f"base must be the name of another classifier method (one of {others}), got {name!r}")
        return get(name, "classifier")

    @classmethod
    def defaults_for(cls, hparams):
        try:
            base = cls._base_class(hparams)
        except ValueError:
            return cls.defaults  # the instance refuses the base, naming it
        return {**base.defaults, **_OWN}

    def __init__(self, **hparams):
        base_cls = self._base_class(hparams)
        accepted = self.defaults_for(hparams)
        unknown = sorted(set(hparams) - set(accepted))
        if unknown:
            raise TypeError(f"Budgeted[{base_cls.name}] got unknown hyper-parameter(s) {unknown}; "
                            f"valid ones: {sorted(accepted)}")
        own = {**_OWN, **{k: v for k, v in hparams.items() if k in _OWN}}
        knob, values = own["knob"], own["values"]
        if not isinstance(knob, str) or knob not in base_cls.defaults or knob in _OWN:
            raise ValueError(f"knob must name a hyper-parameter of {base_cls.name!r} (one of "
                             f"{sorted(set(base_cls.defaults) - set(_OWN))}), got {knob!r}")
        if knob in hparams and knob not in _OWN:
            raise ValueError(f"{knob} is chosen by the budget: give its candidates as values=[...], not {knob}=")
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"values must be a non-empty list of {knob} candidates, mildest first, got {values!r}")
        max_drop = own["max_drop"]
        if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not math.isfinite(max_drop) \
                or max_drop < 0:
            raise ValueError(f"max_drop must be a finite number of accuracy points >= 0, got {max_drop!r}")
        validate_check(own["check"], own["check_fraction"])
        validate_forget_target(own["forget_target"])
        base_hp = {k: v for k, v in hparams.items() if k not in _OWN}
        # Every candidate must be a valid setting of the base (the base's own checks, naming the argument).
        self._bases = [base_cls(**base_hp, **{knob: v}) for v in values]
        self.base_cls = base_cls
        self.hparams = {**base_cls.defaults, **base_hp, **own, "values": list(values)}

    def run(self, model, *, forget, retain, seed, progress):
        from unlearnx.eval.classification import accuracy

        hp = self.hparams
        check, source = check_set(hp["check"], hp["check_fraction"], retain, seed)
        base_acc = accuracy(model, check)
        loaders = [ld for ld in (forget, retain) if isinstance(ld, DataLoader) and ld.generator is not None]
        rng_states = [ld.generator.get_state() for ld in loaders]
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        target = hp["forget_target"]
        forget_ds = dataset_of(forget, "forget") if target is not None else None

        def trial(candidate):
            _, algo = candidate
            for ld, state in zip(loaders, rng_states):  # each trial sees the data order of a standalone run
                ld.generator.set_state(state)
            with seeded(seed, model_device(model)):
                log = algo.run(model, forget=forget if "forget" in algo.requires else None,
                               retain=retain if "retain" in algo.requires else None, seed=seed, progress=progress)
            acc = accuracy(model, check)
            f_acc = accuracy(model, forget_ds) if target is not None else None
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(saved)
            return acc, f_acc, (state, log)

        (chosen, _), (state, log), trials, met, forgot = walk_budget(
            list(zip(hp["values"], self._bases)), trial, base_acc=base_acc, max_drop=hp["max_drop"],
            forget_target=target)
        model.load_state_dict(state)
        extra = {} if target is None else {"forgot": forgot}
        return {**dict(log or {}), "knob": hp["knob"], "chosen": chosen,
                "trials": [(value, acc, f_acc) for (value, _), acc, f_acc in trials],
                "check_accuracy": base_acc, "budget_met": met, "check_set": source, **extra}
