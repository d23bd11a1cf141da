"""The classification task: image/tabular classifiers, the SalUn / Sparse protocol and corrective unlearning.

A run, for each seed: build the data and the forget/retain scenario (seeded), train the original
model on D, train the Retrain oracle from scratch on D_r with the same recipe (timed), run every
configured method on a copy of the original, evaluate everything with `unlearnx.evaluate`
(reference = Retrain's metrics).

Run directory:

    <out>/results.json  report.md  report.html  plots/*.png
    <out>/seed-<s>/original.{json,safetensors}  retrain.{json,safetensors}
    <out>/seed-<s>/methods/<label>.{json,safetensors}  seed_results.json
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import math
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from unlearnx.experiments.config import (
    ConfigError,
    Field,
    check_range,
    check_value,
    suggest,
    validate_methods,
    validate_section,
)
from unlearnx.experiments.run import Run, aggregate_seeds, file_identity, file_stem, loss_curves, step_key
from unlearnx.experiments.tasks import ExperimentTask, register_task

__all__ = ["SCHEMA", "SCENARIO_KEYS", "DISPLAY_NAMES", "DEMO_METHODS", "ClassificationTask", "build_data",
           "build_scenario", "reading"]

# The paper names of the registered methods, for tables and figures.
DISPLAY_NAMES = {
    "retrain": "Retrain", "ft": "FT", "ga": "GA", "rl": "RL", "l1_sparse": "ℓ1-sparse", "l1sparse": "ℓ1-sparse",
    "salun": "SalUn", "ssd": "SSD", "lfssd": "LFSSD", "boundary_shrink": "BS", "boundary_expand": "BE",
    "scrub": "SCRUB", "bad_teacher": "Bad-T", "laf": "LAF", "fisher": "FF", "influence": "IU",
    "salun_soft": "SalUn-soft", "prune_first": "OMP", "assd": "ASSD", "ssd_budget": "SSD-budget", "jit": "JiT",
    "unsir": "UNSIR", "concept_poison": "ConceptPoison",
}

# The demo's panel (SalUn's comparison set); methods not registered in this installation are
# skipped with a note, so the demo picks them up as soon as they exist.
DEMO_METHODS = ("ft", "ga", "rl", "l1_sparse", "salun", "ssd")

SCHEMA: dict = {
    "task": Field("str", "classification", help="the experiment task (unlearnx.experiments.available_tasks())"),
    "name": Field("str", "experiment", help="experiment name (report title, default output folder)"),
    "out_dir": Field("str", None, help="run directory (default runs/<name>)"),
    "seeds": Field("int_list", [0], help="one full run per seed: split, scenario, init, methods"),
    "device": Field("str", "cpu", choices=("cpu", "cuda", "auto")),
    "threads": Field("int", 0, help="torch CPU threads during the run (0: torch's default); 1 is fastest for "
                                    "tiny models and the only stable choice on a shared machine"),
    "model": {
        "name": Field("str", "small_cnn", help="a builder of unlearnx.models (available_models())"),
        "kwargs": Field("dict", {}, help="builder arguments; num_classes/in_channels/image_size/in_features "
                                         "are inferred from the data when omitted"),
        "path": Field("file", None, help="weights (.safetensors or .pt state dict) of an already trained "
                                         "original model; skips training the original"),
    },
    "data": {
        "name": Field("str", "digits", choices=("digits", "synthetic_images"), help="built-in data set"),
        "path": Field("file", None, help="user data: .pt or .npz with x_train, y_train, x_test, y_test"),
        "kwargs": Field("dict", {}, help="arguments of the built-in data builder"),
    },
    "scenario": {
        "kind": Field("str", "random", choices=("random", "class", "subclass", "badnets", "confusion")),
        # The remaining keys depend on the kind: see SCENARIO_KEYS.
    },
    "train": {
        "epochs": Field("int", 20, help="epochs of the original model and of Retrain"),
        "lr": Field("number", 0.05),
        "optimizer": Field("str", "sgd", choices=("sgd", "adam")),
        "momentum": Field("number", 0.9),
        "weight_decay": Field("number", 5e-4),
        "batch_size": Field("int", 64),
        "schedule": Field("str", "cosine", choices=("cosine", "constant"), help="learning-rate schedule"),
    },
    "methods": Field("any", ["ft"], help="list of method names or {name, label?, optional?, <hparams>}"),
    "eval": {
        "suite": Field("str", "auto", choices=("auto", "classification", "corrective")),
        "batch_size": Field("int", 256),
        "zrf": Field("bool", False, help="also compute ZRF against a randomly initialised model"),
        "per_item": Field("bool", True, help="store per-forget-sample confidence and correctness"),
    },
}

# Per scenario kind: {key: Field} (arguments of the unlearnx.data scenario builders).
SCENARIO_KEYS: dict[str, dict[str, Field]] = {
    "random": {"fraction": Field("number", 0.1), "n": Field("int", None)},
    "class": {"classes": Field("any", 0, help="a class id or a list of ids")},
    "subclass": {"class_": Field("int", 0), "n_subclasses": Field("int", 2), "subclass": Field("int", 0)},
    "badnets": {"poison_fraction": Field("number", 0.1), "target_class": Field("int", 0),
                "identified_fraction": Field("number", 1.0), "patch": Field("int", 3)},
    "confusion": {"classes": Field("any", [0, 1]), "fraction": Field("number", 0.5),
                  "identified_fraction": Field("number", 1.0)},
}
# Fractions of a scenario: (low, high, low excluded?).
_FRACTIONS = {"fraction": (0.0, 1.0, True), "poison_fraction": (0.0, 1.0, True),
              "identified_fraction": (0.0, 1.0, True)}
# Registered methods that unlearn regressors (L1 targets); experiments here are classifiers.
_REGRESSION_METHODS = {n: "unlearns regression models; experiments run classification (use it through "
                          "unlearnx.unlearn)" for n in ("blindspot", "gaussian_amnesiac")}


def _validate_scenario(cfg) -> dict:
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"config key 'scenario': expected a mapping, got {cfg!r}")
    kind = check_value("scenario.kind", cfg.get("kind", "random"), SCHEMA["scenario"]["kind"])
    allowed = {"kind": SCHEMA["scenario"]["kind"], **SCENARIO_KEYS[kind]}
    if kind == "random":
        if cfg.get("n") is not None and cfg.get("fraction") is not None:
            raise ConfigError("scenario: give one of 'scenario.fraction' and 'scenario.n', not both")
        # A validated config holds fraction None next to n: validating it again must accept it.
        cfg = {k: v for k, v in cfg.items() if not (k == "fraction" and v is None)}
    out = validate_section(cfg, allowed, "scenario.")
    for key, (low, high, low_open) in _FRACTIONS.items():
        if key in out and out[key] is not None:
            check_range(f"scenario.{key}", out[key], low=low, high=high, low_open=low_open)
    if kind == "random":
        if out["n"] is not None:
            check_range("scenario.n", out["n"], low=1)
            out["fraction"] = None
    for key in ("patch", "n_subclasses"):
        if key in out:
            check_range(f"scenario.{key}", out[key], low=1)
    for key in ("target_class", "class_", "subclass"):
        if key in out:
            check_range(f"scenario.{key}", out[key], low=0)
    if kind in ("class", "confusion"):
        classes = out["classes"]
        ok = (isinstance(classes, int) and not isinstance(classes, bool) and kind == "class") or (
            isinstance(classes, list) and classes and all(isinstance(c, int) and not isinstance(c, bool)
                                                          for c in classes))
        if not ok or (kind == "confusion" and len(classes) != 2):
            want = "a class id or a list of class ids" if kind == "class" else "a list of two class ids"
            raise ConfigError(f"config key 'scenario.classes': expected {want}, got {classes!r}")
    return out


def _check_weights_file(path: str) -> None:
    """model.path must be a readable state dict: safetensors, or a .pt/.pth that loads without pickle."""
    p = Path(path)
    if p.suffix not in (".safetensors", ".pt", ".pth"):
        raise ConfigError(f"model.path: expected a .safetensors or .pt state dict, got {path}")
    try:
        if p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                list(f.keys())
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise ValueError(f"expected a state dict (name -> tensor), got {type(state).__name__}")
    except Exception as exc:  # noqa: BLE001 — any unreadable file is the user's input error
        raise ConfigError(f"model.path: {path} is not a readable state dict "
                          f"(safetensors, or a .pt saved with torch.save(model.state_dict())): "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _validate_data_and_model(cfg: dict) -> None:
    from unlearnx import data as data_mod
    from unlearnx import models as models_mod

    if cfg["data"]["path"] is not None:
        if Path(cfg["data"]["path"]).suffix not in (".pt", ".npz"):
            raise ConfigError(f"data.path: expected a .pt or .npz file, got {cfg['data']['path']}")
        if cfg["data"]["kwargs"]:
            raise ConfigError("config key 'data.kwargs': only used with a built-in data set, not with data.path")
    else:
        builder = _BUILTIN_DATA[cfg["data"]["name"]](data_mod)
        params = inspect.signature(builder).parameters
        for key in cfg["data"]["kwargs"]:
            if key not in params or key == "seed":
                allowed = [p for p in params if p != "seed"]
                raise ConfigError(f"unknown config key 'data.kwargs.{key}' for data {cfg['data']['name']!r}"
                                  f"{suggest(key, allowed)} (the seed comes from 'seeds')")
    name = cfg["model"]["name"]
    if name not in models_mod.available_models():
        raise ConfigError(f"config key 'model.name': unknown model {name!r}{suggest(name, models_mod.available_models())}")
    if name == "regression_mlp":
        raise ConfigError("config key 'model.name': regression_mlp is a regression model; experiments run "
                          "classification and corrective suites")
    params = inspect.signature(getattr(models_mod, name)).parameters
    for key in cfg["model"]["kwargs"]:
        if key not in params:
            raise ConfigError(f"unknown config key 'model.kwargs.{key}' for model {name!r}{suggest(key, params)}")
    if cfg["model"]["path"] is not None:
        _check_weights_file(cfg["model"]["path"])


_BUILTIN_DATA = {"digits": lambda m: m.digits_dataset, "synthetic_images": lambda m: m.synthetic_images}


def build_data(dcfg: dict, seed: int):
    """((train, test), name) of the config's `data` section: a built-in set or the user's file."""
    from torch.utils.data import TensorDataset

    from unlearnx import data as data_mod

    if dcfg["path"] is None:
        return _BUILTIN_DATA[dcfg["name"]](data_mod)(seed=seed, **dcfg["kwargs"]), dcfg["name"]
    path = Path(dcfg["path"])
    try:
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as z:
                arrays = {k: torch.from_numpy(z[k]) for k in z.files}
        else:
            arrays = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — a corrupt or foreign file is the user's input error
        raise ConfigError(f"data.path: {path} could not be read as a {path.suffix} file of arrays "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(arrays, dict):
        raise ConfigError(f"data.path: {path} must hold a dict of tensors, got {type(arrays).__name__}")
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise ConfigError(f"data.path: {path} lacks {missing} (needs x_train, y_train, x_test, y_test)")
    out = []
    for split in ("train", "test"):
        x, y = torch.as_tensor(arrays[f"x_{split}"]).float(), torch.as_tensor(arrays[f"y_{split}"])
        if y.dim() != 1 or y.is_floating_point() or len(y) != len(x) or len(x) == 0:
            raise ConfigError(f"data.path: {path}: y_{split} must be integer class labels [N] matching "
                              f"x_{split} [N, ...], got x {tuple(x.shape)}, y {y.dtype} {tuple(y.shape)}")
        out.append(TensorDataset(x, y.long()))
    return tuple(out), path.name


def build_scenario(scfg: dict, train, test, seed: int):
    """The forget/retain `Scenario` of the config's `scenario` section (unlearnx.data builders)."""
    from unlearnx import data as data_mod

    kind = scfg["kind"]
    kw = {k: v for k, v in scfg.items() if k != "kind"}
    try:
        if kind == "random":
            return data_mod.random_forget(train, test, fraction=kw["fraction"], n=kw["n"], seed=seed)
        if kind == "class":
            return data_mod.class_forget(train, test, classes=kw["classes"])
        if kind == "subclass":
            return data_mod.subclass_forget(train, test, class_=kw["class_"], n_subclasses=kw["n_subclasses"],
                                            subclass=kw["subclass"], seed=seed)
        if kind == "badnets":
            return data_mod.badnets_poison(train, test, seed=seed, **kw)
        return data_mod.interclass_confusion(train, test, classes=tuple(kw["classes"]), fraction=kw["fraction"],
                                             identified_fraction=kw["identified_fraction"], seed=seed)
    except ValueError as exc:
        # The builders name their argument; in a config it is a key of the scenario section.
        raise ConfigError(f"scenario ({kind}): {exc}") from None


def _model_kwargs(mcfg: dict, train) -> dict:
    from unlearnx import models as models_mod
    from unlearnx.data import inputs_of, labels_of

    params = inspect.signature(getattr(models_mod, mcfg["name"])).parameters
    x = inputs_of(train)
    inferred = {"num_classes": int(labels_of(train).max()) + 1, "in_features": int(math.prod(x.shape[1:]))}
    if x.dim() == 4:
        inferred.update(in_channels=int(x.shape[1]), image_size=int(x.shape[-1]))
    return {**{k: v for k, v in inferred.items() if k in params}, **mcfg["kwargs"]}


def _fresh_model(mcfg: dict, kwargs: dict, seed: int):
    from unlearnx import models as models_mod

    torch.manual_seed(seed)  # the same initial weights for the original and Retrain (fair oracle)
    return models_mod.build_model(mcfg["name"], **kwargs)


def _small_log(log: dict, limit: int = 2000) -> dict:
    # Keep scalar and short-list entries of a method's log; long per-step traces stay out of results.json.
    return {k: (f"<{len(v)} values>" if isinstance(v, list) and len(v) > limit else v) for k, v in log.items()}


class _Setup:
    """One seed of a classification run: data, scenario, suite and the step keys."""

    def __init__(self, run: Run, seed: int):
        cfg = run.cfg
        self.seed = seed
        self.dir = run.out / f"seed-{seed}"
        (train, test), self.data_name = build_data(cfg["data"], seed)
        self.scenario = build_scenario(cfg["scenario"], train, test, seed)
        suite = cfg["eval"]["suite"]
        if suite == "auto":
            suite = "corrective" if cfg["scenario"]["kind"] in ("badnets", "confusion") else "classification"
        self.suite = suite
        self.model_kwargs = _model_kwargs(cfg["model"], self.scenario.train)
        self.base_key = step_key(cfg["data"], file_identity(cfg["data"]["path"]), cfg["scenario"],
                                 cfg["model"]["name"], self.model_kwargs, cfg["train"], seed)

    def fresh(self, cfg: dict, seed: int | None = None):
        return _fresh_model(cfg["model"], self.model_kwargs, self.seed if seed is None else seed)


@register_task
class ClassificationTask(ExperimentTask):
    """Classifiers: random, class-wise, sub-class forgetting and corrective (BadNets, confusion) scenarios."""

    name = "classification"
    method_task = "classifier"
    demo_help = "digits + small_cnn, class-wise forgetting (--random: 10% random forgetting)"

    def schema(self) -> dict:
        return SCHEMA

    def special_sections(self):
        return {"scenario": _validate_scenario}

    def validate(self, cfg: dict) -> dict:
        _validate_data_and_model(cfg)
        cfg["_methods"], cfg["_skipped"] = validate_methods(cfg["methods"], self.method_task,
                                                            display_names=DISPLAY_NAMES, excluded=_REGRESSION_METHODS)
        if cfg["eval"]["suite"] == "corrective" and cfg["scenario"]["kind"] not in ("badnets", "confusion"):
            raise ConfigError("config key 'eval.suite': 'corrective' needs scenario.kind 'badnets' or 'confusion'")
        check_range("threads", cfg["threads"], low=0)
        for key, low_open in (("epochs", False), ("batch_size", False), ("lr", True)):
            check_range(f"train.{key}", cfg["train"][key], low=0 if low_open else 1, low_open=low_open)
        check_range("train.momentum", cfg["train"]["momentum"], low=0, high=1)
        check_range("train.weight_decay", cfg["train"]["weight_decay"], low=0)
        check_range("eval.batch_size", cfg["eval"]["batch_size"], low=1)
        return cfg

    def demo_options(self) -> dict[str, str]:
        return {"random": "forget a random 10% of the training set instead of one class (the original is then "
                          "already close to Retrain)"}

    def demo_config(self, *, methods=None, quick=False, out_dir=None, device="cpu", options=None) -> dict:
        """The demo: small_cnn on scikit-learn's digits, the Retrain oracle and `methods` (default
        `DEMO_METHODS`, each skipped with a note when not registered; explicitly named methods
        must exist). Class-wise forgetting of digit 0 by default: the original classifies the
        class perfectly and Retrain not at all, so methods differ visibly; options={"random":
        True}: 10% random forgetting (SalUn's headline scenario). Recipe: 20 epochs SGD lr 0.05,
        cosine schedule; one torch thread (the models are tiny, intra-op threads only add
        synchronisation, and on a busy machine a descheduled worker thread stalls every op).
        The methods run with the values `unlearnx tune` chose for the scenario
        (`unlearnx.methods.presets.DIGITS_CLASSWISE_TUNED` / `DIGITS_RANDOM_TUNED`, docs/tuning.md)."""
        from unlearnx.experiments.config import normalise_name
        from unlearnx.methods.presets import DIGITS_CLASSWISE_TUNED, DIGITS_RANDOM_TUNED

        if quick:
            raise ValueError("--quick: the classification demo has no quick mode (it takes a minute already)")
        random = bool((options or {}).get("random"))
        explicit = methods is not None
        tuned = {normalise_name(k): v for k, v in (DIGITS_RANDOM_TUNED if random else DIGITS_CLASSWISE_TUNED).items()}
        entries = [{"name": m, **({} if explicit else {"optional": True}), **tuned.get(normalise_name(m), {})}
                   for m in (methods or DEMO_METHODS)]
        scenario = {"kind": "random", "fraction": 0.1} if random else {"kind": "class", "classes": 0}
        what = "10% random forgetting" if random else "class-wise forgetting of digit 0"
        return {
            "name": f"demo: digits, small_cnn, {what}",
            "out_dir": out_dir or "runs/demo",
            "seeds": [0],
            "device": device,
            "threads": 1,
            "data": {"name": "digits"},
            "model": {"name": "small_cnn"},
            "scenario": scenario,
            "train": {"epochs": 20, "lr": 0.05, "batch_size": 64, "schedule": "cosine"},
            "methods": entries,
            "eval": {"suite": "classification"},
        }

    # ---- steps
    def setup(self, run: Run, seed: int) -> _Setup:
        return _Setup(run, seed)

    def _train(self, run: Run, setup: _Setup, label: str, data, key: str):
        from unlearnx.methods.training import train_classifier

        def compute():
            run.echo(f"[seed {setup.seed}] {label}: training on {len(data)} samples")
            t = run.cfg["train"]
            model = setup.fresh(run.cfg).to(run.device)
            start = time.perf_counter()
            log = train_classifier(model, data, epochs=t["epochs"], lr=t["lr"], optimizer=t["optimizer"],
                                   momentum=t["momentum"], weight_decay=t["weight_decay"],
                                   batch_size=t["batch_size"], schedule=t["schedule"], seed=setup.seed,
                                   progress=run.progress)
            return model, {"seconds": time.perf_counter() - start, "loss_curves": loss_curves(log)}

        model, rec = run.steps.run(label, key, setup.dir / label.lower(), lambda: setup.fresh(run.cfg), compute)
        return model.to(run.device), rec

    def original(self, run: Run, setup: _Setup):
        path = run.cfg["model"]["path"]
        if path is None:
            return self._train(run, setup, "Original", setup.scenario.train, step_key(setup.base_key, "original"))
        from unlearnx.report import load_state_dict

        try:
            model = load_state_dict(setup.fresh(run.cfg), path)
        except ValueError as exc:
            raise ConfigError(f"model.path: {exc}") from None
        return model.to(run.device), {"label": "Original", "key": step_key(setup.base_key, file_identity(path)),
                                      "seconds": None, "loss_curves": {}}

    def oracle(self, run: Run, setup: _Setup):
        return self._train(run, setup, "Retrain", setup.scenario.retain, step_key(setup.base_key, "retrain"))

    def unlearn(self, run: Run, setup: _Setup, entry: dict, original, original_record: dict):
        import unlearnx
        from unlearnx.report import to_jsonable

        key = step_key(original_record["key"], entry["method"], entry["hparams"])

        def compute():
            run.echo(f"[seed {setup.seed}] {entry['label']}: unlearning with {entry['method']} "
                     f"{entry['hparams'] or ''}")
            torch.manual_seed(setup.seed)
            res = unlearnx.unlearn(copy.deepcopy(original), method=entry["method"], forget=setup.scenario.forget,
                                   retain=setup.scenario.retain, inplace=True, seed=setup.seed,
                                   progress=run.progress, device=run.device, **entry["hparams"])
            return res.model, {"method": entry["method"], "hparams": entry["hparams"],
                               "hparams_resolved": to_jsonable(getattr(res, "hparams", None) or {}),
                               "seconds": float(res.seconds), "loss_curves": loss_curves(res.log),
                               "log": _small_log(to_jsonable(res.log or {}))}

        stem = setup.dir / "methods" / file_stem(entry["label"], entry["method"])
        model, rec = run.steps.run(entry["label"], key, stem, lambda: copy.deepcopy(original), compute)
        return model.to(run.device), rec

    def evaluate(self, run: Run, setup: _Setup, models: dict, records: dict, cached: list[str]) -> dict:
        from tqdm import tqdm

        from unlearnx.data import labels_of
        from unlearnx.eval import evaluate, predict
        from unlearnx.report import atomic_write_json

        cfg, sc, seed = run.cfg, setup.scenario, setup.seed
        bs = cfg["eval"]["batch_size"]
        random_model = setup.fresh(cfg, seed + 10_007).to(run.device) if cfg["eval"]["zrf"] else None
        start = time.perf_counter()

        def ev(model, seconds, reference=None):
            kw = {} if reference is None else {"reference": reference, "reference_seconds": reference.get("RTE-s")}
            return evaluate(model, suite=setup.suite, scenario=sc, seconds=seconds, random_model=random_model,
                            batch_size=bs, device=run.device, **kw)

        reference = ev(models["Retrain"], records["Retrain"]["seconds"])
        metrics = {}
        for label in tqdm(list(models), desc=f"evaluate (seed {seed})", disable=not run.progress, leave=False):
            seconds = None if label == "Original" else records[label]["seconds"]
            metrics[label] = ev(models[label], seconds, reference)
        timings = {"original_train_s": records["Original"]["seconds"], "retrain_s": records["Retrain"]["seconds"]}
        timings.update({f"{e['label']}_s": records[e["label"]]["seconds"] for e in cfg["_methods"]})
        timings["evaluation_s"] = time.perf_counter() - start
        per_item = None
        if cfg["eval"]["per_item"]:
            def items(model):
                probs, labels = predict(model, sc.forget, batch_size=bs, device=run.device)
                return {"p_true": [round(float(p), 6) for p in probs.gather(1, labels[:, None]).squeeze(1)],
                        "correct": (probs.argmax(1) == labels).int().tolist()}

            per_item = {"forget_indices": sc.forget_indices.tolist(), "labels": labels_of(sc.forget).tolist(),
                        "models": {label: items(m) for label, m in models.items()}}
        digest = hashlib.sha256(sc.forget_indices.to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()
        seed_result = {
            "seed": seed, "suite": setup.suite, "cached": cached, "timings": timings, "metrics": metrics,
            "runs": {label: {k: v for k, v in r.items() if k != "key"} for label, r in records.items()},
            "per_item": per_item,
            "scenario": {"name": sc.name, "data": setup.data_name, "n_train": len(sc.train),
                         "n_forget": len(sc.forget), "n_retain": len(sc.retain), "n_test": len(sc.test),
                         "forget_digest": digest},
        }
        if run.ctx.is_main:
            atomic_write_json(setup.dir / "seed_results.json", seed_result)
        return seed_result

    # ---- the whole run
    def results(self, run: Run, per_seed: list[dict]) -> dict:
        cfg = run.cfg
        rows, std = aggregate_seeds([s["metrics"] for s in per_seed])
        first_runs = per_seed[0]["runs"]
        hparams = {e["label"]: {"method": e["method"], "hparams": e["hparams"],
                                "resolved": first_runs[e["label"]].get("hparams_resolved", {})}
                   for e in cfg["_methods"]}
        audit_models = {f"seed {s['seed']} / {label}": {"file": r["model_file"], "sha256": r["sha256"]}
                        for s in per_seed for label, r in s["runs"].items() if r.get("model_file")}
        return {
            "format": "unlearnx-results/1",
            "suite": per_seed[0]["suite"],
            "seeds": cfg["seeds"],
            "scenario": {k: v for k, v in per_seed[0]["scenario"].items() if k != "forget_digest"},
            "rows": rows,
            "std": std,
            "reading": reading(rows),
            "hparams": hparams,
            "skipped": cfg["_skipped"],
            "runs": {str(s["seed"]): s["runs"] for s in per_seed},
            "per_item": {str(s["seed"]): s["per_item"] for s in per_seed if s["per_item"] is not None},
            "per_seed_metrics": {str(s["seed"]): s["metrics"] for s in per_seed},
            "cached_steps": {str(s["seed"]): s["cached"] for s in per_seed},
            "timings": {f"seed {s['seed']}: {k}": v for s in per_seed for k, v in s["timings"].items()},
            "audit": {"n_forget": per_seed[0]["scenario"]["n_forget"],
                      "forget_digest": {str(s["seed"]): s["scenario"]["forget_digest"] for s in per_seed},
                      "models": audit_models},
        }

    def write_report(self, results: dict, out) -> None:
        from unlearnx.report import write_report

        write_report(results, out)

    def summary(self, results: dict) -> str:
        from unlearnx.report import summary_table

        sc = results["scenario"]
        lines = [f"\n{results['name']}: |D_f| = {sc['n_forget']}, |D_r| = {sc['n_retain']}, |test| = {sc['n_test']}; "
                 f"seeds {results['seeds']}", summary_table(results)]
        if results.get("reading"):
            lines.append(results["reading"])
        return "\n".join(lines)


def reading(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Two sentences that read a classification result from its numbers: which method is closest
    to Retrain (lowest Avg. Gap) at what fraction of Retrain's time, and how far the untouched
    original is. Empty when the rows have no Avg. Gap (e.g. the corrective suite)."""
    methods = {n: r for n, r in rows.items() if n not in ("Retrain", "Original") and r.get("Avg.Gap") is not None}
    if not methods:
        return ""
    best = min(methods, key=lambda n: methods[n]["Avg.Gap"])
    r = methods[best]
    ratio = r.get("RTE-ratio")
    when = f" in {100 * ratio:.0f}% of Retrain's time" if ratio is not None else ""
    text = (f"{best} is closest to Retrain (Avg. Gap {r['Avg.Gap']:.2f} points{when}).")
    orig = rows.get("Original", {}).get("Avg.Gap")
    if orig is not None:
        worse = sorted(n for n, m in methods.items() if m["Avg.Gap"] > orig)
        text += (f" The untouched original is {orig:.2f} points from Retrain"
                 + (f"; {', '.join(worse)} end{'s' if len(worse) == 1 else ''} farther from it than doing nothing."
                    if worse else "; every method moves toward Retrain."))
    return text
