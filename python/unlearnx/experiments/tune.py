"""`unlearnx tune CONFIG.yaml`: hyper-parameter search per method under a utility budget (Optuna).

    from unlearnx.experiments.tune import tune
    summary = tune(load_config("configs/tune/digits_classwise.yaml"), "runs/tune-digits", trials=10)

For every method of the config, one Optuna study (TPE sampler seeded by `tune.seed`, stored in
<out>/study.journal so that an interrupted search resumes where it stopped) searches the method's
space (`SEARCH_SPACES`, overridable per config) on a **tuning scenario that is disjoint from what the
config's run reports** (never tune on what you report), built by the task's `TuningAdapter`:

- classification (`ClassificationTuning`): the tuning data are the reported run's retain set D_r
  only (seed `seeds[0]`): a random `tune.val_fraction` of D_r is the tuning "test" set, the rest the
  tuning training set, and the tuning forget set is drawn from that rest: the same fraction (random
  forgetting, with seed `tune.seed`), or other classes than the reported ones (class-wise: the
  smallest class ids not forgotten in the reported run; sub-class: another super-class). So the
  reported forget set and test set are never trained on, unlearned or evaluated by the tuning runs;
  the tuning models train on part of D_r, which is the training data of the reported models too.
  A tuning original and a tuning Retrain are trained once with the config's recipe (cached by the
  engine's StepStore in <out>/work) and every trial is evaluated against them.
  Objective: minimise Avg. Gap to the tuning Retrain subject to RA and TA drops <= `tune.ra_drop` /
  `tune.ta_drop` points (default 2) against the tuning original. `tune.scenarios: n` tunes on n
  such forget sets at once (the next n unforgotten classes, or n random draws), each with its own
  tuning original and Retrain: a trial scores its mean Avg. Gap under its worst RA / TA drop.
- llm (`LLMTuning`): the tuning run has data.authors = N - k (N the config's authors, k = its
  forget10 size): the reported forget10 authors are never trained on, unlearned or evaluated; the
  tuning forget set is the last k authors of the reported retain90 (data.forget_authors = k: the
  same size as the reported forget set, so epochs and lr mean the same number of steps), and tuning
  utility is scored on the tuning retain QA read from the end, which are checked to be disjoint
  from the first `eval.retain_subset` retain QA that the reported utility uses. The held sets
  (real_authors, world_facts) are regenerated for the tuning size; their overlap with the
  reported ones is measured and written to tune.json.
  Objective: maximise forget quality (KS p-value against the tuning Retrain; the study optimises
  its log10) subject to model utility >= `tune.utility_ratio` (0.9) x the tuning target's.
  `tune.scenarios: n` runs the tuning data with n seeds (seed, seed+1, ...; each its own tuning
  target and Retrain): a trial scores the geometric mean forget quality under its worst MU ratio.
- diffusion (`DiffusionTuning`): the tuning run erases **other concepts** than the reported one
  (the next `tune.scenarios` styles / objects / digit classes after the reported target, in the
  data's order) on **other images**: its data, evaluators, initial weights and sampling noise come
  from the tuning seed (1000 + `tune.seed`, moved past any reported seed s and s + 7919, the
  evaluators' data seed), so no image, model or generation of the reported run is trained on,
  unlearned or evaluated; the concepts themselves (the reported target among them) are the same
  vocabulary, as in class-wise classification tuning. Objective: maximise UA subject to IRA and
  CRA (digits: IRA) >= `tune.utility_ratio` (0.9) x the tuning original's, the issue's retain
  budget, with `tune.fid_ratio` (e.g. 1.2) evaluator-FID <= that x the tuning original's and with
  `tune.time_ratio` (e.g. 0.1) the unlearning time <= that x the tuning Retrain's. Sequential
  erasure is not tuned (tune its method on a single-target scenario).

Infeasible trials get the objective PENALTY + violation (minimise; -PENALTY - violation when
maximising), worse than every feasible trial; the chosen values are those of the best feasible
trial (ties: the higher utility). Trial 0 of every study is the config's own values (the
method's defaults or preset) when they lie in the space, so the tuned values are never worse than
them on the tuning objective. <out>/tune.json has every trial (params, objective, constraints,
metrics), the chosen values and the split; report.md / report.html the tables and one trade-off
figure per method; `methods_yaml(summary)` the chosen values as a `methods:` YAML snippet.
"""
from __future__ import annotations

import copy
import io
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from unlearnx.experiments.config import ConfigError, Field, check_range, normalise_name, suggest, validate_section
from unlearnx.experiments.run import step_key

__all__ = ["TUNE_SCHEMA", "SEARCH_SPACES", "PENALTY", "TuningAdapter", "ClassificationTuning", "LLMTuning",
           "DiffusionTuning",
           "CorrectiveTuning", "register_tuning", "get_tuning", "validate_tune", "search_space", "tune", "methods_yaml"]

PENALTY = 1000.0

TUNE_SCHEMA: dict = {
    "trials": Field("int", 20, help="trials per method (a resumed study runs only the missing ones)"),
    "seed": Field("int", 0, help="seed of the TPE sampler, the validation split and the tuning run"),
    "startup_trials": Field("int", None, help="random trials before TPE models the results (default trials // 3, "
                                              "at least 1)"),
    "methods": Field("any", None, help="labels or names of the config's methods to tune (default: all)"),
    "scenarios": Field("int", 1, help="classification: tuning forget sets averaged per trial (other classes, or "
                                      "random draws with seeds seed, seed+1, ...); diffusion: other concepts "
                                      "erased per trial; llm: tuning runs with seeds seed, seed+1, ... (models, "
                                      "data order, methods)"),
    "val_fraction": Field("number", 0.2, help="classification: share of D_r held out as the tuning test set"),
    "ra_drop": Field("number", 2.0, help="classification: largest allowed RA drop (points) vs the tuning original"),
    "ta_drop": Field("number", 2.0, help="classification: largest allowed TA drop (points) vs the tuning original"),
    "utility_ratio": Field("number", 0.9, help="llm: smallest allowed model utility / the tuning target's; "
                                               "diffusion: smallest allowed IRA and CRA / the tuning original's"),
    "fid_ratio": Field("number", None, help="diffusion: largest allowed evaluator-FID / the tuning original's "
                                            "(the issue's 1.2; default: no FID bound)"),
    "time_ratio": Field("number", None, help="diffusion: largest allowed unlearning time / the tuning Retrain's "
                                              "training time (the issue's 0.1; default: no time bound)"),
    "space": Field("dict", {}, help="{method: {hparam: [low, high, 'log'|'float'|'int'] or {choices: [...]}}}"),
}

# The main knobs of each method (besides lr and epochs, which every method that has them gets:
# lr log-uniform within 10x either side of the config's value, epochs 1 .. 2x the config's).
# Bounds are (low, high, kind); kind "log" (log-uniform), "float" (uniform) or "int".
SEARCH_SPACES: dict[str, dict[str, dict[str, tuple]]] = {
    "classifier": {
        "l1_sparse": {"gamma": (1e-4, 1e-2, "log")},
        "salun": {"mask_ratio": (0.1, 0.9, "float")},
        "salun_soft": {"mask_ratio": (0.1, 0.9, "float")},
        # SSD: alpha selects the parameters (importance on D_f > alpha x on D), lambda dampens them.
        "ssd": {"alpha": (1.0, 100.0, "log"), "lam": (0.1, 10.0, "log")},
        "lfssd": {"alpha": (1.0, 100.0, "log"), "lam": (0.1, 10.0, "log")},
        "fisher": {"alpha": (1e-7, 1e-3, "log"), "max_std": (1e-3, 1.0, "log")},
        "influence": {"alpha": (10.0, 3000.0, "log")},
        "scrub": {"alpha": (1e-4, 1e-1, "log")},
        "bad_teacher": {"temperature": (0.5, 4.0, "float")},
    },
    "causal_lm": {
        "graddiff": {"alpha": (0.1, 10.0, "log")},  # retain-loss weight
        "npo": {"beta": (0.01, 1.0, "log"), "alpha": (0.1, 10.0, "log")},
        "simnpo": {"beta": (0.5, 10.0, "log"), "gamma": (0.0, 2.0, "float")},
        "idkdpo": {"beta": (0.01, 1.0, "log")},
        "undial": {"beta": (1.0, 30.0, "log")},
        "wga": {"beta": (0.1, 10.0, "log")},
        "rmu": {"steering_scale": (1.0, 50.0, "log"), "alpha": (1.0, 1000.0, "log")},  # adaptive c = scale x ||h_l||
        "uld": {"weight": (0.2, 2.0, "float")},
    },
    # Diffusion: the iteration counts and each method's strength knob (lr: 10x either side).
    "diffusion": {
        "esd_x": {"iterations": (20, 300, "int"), "negative_guidance": (0.5, 3.0, "float")},
        "esd_u": {"iterations": (20, 300, "int"), "negative_guidance": (0.5, 3.0, "float")},
        "advunlearn": {"iterations": (20, 200, "int"), "negative_guidance": (0.5, 3.0, "float")},
        "salun": {"steps": (20, 300, "int"), "mask_ratio": (0.1, 0.9, "float"), "beta": (0.5, 20.0, "log")},
        "fmn": {"steps": (10, 100, "int")},
        "uce": {"lam": (1e-3, 10.0, "log")},  # preservation weight of the closed form
        "concept_ablation": {"steps": (20, 300, "int")},
        "erasediff": {"steps": (20, 300, "int"), "lam": (0.1, 10.0, "log")},
        "scissorhands": {"ratio": (1e-3, 0.1, "log"), "steps": (20, 300, "int")},
        "selective_amnesia": {"steps": (20, 300, "int"), "ewc_lambda": (1.0, 1000.0, "log")},
        "spm": {"steps": (20, 300, "int"), "anchor_weight": (0.1, 10.0, "log")},
        "doco": {"steps": (20, 300, "int"), "retain_weight": (0.1, 10.0, "log")},
        "sfd": {"iterations": (20, 200, "int"), "alpha": (0.5, 2.0, "float")},
    },
}
_KINDS = ("log", "float", "int")

# The optional upper bounds of diffusion tuning: tune key -> (row key, name in tune.json's
# constraints, what it bounds (for errors), check_range bounds of the key's value).
DIFFUSION_UPPER_BOUNDS: dict[str, tuple] = {
    "fid_ratio": ("fid/orig", "fid/orig", "an evaluator-FID bound", {"low": 1}),
    "time_ratio": ("RTE-ratio", "time/Retrain", "a time bound against Retrain", {"low": 0, "low_open": True}),
}


# ------------------------------------------------------------------------------------------
# The `tune` config section
# ------------------------------------------------------------------------------------------

def _parse_range(path: str, spec) -> list:
    """[low, high, kind] or {"choices": [...]} (ConfigError naming `path` otherwise)."""
    if isinstance(spec, Mapping):
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ConfigError(f"config key {path!r}: expected {{choices: [v1, v2, ...]}}, got {spec!r}")
        return {"choices": list(spec["choices"])}
    if not isinstance(spec, (list, tuple)) or len(spec) not in (2, 3):
        raise ConfigError(f"config key {path!r}: expected [low, high] or [low, high, log|float|int], got {spec!r}")
    if not all(_is_number(v) for v in spec[:2]):
        raise ConfigError(f"config key {path!r}: low and high must be numbers, got {spec!r}")
    low, high = (float(v) if isinstance(v, str) else v for v in spec[:2])
    if not math.isfinite(low) or not math.isfinite(high):
        raise ConfigError(f"config key {path!r}: low and high must be numbers, got {spec!r}")
    kind = spec[2] if len(spec) == 3 else ("int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind not in _KINDS:
        raise ConfigError(f"config key {path!r}: the kind must be one of {list(_KINDS)}, got {kind!r}")
    if not low < high:
        raise ConfigError(f"config key {path!r}: expected low < high, got {spec!r}")
    if kind == "log" and low <= 0:
        raise ConfigError(f"config key {path!r}: a log range needs low > 0, got {low!r}")
    if kind == "int":
        if low != int(low) or high != int(high):
            raise ConfigError(f"config key {path!r}: an int range needs integer bounds, got {spec!r}")
        low, high = int(low), int(high)
    else:
        low, high = float(low), float(high)
    return [low, high, kind]


def _is_number(v) -> bool:
    if isinstance(v, str):
        try:
            float(v)
            return True
        except ValueError:
            return False
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _select(cfg: dict, wanted, path: str) -> list[dict]:
    """The config's method entries named (by label or registered name) in `wanted` (all when None)."""
    entries = cfg["_methods"]
    if wanted is None:
        return list(entries)
    if isinstance(wanted, str):
        wanted = [wanted]
    if not isinstance(wanted, (list, tuple)) or not wanted or not all(isinstance(w, str) for w in wanted):
        raise ConfigError(f"config key {path!r}: expected a list of method labels, got {wanted!r}")
    out = []
    for w in wanted:
        hit = [e for e in entries if normalise_name(w) in (normalise_name(e["label"]), normalise_name(e["method"]))]
        if not hit:
            raise ConfigError(f"config key {path!r}: {w!r} is not a method of this config"
                              f"{suggest(w, [e['label'] for e in entries])}")
        out += [e for e in hit if e not in out]
    return out


def validate_tune(section, cfg: dict) -> dict:
    """Check a config's `tune` section (TUNE_SCHEMA) against the validated config `cfg` (its
    methods and their hyper-parameters); return it complete with defaults. ConfigError names the
    key (`tune.space.ga.lr`, ...)."""
    from unlearnx import methods as methods_mod

    t = validate_section(section if section is not None else {}, TUNE_SCHEMA, "tune.")
    check_range("tune.trials", t["trials"], low=1)
    check_range("tune.seed", t["seed"], low=0)
    if t["startup_trials"] is not None:
        check_range("tune.startup_trials", t["startup_trials"], low=1)
    check_range("tune.scenarios", t["scenarios"], low=1)
    if cfg["task"] not in ("classification", "diffusion", "llm") and t["scenarios"] != 1:
        raise ConfigError(f"config key 'tune.scenarios': task {cfg['task']!r} tunes on one scenario, got {t['scenarios']}")
    check_range("tune.val_fraction", t["val_fraction"], low=0, high=0.9, low_open=True)
    check_range("tune.ra_drop", t["ra_drop"], low=0)
    check_range("tune.ta_drop", t["ta_drop"], low=0)
    check_range("tune.utility_ratio", t["utility_ratio"], low=0, high=1)
    for key, (_, _, what, bounds) in DIFFUSION_UPPER_BOUNDS.items():
        if t[key] is not None:
            if cfg["task"] != "diffusion":
                raise ConfigError(f"config key 'tune.{key}': {what} exists for task diffusion only, not {cfg['task']!r}")
            check_range(f"tune.{key}", t[key], **bounds)
    if t["methods"] is not None:
        _select(cfg, t["methods"], "tune.methods")
    task = _method_task(cfg)
    space = {}
    for mkey, params in t["space"].items():
        path = f"tune.space.{mkey}"
        hits = [e for e in cfg["_methods"] if normalise_name(str(mkey)) in (normalise_name(e["label"]),
                                                                          normalise_name(e["method"]))]
        if not hits:
            raise ConfigError(f"config key {path!r}: {mkey!r} is not a method of this config"
                              f"{suggest(str(mkey), [e['label'] for e in cfg['_methods']])}")
        if not isinstance(params, Mapping):
            raise ConfigError(f"config key {path!r}: expected a mapping of hyper-parameters to ranges, got {params!r}")
        defaults = methods_mod.get(hits[0]["method"], task=task).defaults_for(hits[0]["hparams"])
        space[str(mkey)] = {}
        for name, spec in params.items():
            if name not in defaults:
                raise ConfigError(f"unknown config key '{path}.{name}' for method {hits[0]['method']!r}"
                                  f"{suggest(str(name), defaults)}")
            space[str(mkey)][name] = _parse_range(f"{path}.{name}", spec)
    t["space"] = space
    return t


def _method_task(cfg: dict) -> str:
    from unlearnx.experiments.tasks import get_task

    return get_task(cfg["task"]).method_task


def search_space(entry: dict, method_task: str, overrides: Mapping | None = None) -> dict[str, list]:
    """{hparam: [low, high, kind] or {"choices": [...]}} searched for the config entry
    {label, method, hparams}: lr within 10x of the entry's value (or the method's default),
    epochs 1 .. 2x it, the method's knobs of `SEARCH_SPACES`, then the config's `tune.space`
    overrides for the entry's label or method name. ConfigError when nothing is left to search."""
    from unlearnx import methods as methods_mod

    defaults = methods_mod.get(entry["method"], task=method_task).defaults_for(entry["hparams"])
    base = {**defaults, **entry["hparams"]}
    space: dict[str, list] = {}
    lr = base.get("lr")
    if _is_number(lr) and float(lr) > 0:
        space["lr"] = [float(lr) / 10, float(lr) * 10, "log"]
    ep = base.get("epochs")
    if isinstance(ep, int) and not isinstance(ep, bool) and ep >= 1:
        space["epochs"] = [1, max(2, 2 * ep), "int"]
    for name, (low, high, kind) in SEARCH_SPACES.get(method_task, {}).get(entry["method"], {}).items():
        space[name] = [low, high, kind]
    for key, params in (overrides or {}).items():
        if normalise_name(key) in (normalise_name(entry["label"]), normalise_name(entry["method"])):
            space.update(copy.deepcopy(params))
    if not space:
        raise ConfigError(f"tune: method {entry['method']!r} has no search space (give one in "
                          f"tune.space.{entry['label']})")
    return space


def _start_point(entry: dict, method_task: str, space: Mapping) -> dict | None:
    """The entry's own values of the searched hyper-parameters, when all lie in the space."""
    from unlearnx import methods as methods_mod

    base = {**methods_mod.get(entry["method"], task=method_task).defaults_for(entry["hparams"]), **entry["hparams"]}
    point = {}
    for name, spec in space.items():
        v = base.get(name)
        if isinstance(spec, Mapping):
            if v not in spec["choices"]:
                return None
        elif not _is_number(v) or not spec[0] <= float(v) <= spec[1]:
            return None
        point[name] = v
    return point


def _suggest(trial, space: Mapping) -> dict:
    params = {}
    for name, spec in space.items():
        if isinstance(spec, Mapping):
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif spec[2] == "int":
            params[name] = trial.suggest_int(name, spec[0], spec[1])
        else:
            params[name] = trial.suggest_float(name, spec[0], spec[1], log=spec[2] == "log")
    return params


# ------------------------------------------------------------------------------------------
# Task adapters: the disjoint tuning scenario, the objective and the constraint
# ------------------------------------------------------------------------------------------

class TuningAdapter:
    """How one task is tuned. Subclass, set the attributes and register with `register_tuning`."""

    #: "minimize" or "maximize" (of `score(...)["value"]`)
    direction: str = "minimize"
    #: the forgetting metric (objective) and the utility metric of the trade-off figure
    objective_name: str = ""
    plot_x: str = ""
    plot_y: str = ""

    def tuning_configs(self, cfg: dict, tcfg: dict, out: Path) -> tuple[list[dict], dict]:
        """([raw config of each tuning scenario's run], description of the split for tune.json).
        May write files (e.g. the tuning data) under `out`."""
        raise NotImplementedError

    def budget(self, tcfg: Mapping) -> dict:
        """The `tune` keys of this task's utility budget and their values (for tune.json)."""
        return {}

    def prepare(self, setup, tuning_cfg: dict) -> None:
        """Adjust the tuning run's setup after `task.setup` (default: nothing)."""

    def rows(self, seed_result: dict) -> dict[str, dict]:
        """{label: metrics} of one `task.evaluate` result."""
        raise NotImplementedError

    def score(self, rows: Sequence[Mapping], references: Sequence[Mapping[str, Mapping]], tcfg: Mapping) -> dict:
        """{"value": the metric optimised, "objective": the penalised value the study sees,
        "constraints": {name: value}, "violation": >= 0, "feasible": bool, "utility": tie-break
        (higher is better)} of a trial's metrics, one row per tuning scenario; references: the
        rows of each scenario's tuning original and Retrain."""
        raise NotImplementedError

    def point(self, row: Mapping) -> dict:
        """{plot_x: ..., plot_y: ...} of a row, for the trade-off figure."""
        return {self.plot_x: row.get(self.plot_x), self.plot_y: row.get(self.plot_y)}

    def for_config(self, cfg: Mapping) -> TuningAdapter:
        """The adapter for this config (default: this one; a task whose scenarios have different
        objectives returns another, e.g. classification -> corrective for BadNets)."""
        return self


_ADAPTERS: dict[str, TuningAdapter] = {}


def register_tuning(task: str) -> Callable[[type[TuningAdapter]], type[TuningAdapter]]:
    """Class decorator: the TuningAdapter of experiment task `task`."""
    def deco(cls):
        _ADAPTERS[task] = cls()
        return cls
    return deco


def get_tuning(task: str) -> TuningAdapter:
    if task not in _ADAPTERS:
        raise ConfigError(f"config key 'task': task {task!r} has no tuning objective yet (tunable: "
                          f"{sorted(_ADAPTERS)}; a task adds one with unlearnx.experiments.tune.register_tuning)")
    return _ADAPTERS[task]


def _public(cfg: Mapping) -> dict:
    return {k: copy.deepcopy(v) for k, v in cfg.items() if not str(k).startswith("_") and k != "tune"}


def _split_pool(pool: torch.Tensor, tcfg: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation, fit) indices: a seeded `tune.val_fraction` of `pool` and the rest, sorted."""
    g = torch.Generator().manual_seed(tcfg["seed"])
    perm = pool[torch.randperm(len(pool), generator=g)]
    n_val = max(1, round(tcfg["val_fraction"] * len(pool)))
    return perm[:n_val].sort().values, perm[n_val:].sort().values


def _write_tuning_data(train, fit: torch.Tensor, val: torch.Tensor, out: Path) -> Path:
    """<out>/tuning_data.pt (atomically): rows `fit` of `train` as the tuning training set, `val` as
    its test set, in the format of the classification task's `data.path`."""
    from unlearnx.data import inputs_of, labels_of
    from unlearnx.report import atomic_write_bytes

    x, y = inputs_of(train), labels_of(train)
    buf = io.BytesIO()
    torch.save({"x_train": x[fit].clone(), "y_train": y[fit].clone(), "x_test": x[val].clone(),
                "y_test": y[val].clone()}, buf)
    data_file = out / "tuning_data.pt"
    atomic_write_bytes(data_file, buf.getvalue())
    return data_file


def _tuning_model(cfg: Mapping, num_classes: int) -> dict:
    """The config's model section for a tuning run: trained from scratch, with the reported model's
    output layer (num_classes) even when a class is missing from the tuning data."""
    import inspect

    from unlearnx import models as models_mod

    model = copy.deepcopy(cfg["model"])
    model["path"] = None
    if "num_classes" in inspect.signature(getattr(models_mod, model["name"])).parameters:
        model["kwargs"].setdefault("num_classes", num_classes)
    return model


@register_tuning("classification")
class ClassificationTuning(TuningAdapter):
    """Classifiers: tuning scenario carved out of the reported D_r (module docstring)."""

    direction = "minimize"
    objective_name = "Avg.Gap"
    plot_x, plot_y = "gap/UA", "TA"

    def tuning_configs(self, cfg, tcfg, out):
        from unlearnx.data import labels_of
        from unlearnx.experiments.classification import build_data, build_scenario

        kind = cfg["scenario"]["kind"]
        if kind not in ("random", "class", "subclass"):
            raise ConfigError(f"config key 'scenario.kind': tuning supports random, class and subclass forgetting "
                              f"and BadNets (corrective), not {kind!r} (its objective is not Avg. Gap)")
        rseed, tseed = cfg["seeds"][0], tcfg["seed"]
        (train, test), _ = build_data(cfg["data"], rseed)
        reported = build_scenario(cfg["scenario"], train, test, rseed)
        val, fit = _split_pool(reported.retain_indices, tcfg)
        data_file = _write_tuning_data(train, fit, val, out)
        y = labels_of(train)
        present = sorted(int(c) for c in y[fit].unique())
        n_sc = tcfg["scenarios"]
        scenarios, seeds = [], [tseed + i for i in range(n_sc)]
        if kind == "class":
            gone = [cfg["scenario"]["classes"]] if isinstance(cfg["scenario"]["classes"], int) else list(
                cfg["scenario"]["classes"])
            others = [c for c in present if c not in gone]
            if len(others) <= len(gone) * n_sc:
                raise ConfigError("config key 'tune.scenarios': tuning forgets other classes than the reported ones "
                                  f"(need {len(gone)} x {n_sc} of them and one left to retain; present: {present})")
            scenarios = [{**cfg["scenario"], "classes": others[i * len(gone):(i + 1) * len(gone)]} for i in range(n_sc)]
            seeds = [tseed] * n_sc
        elif kind == "subclass":
            others = [c for c in present if c != cfg["scenario"]["class_"]]
            if len(others) < n_sc:
                raise ConfigError(f"config key 'tune.scenarios': only {len(others)} other classes for sub-class tuning")
            scenarios = [{**cfg["scenario"], "class_": others[i]} for i in range(n_sc)]
            seeds = [tseed] * n_sc
        else:
            scenarios = [dict(cfg["scenario"]) for _ in range(n_sc)]
        model = _tuning_model(cfg, int(y.max()) + 1)  # the reported output layer, even without its largest class
        configs, forget_sets = [], []
        for i, (scenario, seed) in enumerate(zip(scenarios, seeds)):
            configs.append({**_public(cfg), "name": f"{cfg['name']} (tuning {i})",
                            "out_dir": str(out / ("work" if i == 0 else f"work-{i}")), "seeds": [seed],
                            "data": {"name": cfg["data"]["name"], "path": str(data_file), "kwargs": {}},
                            "model": model, "scenario": scenario,
                            "eval": {**cfg["eval"], "suite": "classification", "zrf": False, "per_item": False},
                            "methods": [{"name": e["method"], "label": e["label"], **e["hparams"]}
                                        for e in cfg["_methods"]]})
            t_train, t_test = build_data(configs[-1]["data"], seed)[0]
            forget_sets.append(fit[build_scenario(scenario, t_train, t_test, seed).forget_indices])
        t_sc = build_scenario(scenarios[0], t_train, t_test, seeds[0])
        scenario = scenarios[0]
        split = {
            "pool": "the reported run's retain set D_r (seed %d); indices are into its training set" % rseed,
            "reported_forget_indices": reported.forget_indices.tolist(),
            "validation_indices": val.tolist(), "tuning_train_indices": fit.tolist(),
            "tuning_forget_indices": sorted(set(torch.cat(forget_sets).tolist())),
            "tuning_forget_indices_per_scenario": [f.tolist() for f in forget_sets],
            "reported_scenario": cfg["scenario"], "tuning_scenario": scenario, "tuning_scenarios": scenarios,
            "tuning_seeds": seeds,
            "sizes": {"reported_train": len(train), "reported_forget": len(reported.forget),
                      "reported_test": len(reported.test), "validation": len(val), "tuning_train": len(fit),
                      "tuning_forget": len(t_sc.forget), "tuning_test": len(t_sc.test)},
            "disjoint": ("tuning data = part of D_r only: the reported forget set and test set are never trained on, "
                         "unlearned or evaluated in tuning; the tuning test set is a held-out part of D_r; the "
                         "tuning forget set is drawn from the rest of D_r"
                         + (f" (classes {[sc['classes'] for sc in scenarios]} instead of {cfg['scenario']['classes']})"
                            if kind == "class" else "")
                         + (f"; each trial's objective is the mean over {n_sc} tuning scenarios and its RA/TA drops "
                            "the largest" if n_sc > 1 else "")),
        }
        return configs, split

    def budget(self, tcfg):
        return {"ra_drop": tcfg["ra_drop"], "ta_drop": tcfg["ta_drop"]}

    def rows(self, seed_result):
        return seed_result["metrics"]

    def for_config(self, cfg):
        return CorrectiveTuning() if cfg.get("scenario", {}).get("kind") == "badnets" else self

    def score(self, rows, references, tcfg):
        # Several tuning scenarios: the mean Avg. Gap under the worst RA and TA drops.
        ra_drop = max(ref["Original"]["RA"] - row["RA"] for row, ref in zip(rows, references))
        ta_drop = max(ref["Original"]["TA"] - row["TA"] for row, ref in zip(rows, references))
        violation = max(0.0, ra_drop - tcfg["ra_drop"]) + max(0.0, ta_drop - tcfg["ta_drop"])
        value = sum(float(row["Avg.Gap"]) for row in rows) / len(rows)
        feasible = violation == 0.0 and math.isfinite(value)
        return {"value": value, "objective": value if feasible else PENALTY + violation,
                "constraints": {"RA_drop": ra_drop, "TA_drop": ta_drop}, "violation": violation,
                "feasible": feasible, "utility": sum(float(row["TA"]) for row in rows) / len(rows)}


class CorrectiveTuning(ClassificationTuning):
    """Corrective unlearning of a BadNets backdoor (classification, scenario.kind badnets): the
    tuning data are the reported training set's **clean** samples (every sample the reported run
    poisoned is left out, identified or not), split into a tuning test set (`tune.val_fraction`) and
    a tuning training set that is poisoned afresh with the tuning seed (same poison fraction,
    trigger, target class and identified fraction); a tuning original is trained on it. The reported
    forget set, its poison and the test set are never trained on, unlearned or evaluated. Objective:
    minimise the attack success rate (ASR) subject to a clean-accuracy (Acc_retain) drop <=
    `tune.ta_drop` points against the tuning original (Corrective Machine Unlearning's criterion)."""

    direction = "minimize"
    objective_name = "ASR"
    plot_x, plot_y = "ASR", "Acc_retain"

    def tuning_configs(self, cfg, tcfg, out):
        from unlearnx.data import labels_of
        from unlearnx.experiments.classification import build_data, build_scenario

        rseed, tseed = cfg["seeds"][0], tcfg["seed"]
        (train, test), _ = build_data(cfg["data"], rseed)
        reported = build_scenario(cfg["scenario"], train, test, rseed)
        poisoned = set(reported.meta["poison_indices"].tolist())
        val, fit = _split_pool(torch.tensor([i for i in range(len(train)) if i not in poisoned]), tcfg)
        data_file = _write_tuning_data(train, fit, val, out)
        model = _tuning_model(cfg, int(labels_of(train).max()) + 1)
        seeds = [tseed + i for i in range(tcfg["scenarios"])]
        configs = [{**_public(cfg), "name": f"{cfg['name']} (tuning {i})",
                    "out_dir": str(out / ("work" if i == 0 else f"work-{i}")), "seeds": [seed],
                    "data": {"name": cfg["data"]["name"], "path": str(data_file), "kwargs": {}},
                    "model": model, "scenario": dict(cfg["scenario"]),
                    "eval": {**cfg["eval"], "suite": "corrective", "per_item": False},
                    "methods": [{"name": e["method"], "label": e["label"], **e["hparams"]} for e in cfg["_methods"]]}
                   for i, seed in enumerate(seeds)]
        split = {
            "pool": "the clean samples of the reported run's training set (seed %d; its poisoned samples, identified "
                    "or not, left out); indices are into that training set" % rseed,
            "reported_poison_indices": sorted(poisoned), "reported_forget_indices": reported.forget_indices.tolist(),
            "validation_indices": val.tolist(), "tuning_train_indices": fit.tolist(),
            "reported_scenario": cfg["scenario"], "tuning_scenario": cfg["scenario"], "tuning_seeds": seeds,
            "sizes": {"reported_train": len(train), "reported_poisoned": len(poisoned),
                      "reported_test": len(reported.test), "validation": len(val), "tuning_train": len(fit)},
            "disjoint": ("tuning data = the clean part of the reported training set: the reported poisoned samples "
                         "(hence its forget set) and its test set are never trained on, unlearned or evaluated in "
                         "tuning; the tuning training set is poisoned afresh with the tuning seed(s) "
                         f"{seeds} and the tuning test set is a held-out part of the pool"
                         + (f"; each trial's ASR is the mean over {len(seeds)} tuning poisonings and its "
                            "clean-accuracy drop the largest" if len(seeds) > 1 else "")),
        }
        return configs, split

    def budget(self, tcfg):
        return {"clean_accuracy_drop": tcfg["ta_drop"]}

    def for_config(self, cfg):
        return self

    def score(self, rows, references, tcfg):
        drop = max(ref["Original"]["Acc_retain"] - row["Acc_retain"] for row, ref in zip(rows, references))
        violation = max(0.0, drop - tcfg["ta_drop"])
        value = sum(float(row["ASR"]) for row in rows) / len(rows)
        feasible = violation == 0.0 and math.isfinite(value)
        return {"value": value, "objective": value if feasible else PENALTY + violation,
                "constraints": {"Acc_retain_drop": drop}, "violation": violation, "feasible": feasible,
                "utility": sum(float(row["Acc_retain"]) for row in rows) / len(rows)}


@register_tuning("llm")
class LLMTuning(TuningAdapter):
    """Causal LMs: forget other authors than the reported forget10 (module docstring)."""

    direction = "maximize"
    objective_name = "forget_quality"
    plot_x, plot_y = "log10(forget_quality)", "MU/target"

    def tuning_configs(self, cfg, tcfg, out):
        from unlearnx.experiments.llm import build_authors_data

        dc = cfg["data"]
        # The tuning split is carved from the built-in fictitious authors (other authors than the
        # reported forget10); a user's benchmark files or checkpoint have no such split here.
        for key, value in (("data.benchmark", dc.get("benchmark")), ("model.pretrained", cfg["model"].get("pretrained")),
                           ("oracle.pretrained", (cfg.get("oracle") or {}).get("pretrained"))):
            if value is not None:
                raise ConfigError(f"config key {key!r}: tuning needs the built-in authors benchmark and model (a tuning "
                                  "target and Retrain are trained on authors the reported run keeps); tune on the "
                                  "built-in benchmark, or run the candidate values on your data with `unlearnx run`")
        n = dc["authors"]
        k = dc.get("forget_authors") or max(1, math.ceil(0.1 * n))
        if n - 2 * k < 2:
            raise ConfigError(f"config key 'data.authors': tuning forgets as many other authors of the retain set "
                              f"as the reported run forgets ({k}), which needs data.authors >= {2 * k + 2}, got {n}")
        reported = build_authors_data(n, n_real_authors=dc["n_real_authors"], n_world_facts=dc["n_world_facts"],
                                      n_forget=k)
        # The tuning forget set has the reported one's size (k authors), so that a method's steps per
        # epoch, and so its tuned epochs and lr, mean the same in both runs.
        tuning_data = build_authors_data(n - k, n_real_authors=dc["n_real_authors"], n_world_facts=dc["n_world_facts"],
                                         n_forget=k)
        rs = cfg["eval"]["retain_subset"]
        reported_utility = {i.question for i in reported["retain"][:rs]}
        tail = list(reversed(tuning_data["retain"]))
        free = 0
        for item in tail:
            if item.question in reported_utility:
                break
            free += 1
        if free == 0:
            raise ConfigError("config key 'eval.retain_subset': the tuning retain set has no QA outside the "
                              "reported utility subset (use more data.authors or a smaller eval.retain_subset)")
        rs_t = min(rs, free)
        reported_forget = {i.question for i in reported["forget"]}
        assert not reported_forget & {i.question for i in tuning_data["forget"] + tuning_data["retain"]}

        def held_overlap(name):
            a = {i.question for i in reported["held"][name]}
            return len(a & {i.question for i in tuning_data["held"][name]})

        # tune.scenarios > 1: the same tuning data with seeds seed, seed+1, ... (each its own target and
        # Retrain): forget quality on 40 items moves by orders of magnitude between seeds.
        tunings = [{**_public(cfg), "name": f"{cfg['name']} (tuning" + (f" {i})" if i else ")"),
                    "out_dir": str(out / ("work" if i == 0 else f"work-{i}")),
                    "seed": tcfg["seed"] + i, "data": {**dc, "authors": n - k, "forget_authors": k},
                    "eval": {**cfg["eval"], "retain_subset": rs_t},
                    "methods": [{"name": e["method"], "label": e["label"], **e["hparams"]} for e in cfg["_methods"]]}
                   for i in range(tcfg["scenarios"])]
        split = {
            "reported_forget_questions": sorted(reported_forget),
            "reported_utility_questions": sorted(reported_utility),
            "tuning_forget_questions": sorted(i.question for i in tuning_data["forget"]),
            "tuning_utility_questions": sorted(i.question for i in tail[:rs_t]),
            "sizes": {"reported_authors": n, "reported_forget": len(reported["forget"]),
                      "tuning_authors": n - k, "tuning_forget": len(tuning_data["forget"]),
                      "tuning_retain": len(tuning_data["retain"]), "tuning_utility_retain": rs_t},
            "tuning_seeds": [t["seed"] for t in tunings],
            "held_overlap": {name: {"shared": held_overlap(name), "of": len(tuning_data["held"][name])}
                             for name in tuning_data["held"]},
            "disjoint": ("tuning runs the llm task on the first N - k authors (the reported retain90): the reported "
                         "forget10 authors are never trained on, unlearned or evaluated; the tuning forget set is "
                         "the last authors of the reported retain90; tuning utility uses the tuning retain QA from the "
                         "end, disjoint from the reported utility's first eval.retain_subset retain QA; the held sets "
                         "are regenerated for the tuning size (overlap in held_overlap)"),
        }
        return tunings, split

    def budget(self, tcfg):
        return {"utility_ratio": tcfg["utility_ratio"]}

    def prepare(self, setup, tuning_cfg):
        # The llm task scores utility on data["retain"][:eval.retain_subset]: reversed, those are the
        # last tuning retain authors, away from the reported utility subset (checked in tuning_config).
        setup.data = {**setup.data, "retain": list(reversed(setup.data["retain"]))}

    def rows(self, seed_result):
        rows = {}
        for label, r in seed_result["rows"].items():
            rows[label] = dict(r)
            fq = r.get("forget_quality")
            rows[label]["log10(forget_quality)"] = math.log10(max(fq, 1e-300)) if fq is not None else None
        return rows

    def score(self, rows, references, tcfg):
        # Several tuning seeds: the geometric mean forget quality (the mean of the log10 the study
        # optimises) under the worst MU ratio.
        fqs = [row.get("forget_quality") for row in rows]
        ratios = [row.get("MU/target") for row in rows]
        value = (10 ** (sum(math.log10(max(float(f), 1e-300)) for f in fqs) / len(fqs))
                 if all(f is not None for f in fqs) else float("nan"))
        ratio = min(float(r) for r in ratios) if all(r is not None for r in ratios) else None
        violation = max(0.0, tcfg["utility_ratio"] - ratio) if ratio is not None else 1.0
        feasible = violation == 0.0 and math.isfinite(value)
        log_fq = math.log10(max(value, 1e-300)) if math.isfinite(value) else -300.0
        return {"value": value, "objective": log_fq if feasible else -PENALTY - violation,
                "constraints": {"MU/target": ratio}, "violation": violation, "feasible": feasible,
                "utility": sum(float(row.get("model_utility") or 0.0) for row in rows) / len(rows)}


@register_tuning("diffusion")
class DiffusionTuning(TuningAdapter):
    """Diffusion models: erase other concepts on the tuning seed's images (module docstring)."""

    direction = "maximize"
    objective_name = "UA"
    plot_x, plot_y = "UA", "retain/orig"

    @staticmethod
    def tuning_seed(cfg: Mapping, tcfg: Mapping) -> int:
        """1000 + tune.seed, moved past every reported seed s and s + 7919 (the evaluators' data)."""
        used = {s for s in cfg["seeds"]} | {s + 7919 for s in cfg["seeds"]}
        seed = 1000 + tcfg["seed"]
        while seed in used or seed + 7919 in used:
            seed += 1
        return seed

    def tuning_configs(self, cfg, tcfg, out):
        from unlearnx.data.canvas import CANVAS_OBJECTS, CANVAS_STYLES

        sc, d = cfg["scenario"], cfg["data"]
        if cfg["model"].get("pretrained"):
            raise ConfigError("config key 'model.pretrained': tuning needs the built-in model (a tuning original and "
                              "Retrain are trained on the tuning seed's data)")
        kind = sc["kind"]
        if kind not in ("style", "object", "class"):
            raise ConfigError(f"config key 'scenario.kind': tuning erases one style, object or class per scenario, not "
                              f"{kind!r} (tune the method on a single-target scenario, then run it sequentially)")
        if kind == "class":
            names = list(range(10))
        else:
            names = ([s.name for s in CANVAS_STYLES[:d["n_styles"]]] if kind == "style"
                     else list(CANVAS_OBJECTS[:d["n_objects"]]))
        reported = sc["target"] if sc["target"] is not None else names[0]
        if kind == "class":
            reported = int(reported)
        i = names.index(reported) if reported in names else 0
        others = [names[(i + k) % len(names)] for k in range(1, len(names))]
        n_sc = tcfg["scenarios"]
        if len(others) < n_sc:
            raise ConfigError(f"config key 'tune.scenarios': {n_sc} tuning scenarios need {n_sc} {kind}s besides the "
                              f"reported {reported!r}; the data has {len(names)}")
        targets = others[:n_sc]
        seed = self.tuning_seed(cfg, tcfg)
        methods = [{"name": e["method"], "label": e["label"], **e["hparams"]} for e in cfg["_methods"]]
        configs = [{**_public(cfg), "name": f"{cfg['name']} (tuning {k})", "attacks": None,
                    "out_dir": str(out / ("work" if k == 0 else f"work-{k}")), "seeds": [seed],
                    "scenario": {"kind": kind, "target": target}, "methods": methods}
                   for k, target in enumerate(targets)]
        split = {"reported_target": reported, "tuning_targets": targets, "reported_seeds": list(cfg["seeds"]),
                 "tuning_seed": seed, "evaluator_data_seeds": {"reported": [s + 7919 for s in cfg["seeds"]],
                                                               "tuning": seed + 7919},
                 "disjoint": (f"the tuning run erases {targets} instead of {reported!r}, on the images, evaluators, "
                              f"initial weights and sampling noise of seed {seed} (the reported run: seeds "
                              f"{list(cfg['seeds'])}): no image, model or generation of the reported run is used")}
        return configs, split

    def budget(self, tcfg):
        return {"utility_ratio": tcfg["utility_ratio"],
                **{k: tcfg[k] for k in DIFFUSION_UPPER_BOUNDS if tcfg.get(k) is not None}}

    def rows(self, seed_result):
        metrics = seed_result["metrics"]
        orig = metrics["Original"]
        rows = {}
        for label, r in metrics.items():
            row = dict(r)
            ratios = [(float(r[k]) / float(orig[k]) if float(orig[k]) > 0 else 1.0)
                      for k in ("IRA", "CRA") if r.get(k) is not None and orig.get(k) is not None]
            row["retain/orig"] = min(ratios) if ratios else None
            fid, fid0 = r.get("FID-eval"), orig.get("FID-eval")
            row["fid/orig"] = float(fid) / float(fid0) if fid is not None and fid0 else None
            rows[label] = row
        return rows

    def score(self, rows, references, tcfg):
        worst = min((float(r["retain/orig"]) for r in rows if r.get("retain/orig") is not None), default=None)
        value = sum(float(r["UA"]) for r in rows) / len(rows)
        violation = max(0.0, tcfg["utility_ratio"] - worst) if worst is not None else 1.0
        constraints = {"retain/orig": worst}
        for key, (row_key, name, _, _) in DIFFUSION_UPPER_BOUNDS.items():  # the worst scenario within each bound
            if tcfg.get(key) is None:
                continue
            values = [float(r[row_key]) for r in rows if r.get(row_key) is not None]
            worst_value = max(values) if values else None
            violation += max(0.0, worst_value - tcfg[key]) if worst_value is not None else 1.0
            constraints[name] = worst_value
        feasible = violation == 0.0 and math.isfinite(value)
        keys = [k for k in ("IRA", "CRA") if rows[0].get(k) is not None]
        utility = sum(float(r[k]) for r in rows for k in keys) / max(1, len(rows) * len(keys))
        return {"value": value, "objective": value if feasible else -PENALTY - violation,
                "constraints": constraints, "violation": violation, "feasible": feasible,
                "utility": utility}


# ------------------------------------------------------------------------------------------
# The search
# ------------------------------------------------------------------------------------------

def _optuna():
    try:
        import optuna
    except ImportError as exc:
        raise ImportError(f"unlearnx tune needs optuna (pip install 'unlearnx[tune]'): {exc}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _storage(optuna, path: Path):
    from optuna.storages import JournalStorage

    try:
        from optuna.storages.journal import JournalFileBackend
    except ImportError:  # optuna 3.x
        from optuna.storages import JournalFileStorage as JournalFileBackend
    return JournalStorage(JournalFileBackend(str(path)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _chosen(trials: list[dict], direction: str) -> dict | None:
    done = [t for t in trials if t["state"] == "COMPLETE"]
    if not done:
        return None
    sign = 1.0 if direction == "minimize" else -1.0
    return min(done, key=lambda t: (not t["feasible"], sign * t["objective"], -t["utility"], t["number"]))


def tune(config: Mapping, out_dir=None, *, trials: int | None = None, methods: Sequence[str] | None = None,
         quiet: bool = False, echo: Callable[[str], None] | None = None) -> dict:
    """Tune the hyper-parameters of `config`'s methods (module docstring); return the content of
    <out>/tune.json. out_dir: default the config's out_dir + "-tune". trials, methods: override
    `tune.trials` / `tune.methods`. Rerunning with the same out_dir resumes every study (the
    finished trials count; only the missing ones run) and reuses the tuning original and Retrain."""
    from unlearnx.experiments.config import validate_config
    from unlearnx.experiments.run import Run, machine, versions
    from unlearnx.experiments.tasks import get_task
    from unlearnx.report import atomic_write_json

    optuna = _optuna()
    cfg = validate_config(config)
    adapter = get_tuning(cfg["task"]).for_config(cfg)
    tcfg = copy.deepcopy(cfg.get("tune")) or validate_tune({}, cfg)
    if trials is not None:
        check_range("--trials", trials, low=1)
        tcfg["trials"] = trials
    selected = _select(cfg, methods if methods is not None else tcfg["methods"],
                       "--methods" if methods is not None else "tune.methods")
    say = (lambda msg: None) if quiet else (echo or (lambda msg: print(msg, file=sys.stderr, flush=True)))
    out = Path(out_dir if out_dir is not None else str(cfg["out_dir"]) + "-tune")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    task = get_task(cfg["task"])
    started = time.perf_counter()
    tuning_raws, split = adapter.tuning_configs(cfg, tcfg, out)
    tuning_cfgs = [validate_config(raw) for raw in tuning_raws]
    state = {"trial": False}
    threads = torch.get_num_threads()
    if tuning_cfgs[0].get("threads"):
        torch.set_num_threads(tuning_cfgs[0]["threads"])
    summary_methods = {}
    ol, rl = task.original_label, task.oracle_label
    try:
        # One context per tuning scenario: its run folder, setup, tuning original and Retrain.
        contexts = []
        for i, tc in enumerate(tuning_cfgs):
            tag = "" if len(tuning_cfgs) == 1 else f"[{i}] "
            run = Run(tc, Path(tc["out_dir"]), quiet=quiet, eval_only=False, progress=False,
                      echo=lambda msg, tag=tag: None if state["trial"] else say(f"tuning {tag}{msg}"))
            Path(tc["out_dir"]).mkdir(parents=True, exist_ok=True)
            setup = task.setup(run, task.seeds(tc)[0])
            adapter.prepare(setup, tc)
            original, original_rec = task.original(run, setup)
            oracle, oracle_rec = task.oracle(run, setup)
            records = {rl: oracle_rec, ol: original_rec}
            run.cfg["_methods"] = []
            ref = adapter.rows(task.evaluate(run, setup, {rl: oracle, ol: original}, records, []))
            contexts.append({"run": run, "setup": setup, "original": original, "oracle": oracle, "records": records,
                             "reference": {"Original": ref[ol], "Retrain": ref[rl]}})
        references = [c["reference"] for c in contexts]
        settings = step_key(tcfg["seed"], tcfg["scenarios"], tcfg["val_fraction"], tcfg["ra_drop"], tcfg["ta_drop"],
                            tcfg["utility_ratio"], [_public(tc) for tc in tuning_cfgs],
                            *([tcfg["fid_ratio"]] if tcfg["fid_ratio"] is not None else []),
                            *([("time_ratio", tcfg["time_ratio"])] if tcfg.get("time_ratio") is not None else []))
        storage = _storage(optuna, out / "study.journal")
        startup = tcfg["startup_trials"] or max(1, tcfg["trials"] // 3)
        names = set(optuna.get_all_study_names(storage))
        # Methods not selected this time keep their earlier study in the summary (no new trials).
        for entry in [e for e in cfg["_methods"] if e in selected or e["label"] in names]:
            space = search_space(entry, task.method_task, tcfg["space"])
            sampler = optuna.samplers.TPESampler(seed=tcfg["seed"], n_startup_trials=startup)
            study = optuna.create_study(storage=storage, sampler=sampler, study_name=entry["label"],
                                        direction=adapter.direction, load_if_exists=True)
            made_with = study.user_attrs.get("settings")
            if made_with is None:
                study.set_user_attr("settings", settings)
                study.set_user_attr("space", space)
            elif made_with != settings or study.user_attrs.get("space") != space:
                raise ConfigError(f"--out: the study of {entry['label']!r} in {out} was made with other tune settings "
                                  "or another search space (a study resumes only with the same ones); use another --out")
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # left by an interrupted search
            finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
            if not study.trials:
                start = _start_point(entry, task.method_task, space)
                if start is not None:
                    study.enqueue_trial(start, user_attrs={"start": "the config's values"})
            if finished and entry in selected:
                say(f"[{entry['label']}] resuming: {len(finished)} of {tcfg['trials']} trials done")
            for _ in range(len(finished), tcfg["trials"] if entry in selected else 0):
                trial = study.ask()
                params = _suggest(trial, space)
                label = f"{entry['label']}-trial{trial.number}"
                t_entry = {"label": label, "method": entry["method"], "hparams": {**entry["hparams"], **params}}
                t0 = time.perf_counter()
                state["trial"] = True
                try:
                    trial_rows = []
                    for c in contexts:
                        c["run"].cfg["_methods"] = [t_entry]
                        model, rec = task.unlearn(c["run"], c["setup"], t_entry, c["original"], c["records"][ol])
                        res = task.evaluate(c["run"], c["setup"], {rl: c["oracle"], ol: c["original"], label: model},
                                            {**c["records"], label: rec}, [])
                        trial_rows.append(adapter.rows(res)[label])
                    sc = adapter.score(trial_rows, references, tcfg)
                    row = _mean_row(trial_rows)
                except (RuntimeError, ValueError, FloatingPointError, ZeroDivisionError) as exc:
                    state["trial"] = False
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    say(f"[{entry['label']}] trial {trial.number}: failed ({type(exc).__name__}: {exc})")
                    continue
                finally:
                    state["trial"] = False
                    for p in out.glob("work*/**/" + _slug_file(label) + ".safetensors"):
                        p.unlink(missing_ok=True)  # a trial keeps its metrics (the study), not its weights
                for k, v in (("row", _clean(row)), ("score", _clean(sc)), ("seconds", time.perf_counter() - t0)):
                    trial.set_user_attr(k, v)
                study.tell(trial, sc["objective"])
                best = _chosen(_trial_rows(study, optuna), adapter.direction)
                cons = " ".join(f"{k} {_fmt(v)}" for k, v in sc["constraints"].items())
                say(f"[{entry['label']}] trial {trial.number + 1}/{tcfg['trials']}: "
                    + " ".join(f"{k}={_fmt(v)}" for k, v in params.items())
                    + f" -> {adapter.objective_name} {_fmt(sc['value'])}, {cons}, "
                    + ("feasible" if sc["feasible"] else "INFEASIBLE")
                    + f" ({time.perf_counter() - t0:.1f} s; best #{best['number']}: {_fmt(best['value'])}"
                    + ("" if best["feasible"] else " infeasible") + ")")
            rows = _trial_rows(study, optuna)
            chosen = _chosen(rows, adapter.direction)
            start = next((r for r in rows if r.get("start")), None)
            summary_methods[entry["label"]] = {
                "method": entry["method"], "space": space, "config_hparams": entry["hparams"],
                "n_trials": len(rows), "n_complete": sum(r["state"] == "COMPLETE" for r in rows),
                "n_feasible": sum(r["state"] == "COMPLETE" and r["feasible"] for r in rows),
                "chosen": None if chosen is None else {"trial": chosen["number"], "params": chosen["params"],
                                                       "hparams": {**entry["hparams"], **chosen["params"]},
                                                       "value": chosen["value"], "feasible": chosen["feasible"],
                                                       "row": chosen["row"]},
                "start": None if start is None else {"trial": start["number"], "params": start["params"],
                                                     "value": start["value"], "feasible": start["feasible"],
                                                     "row": start["row"]},
                "trials": rows,
            }
    finally:
        torch.set_num_threads(threads)
    summary = {
        "format": "unlearnx-tune/1", "task": cfg["task"], "name": cfg["name"],
        "objective": {"name": adapter.objective_name, "direction": adapter.direction, "penalty": PENALTY,
                      "budget": adapter.budget(tcfg)},
        "tune": tcfg, "split": split, "reference": _mean_row_of(references), "references": references,
        "methods": summary_methods, "tuning_config": _public(tuning_cfgs[0]), "config": _public(cfg),
        "seconds": time.perf_counter() - started,
        "versions": versions(), "machine": machine(),
    }
    atomic_write_json(out / "tune.json", summary)
    write_tune_report(summary, out, adapter)
    return summary


def _mean_row(rows: Sequence[Mapping]) -> dict:
    """The mean of each number over rows (one row: itself)."""
    if len(rows) == 1:
        return dict(rows[0])
    out = {}
    for k in rows[0]:
        vals = [r.get(k) for r in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[k] = sum(vals) / len(vals)
    return out


def _mean_row_of(references: Sequence[Mapping[str, Mapping]]) -> dict:
    return {name: _mean_row([r[name] for r in references]) for name in references[0]}


def _slug_file(label: str) -> str:
    import re
    import unicodedata

    ascii_label = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_label).strip("_") or "x"


def _clean(d: Mapping) -> dict:
    from unlearnx.report import to_jsonable

    return to_jsonable({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()})


def _trial_rows(study, optuna) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        sc = t.user_attrs.get("score", {})
        rows.append({"number": t.number, "state": t.state.name, "params": dict(t.params),
                     "start": bool(t.user_attrs.get("start")), "objective": t.value,
                     "value": sc.get("value"), "feasible": bool(sc.get("feasible", False)),
                     "violation": sc.get("violation"), "constraints": sc.get("constraints", {}),
                     "utility": sc.get("utility") or 0.0, "row": t.user_attrs.get("row", {}),
                     "seconds": t.user_attrs.get("seconds")})
    return rows


# ------------------------------------------------------------------------------------------
# Output: YAML snippet, report
# ------------------------------------------------------------------------------------------

def methods_yaml(summary: Mapping) -> str:
    """The chosen values as a `methods:` YAML list (paste it into a config)."""
    import yaml

    entries = []
    for label, m in summary["methods"].items():
        if m["chosen"] is None:
            continue
        hp = {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in m["chosen"]["hparams"].items()}
        entry = {"name": m["method"], **({"label": label} if label != m["method"] else {}), **hp}
        entries.append(entry)
    return yaml.safe_dump({"methods": entries}, sort_keys=False, allow_unicode=True)


def write_tune_report(summary: Mapping, out: Path, adapter: TuningAdapter | None = None) -> None:
    """report.md, report.html and plots/tradeoff-<method>.png of a tune summary."""
    import json

    from unlearnx.report import (atomic_write_bytes, atomic_write_text, format_value, render_html,
                                 render_markdown, tradeoff_scatter)

    adapter = adapter or get_tuning(summary["task"]).for_config(summary.get("config", {}))
    obj = summary["objective"]
    budget = ", ".join(f"{k} {v}" for k, v in obj["budget"].items())
    blocks: list[tuple] = [
        ("h", 1, f"unlearnx tune: {summary['name']}"),
        ("p", f"Objective: {obj['direction']} {obj['name']} subject to {budget or 'no budget'} (infeasible trials "
              f"score {obj['penalty']:g} + violation). Split: {summary['split']['disjoint']}."),
        ("h", 2, "Chosen values"),
    ]
    head = ["Method", "trials", "feasible", "chosen trial", obj["name"], "start (config values)", "chosen hparams"]
    body = []
    for label, m in summary["methods"].items():
        c, s = m["chosen"], m["start"]
        body.append([label, str(m["n_trials"]), str(m["n_feasible"]), "-" if c is None else f"#{c['trial']}",
                     "-" if c is None else format_value(c["value"]) + ("" if c["feasible"] else " (infeasible)"),
                     "-" if s is None else format_value(s["value"]) + ("" if s["feasible"] else " (infeasible)"),
                     "-" if c is None else json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v
                                                       for k, v in c["params"].items()})])
    blocks.append(("table", head, body))
    blocks.append(("p", "Reference (tuning scenario): " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {format_value(v)}" for k, v in row.items()
                                if isinstance(v, (int, float)) and not k.startswith("gap/"))
        for name, row in summary["reference"].items())))
    blocks.append(("p", "Paste into a config:"))
    blocks.append(("pre", methods_yaml(summary)))
    figures = {}
    for label, m in summary["methods"].items():
        done = [t for t in m["trials"] if t["state"] == "COMPLETE"]
        cons_keys = list(dict.fromkeys(k for t in done for k in t["constraints"]))
        blocks.append(("h", 2, f"{label}: all trials"))
        blocks.append(("table", ["trial", *m["space"], obj["name"], *cons_keys, "feasible", "s"],
                       [[f"#{t['number']}" + (" (start)" if t["start"] else ""),
                         *[format_value(t["params"].get(k)) if isinstance(t["params"].get(k), float)
                           else str(t["params"].get(k)) for k in m["space"]],
                         format_value(t["value"]), *[format_value(t["constraints"].get(k)) for k in cons_keys],
                         "yes" if t["feasible"] else "no", format_value(t["seconds"])] for t in done]))
        pts = {f"#{t['number']}": adapter.point(t["row"]) for t in done}
        for name, row in summary["reference"].items():
            pts[name] = adapter.point(row)
        pts = {k: v for k, v in pts.items() if all(isinstance(x, (int, float)) for x in v.values())}
        star = None if m["chosen"] is None else f"#{m['chosen']['trial']} chosen"
        if star is not None and f"#{m['chosen']['trial']}" in pts:  # drawn last: the star stays on top
            pts[star] = pts.pop(f"#{m['chosen']['trial']}")
        if pts and star in pts:
            png = tradeoff_scatter(pts, x=adapter.plot_x, y=adapter.plot_y, reference=star)
            fname = f"tradeoff-{_slug_file(label)}.png"
            caption = (f"{label}: every trial's forgetting ({adapter.plot_x}) against utility ({adapter.plot_y}) on the "
                       f"tuning scenario; the star is the chosen trial #{m['chosen']['trial']}; Original and Retrain "
                       "are the tuning models.")
            figures[fname] = png
            blocks.append(("img", fname, png, caption))
    for name, png in figures.items():
        atomic_write_bytes(out / "plots" / name, png)
    blocks += [("h", 2, "Reproducibility"),
               ("p", "Versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()) + ". Machine: "
                + ", ".join(f"{k} {v}" for k, v in summary["machine"].items())
                + f". Total time {summary['seconds']:.0f} s."),
               ("p", "Tuning config:"), ("pre", json.dumps(summary["tuning_config"], indent=2, sort_keys=True))]
    atomic_write_text(out / "report.md", render_markdown(blocks, figure_dir="plots"))
    atomic_write_text(out / "report.html", render_html(blocks, title=f"unlearnx tune: {summary['name']}"))
