"""Config-driven unlearning experiments: the engine behind `unlearnx demo`, `run` and `eval`.

    cfg = load_config("configs/digits_random.yaml", overrides=["methods.ft.lr=0.02"])
    results = run_experiment(cfg, "runs/digits")            # -> the content of results.json

A run, for each seed: build the data and the forget/retain scenario (seeded), train the original
model on D, train the Retrain oracle from scratch on D_r with the same recipe (timed), run every
configured method on a copy of the original, evaluate everything with `unlearnx.evaluate`
(reference = Retrain's metrics), and write results.json, report.md, report.html and plots.

Run directory (resumable: a step whose key — a hash of everything it depends on — matches its
JSON record, and whose weights file exists with the recorded SHA-256, is reused, not recomputed):

    <out>/results.json  report.md  report.html  plots/*.png
    <out>/seed-<s>/original.{json,safetensors}  retrain.{json,safetensors}
    <out>/seed-<s>/methods/<label>.{json,safetensors}

Configs are validated against `SCHEMA` before any work starts; errors name the config key.
"""
from __future__ import annotations

import copy
import datetime as _dt
import difflib
import hashlib
import inspect
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "ConfigError",
    "SCHEMA",
    "SCENARIO_KEYS",
    "DISPLAY_NAMES",
    "load_config",
    "validate_config",
    "apply_overrides",
    "run_experiment",
]


class ConfigError(ValueError):
    """An invalid experiment configuration; the message names the offending config key."""


@dataclass(frozen=True)
class Field:
    """One config entry: kind in {"str", "int", "number", "bool", "int_list", "dict", "file", "any"}."""

    kind: str
    default: object = None
    choices: tuple | None = None
    help: str = ""


# The paper names of the registered methods, for tables and figures.
DISPLAY_NAMES = {
    "retrain": "Retrain", "ft": "FT", "ga": "GA", "rl": "RL", "l1_sparse": "ℓ1-sparse", "l1sparse": "ℓ1-sparse",
    "salun": "SalUn", "ssd": "SSD", "lfssd": "LFSSD", "boundary_shrink": "BS", "boundary_expand": "BE",
    "scrub": "SCRUB", "bad_teacher": "Bad-T", "laf": "LAF", "fisher": "FF", "influence": "IU",
    "salun_soft": "SalUn-soft", "prune_first": "OMP",
}

SCHEMA: dict = {
    "task": Field("str", "classification", choices=("classification", "llm"),
                  help="classification (this schema) or llm (unlearnx.experiment_llm.LLM_SCHEMA)"),
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
_METHOD_ENTRY_KEYS = ("name", "label", "optional")
# Registered methods that unlearn regressors (L1 targets); experiments here are classifiers.
_REGRESSION_METHODS = frozenset({"blindspot", "gaussian_amnesiac"})


# ----------------------------------------------------------------------------- validation

def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(sorted(options))})"


def _check_value(path: str, value, f: Field):
    """Return the value converted to its kind, or raise ConfigError naming `path`."""
    if value is None and f.default is None:
        return None
    kind = f.kind
    if kind == "number":
        # YAML 1.1 reads 5e-4 (no dot) as a string; accept numeric strings so configs read naturally.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"config key {path!r}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"config key {path!r}: expected a number, got {value!r}")
        value = float(value)
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {path!r}: expected an integer, got {value!r}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"config key {path!r}: expected true or false, got {value!r}")
    elif kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"config key {path!r}: expected a string, got {value!r}")
    elif kind == "int_list":
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if (not isinstance(value, list) or not value
                or any(isinstance(v, bool) or not isinstance(v, int) for v in value)):
            raise ConfigError(f"config key {path!r}: expected a non-empty list of integers, got {value!r}")
        if len(set(value)) != len(value):
            raise ConfigError(f"config key {path!r}: repeated entries in {value!r}")
    elif kind == "dict":
        if not isinstance(value, dict):
            raise ConfigError(f"config key {path!r}: expected a mapping, got {value!r}")
    elif kind == "file":
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"config key {path!r}: expected a file path, got {value!r}")
        if not Path(value).is_file():
            raise ConfigError(f"{path}: file not found: {value}")
        value = str(value)
    if f.choices is not None and value not in f.choices:
        raise ConfigError(f"config key {path!r}: expected one of {list(f.choices)}, got {value!r}")
    return value


def _validate_section(cfg, schema: Mapping, prefix: str) -> dict:
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'!r}: expected a mapping, got {cfg!r}")
    for key in cfg:
        if key not in schema:
            raise ConfigError(f"unknown config key {prefix + str(key)!r}{_suggest(str(key), schema)}")
    out = {}
    for key, f in schema.items():
        if isinstance(f, Mapping):
            if key == "scenario":
                out[key] = _validate_scenario(cfg.get(key) or {})
            else:
                out[key] = _validate_section(cfg.get(key) or {}, f, f"{prefix}{key}.")
        elif key in cfg:
            out[key] = _check_value(prefix + key, cfg[key], f)
        else:
            out[key] = copy.deepcopy(f.default)
    return out


def _validate_scenario(cfg) -> dict:
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"config key 'scenario': expected a mapping, got {cfg!r}")
    kind = _check_value("scenario.kind", cfg.get("kind", "random"), SCHEMA["scenario"]["kind"])
    allowed = {"kind": SCHEMA["scenario"]["kind"], **SCENARIO_KEYS[kind]}
    out = _validate_section(cfg, allowed, "scenario.")
    if kind == "random":
        if cfg.get("n") is not None and cfg.get("fraction") is not None:
            raise ConfigError("scenario: give one of 'scenario.fraction' and 'scenario.n', not both")
        if out["n"] is not None:
            out["fraction"] = None
    if kind in ("class", "confusion"):
        classes = out["classes"]
        ok = (isinstance(classes, int) and not isinstance(classes, bool) and kind == "class") or (
            isinstance(classes, list) and classes and all(isinstance(c, int) and not isinstance(c, bool)
                                                          for c in classes))
        if not ok or (kind == "confusion" and len(classes) != 2):
            want = "a class id or a list of class ids" if kind == "class" else "a list of two class ids"
            raise ConfigError(f"config key 'scenario.classes': expected {want}, got {classes!r}")
    return out


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _registered_methods(task: str = "classifier") -> dict[str, str]:
    """{normalised name: registered name} of the methods registered for `task` ("classifier" or "causal_lm")."""
    from unlearnx import methods

    return {_norm(n): n for n in methods.available(task=task)}


def _hparam_kind(default) -> Field:
    if isinstance(default, bool):
        return Field("bool", default)
    if isinstance(default, int):
        return Field("int", default)
    if isinstance(default, float):
        return Field("number", default)
    if isinstance(default, str):
        return Field("str", default)
    return Field("any", default)


def _validate_methods(entries, task: str = "classifier") -> tuple[list[dict], list[dict]]:
    """Return (runnable entries, skipped entries). An entry: {label, method, hparams}.

    task: the registry to look names up in; classifier runs label methods with their paper names
    (DISPLAY_NAMES), LLM runs with the registered names.
    """
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"config key 'methods': expected a non-empty list of methods, got {entries!r}")
    registry = _registered_methods(task)
    from unlearnx import methods as methods_mod

    runnable, skipped, labels = [], [], set()
    for i, entry in enumerate(entries):
        path = f"methods[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"config key {path!r}: expected a method name or a mapping with 'name', got {entry!r}")
        name = entry["name"]
        optional = entry.get("optional", False)
        if not isinstance(optional, bool):
            raise ConfigError(f"config key '{path}.optional': expected true or false, got {optional!r}")
        if _norm(name) not in registry:
            if optional:
                skipped.append({"method": name, "reason": "not registered in this installation"})
                continue
            hint = _suggest(name, list(registry.values())) if registry else " (no method is registered yet)"
            raise ConfigError(f"config key '{path}.name': unknown method {name!r}{hint}")
        registered = registry[_norm(name)]
        if task == "classifier" and registered in _REGRESSION_METHODS:
            raise ConfigError(f"config key '{path}.name': {registered!r} unlearns regression models; experiments "
                              "run classification (use it through unlearnx.unlearn)")
        label = entry.get("label", DISPLAY_NAMES.get(registered, registered) if task == "classifier" else registered)
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"config key '{path}.label': expected a non-empty string, got {label!r}")
        if label in labels or label in ("Retrain", "Original", "target"):
            raise ConfigError(f"config key '{path}.label': the label {label!r} is used twice (a duplicate: set "
                              "'label' to tell the runs apart)")
        labels.add(label)
        defaults = dict(getattr(methods_mod.get(registered, task=task), "defaults", {}))
        hparams = {}
        for key, value in entry.items():
            if key in _METHOD_ENTRY_KEYS:
                continue
            if key not in defaults:
                raise ConfigError(f"unknown config key '{path}.{key}' for method {registered!r}"
                                  + (_suggest(key, defaults) if defaults else " (it has no hyper-parameters)"))
            value = _check_value(f"{path}.{key}", value, _hparam_kind(defaults[key]))
            if isinstance(defaults[key], tuple) and isinstance(value, list):
                value = tuple(value)  # YAML has no tuples; the method's default says which it wants
            hparams[key] = value
        runnable.append({"label": label, "method": registered, "hparams": hparams})
    if not runnable:
        raise ConfigError("config key 'methods': none of the listed methods is registered "
                          f"({', '.join(s['method'] for s in skipped)})")
    return runnable, skipped


def _validate_data_kwargs(cfg: dict) -> None:
    from unlearnx import data as data_mod
    from unlearnx import models as models_mod

    if cfg["data"]["path"] is not None:
        if Path(cfg["data"]["path"]).suffix not in (".pt", ".npz"):
            raise ConfigError(f"data.path: expected a .pt or .npz file, got {cfg['data']['path']}")
        if cfg["data"]["kwargs"]:
            raise ConfigError("config key 'data.kwargs': only used with a built-in data set, not with data.path")
    else:
        builder = {"digits": data_mod.digits_dataset, "synthetic_images": data_mod.synthetic_images}[cfg["data"]["name"]]
        params = inspect.signature(builder).parameters
        for key in cfg["data"]["kwargs"]:
            if key not in params or key == "seed":
                allowed = [p for p in params if p != "seed"]
                raise ConfigError(f"unknown config key 'data.kwargs.{key}' for data {cfg['data']['name']!r}"
                                  f"{_suggest(key, allowed)} (the seed comes from 'seeds')")
    name = cfg["model"]["name"]
    if name not in models_mod.available_models():
        raise ConfigError(f"config key 'model.name': unknown model {name!r}{_suggest(name, models_mod.available_models())}")
    if name == "regression_mlp":
        raise ConfigError("config key 'model.name': regression_mlp is a regression model; experiments run "
                          "classification and corrective suites")
    params = inspect.signature(getattr(models_mod, name)).parameters
    for key in cfg["model"]["kwargs"]:
        if key not in params:
            raise ConfigError(f"unknown config key 'model.kwargs.{key}' for model {name!r}{_suggest(key, params)}")
    if cfg["model"]["path"] is not None and Path(cfg["model"]["path"]).suffix not in (".safetensors", ".pt", ".pth"):
        raise ConfigError(f"model.path: expected a .safetensors or .pt state dict, got {cfg['model']['path']}")


def validate_config(config: Mapping) -> dict:
    """Check `config` against `SCHEMA` and return a complete copy with defaults filled in.

    Adds "_methods" (the resolved runnable entries) and "_skipped" (optional methods that are not
    registered). Raises ConfigError naming the key: unknown keys (with a close-match suggestion),
    wrong types, values outside their choices, missing files, unknown methods/hyper-parameters.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"the config must be a mapping of keys to values, got {type(config).__name__}")
    if _check_value("task", config.get("task", "classification"), SCHEMA["task"]) == "llm":
        from unlearnx.experiment_llm import validate_llm_config

        return validate_llm_config(config)
    cfg = _validate_section({k: v for k, v in config.items() if not str(k).startswith("_")}, SCHEMA, "")
    if cfg["out_dir"] is None:
        cfg["out_dir"] = str(Path("runs") / re.sub(r"[^A-Za-z0-9._-]+", "_", cfg["name"]))
    _validate_data_kwargs(cfg)
    cfg["_methods"], cfg["_skipped"] = _validate_methods(cfg["methods"])
    if cfg["eval"]["suite"] == "corrective" and cfg["scenario"]["kind"] not in ("badnets", "confusion"):
        raise ConfigError("config key 'eval.suite': 'corrective' needs scenario.kind 'badnets' or 'confusion'")
    if cfg["threads"] < 0:
        raise ConfigError(f"config key 'threads': expected an integer >= 0, got {cfg['threads']}")
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device': 'cuda' requested but torch sees no GPU (use 'cpu' or 'auto')")
    return cfg


def _parse_override(item: str) -> tuple[list[str], object]:
    import yaml

    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value (e.g. train.epochs=5)")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: the key must be a dotted path like train.lr")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(config: Mapping, overrides: Sequence[str]) -> dict:
    """Apply `key=value` overrides (values parsed as YAML) to a copy of `config`.

    Keys are dotted paths: `train.epochs=5`, `seeds=[0,1]`, `scenario.fraction=0.2`. Inside
    `methods`, a segment selects an entry by index (`methods.0.lr=0.01`) or by name or label
    (`methods.ft.lr=0.01`); a method given as a bare name becomes a mapping.
    """
    cfg = copy.deepcopy(dict(config))
    for item in overrides:
        parts, value = _parse_override(item)
        node, trail = cfg, []
        for i, part in enumerate(parts[:-1]):
            trail.append(part)
            if isinstance(node, list):
                node = _select_entry(node, part, ".".join(trail))
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(trail[:-1])!r} is not a mapping")
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            node = nxt
        if isinstance(node, list):
            raise ConfigError(f"override {item!r}: name a key inside a method entry, e.g. methods.ft.lr=0.01")
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:-1])!r} is not a mapping")
        node[parts[-1]] = value
    return cfg


def _select_entry(entries: list, part: str, where: str) -> dict:
    if part.isdigit():
        i = int(part)
        if i >= len(entries):
            raise ConfigError(f"override: {where!r}: index {i} is out of range ({len(entries)} entries)")
    else:
        matches = [i for i, e in enumerate(entries)
                   if _norm(part) in (_norm(e if isinstance(e, str) else str(e.get("name", ""))),
                                      _norm("" if isinstance(e, str) else str(e.get("label", ""))))]
        if len(matches) != 1:
            raise ConfigError(f"override: {where!r} matches {len(matches)} method entries (use the index)")
        i = matches[0]
    if isinstance(entries[i], str):
        entries[i] = {"name": entries[i]}
    return entries[i]


def load_config(path, overrides: Sequence[str] = ()) -> dict:
    """Read a YAML (or JSON) config file, apply `overrides`, and validate it (see `validate_config`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys, got {type(raw).__name__}")
    return validate_config(apply_overrides(raw, overrides))


# ----------------------------------------------------------------------------- building blocks

def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_identity(path) -> dict | None:
    # User files enter step keys by content, so editing one invalidates the cached steps.
    return None if path is None else {"path": str(path), "sha256": _file_sha256(path)}


def _build_data(dcfg: dict, seed: int):
    from torch.utils.data import TensorDataset

    from unlearnx import data as data_mod

    if dcfg["path"] is None:
        builder = {"digits": data_mod.digits_dataset, "synthetic_images": data_mod.synthetic_images}[dcfg["name"]]
        return builder(seed=seed, **dcfg["kwargs"]), dcfg["name"]
    path = Path(dcfg["path"])
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            arrays = {k: torch.from_numpy(z[k]) for k in z.files}
    else:
        arrays = torch.load(path, map_location="cpu", weights_only=True)
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


def _build_scenario(scfg: dict, train, test, seed: int):
    from unlearnx import data as data_mod

    kind = scfg["kind"]
    kw = {k: v for k, v in scfg.items() if k != "kind"}
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


def _loss_curves(log) -> dict[str, list[float]]:
    """The loss curves in a training or unlearning log: every entry named like "*loss*" holding a
    list of numbers (per epoch or step), e.g. {"retain_loss": [...], "forget_loss": [...]}."""
    if not isinstance(log, Mapping):
        return {}
    out = {}
    for key, value in log.items():
        if isinstance(value, torch.Tensor):
            value = value.flatten().tolist()
        if ("loss" in str(key) and isinstance(value, (list, tuple)) and value
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            out[str(key)] = [float(v) for v in value]
    return out


def _resolve_device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)


def versions() -> dict[str, str]:
    """Versions of unlearnx, python, torch, numpy, scikit-learn and the kernel backend in use."""
    import numpy
    import sklearn

    import unlearnx
    from unlearnx import _native

    info = _native.build_info()
    return {"unlearnx": unlearnx.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "scikit-learn": sklearn.__version__,
            "native": "yes" if info.get("native") else "no (reference kernels)"}


def machine() -> dict[str, object]:
    """CPU model, logical CPUs, torch threads, OS and GPU (if any) of this process."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "os": platform.platform(), "gpu": gpu}


# ----------------------------------------------------------------------------- the run

class _Run:
    """State of one experiment run (one config, several seeds)."""

    def __init__(self, cfg: dict, out: Path, *, quiet: bool, eval_only: bool, echo: Callable[[str], None]):
        from unlearnx.distributed import current

        self.cfg, self.out, self.quiet, self.eval_only = cfg, out, quiet, eval_only
        # Under torchrun every rank computes (the loops are collective), rank 0 alone writes and talks.
        self.ctx = current()
        self.echo = (lambda msg: None) if quiet or not self.ctx.is_main else echo
        self.device = _resolve_device(cfg["device"])
        if self.device.type == "cuda" and self.ctx.device.type == "cuda":
            self.device = self.ctx.device  # this rank's GPU

    # ---- persistence
    def _cached(self, record_path: Path, weights: Path, key: str) -> dict | None:
        from unlearnx.report import read_json

        rec = read_json(record_path)
        if rec is None or rec.get("key") != key or not weights.is_file():
            return None
        if _file_sha256(weights) != rec.get("sha256"):
            return None  # the weights were replaced or damaged after the record was written
        return rec

    def _save(self, model, record: dict, record_path: Path, weights: Path) -> dict:
        from unlearnx.report import atomic_write_json, read_json, save_state_dict

        if self.ctx.is_main:
            # Weights first, record second: a record on disk always points at complete weights.
            save_state_dict(model, weights, metadata={"unlearnx_step": record["label"], "key": record["key"]})
            record["sha256"] = _file_sha256(weights)
            record["model_file"] = str(weights.relative_to(self.out))
            record["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            atomic_write_json(record_path, record)
        self.ctx.barrier()  # the other ranks read back what rank 0 wrote: one record for the step
        return record if self.ctx.is_main else read_json(record_path)

    # ---- evaluation
    def _evaluate(self, model, scenario, suite, *, seconds=None, reference=None, random_model=None) -> dict:
        from unlearnx.eval import evaluate

        kw = {}
        if reference is not None:
            kw.update(reference=reference, reference_seconds=reference.get("RTE-s"))
        return evaluate(model, suite=suite, scenario=scenario, seconds=seconds, random_model=random_model,
                        batch_size=self.cfg["eval"]["batch_size"], device=self.device, **kw)

    def _per_item(self, model, scenario) -> dict | None:
        if not self.cfg["eval"]["per_item"]:
            return None
        from unlearnx.eval import predict

        probs, labels = predict(model, scenario.forget, batch_size=self.cfg["eval"]["batch_size"], device=self.device)
        return {"p_true": [round(float(p), 6) for p in probs.gather(1, labels[:, None]).squeeze(1)],
                "correct": (probs.argmax(1) == labels).int().tolist()}

    # ---- steps
    def _train_step(self, label, model, data, key, seed_dir, seed) -> tuple[object, dict, bool]:
        """Train `model` on `data` with the config's recipe (the original or Retrain), cached."""
        from unlearnx.methods.training import train_classifier

        stem = label.lower()
        rec_path, weights = seed_dir / f"{stem}.json", seed_dir / f"{stem}.safetensors"
        rec = self._cached(rec_path, weights, key)
        if rec is not None:
            from unlearnx.report import load_state_dict

            self.echo(f"[seed {seed}] {label}: reusing {weights.relative_to(self.out)}")
            return load_state_dict(model, weights).to(self.device), rec, True
        if self.eval_only:
            raise FileNotFoundError(f"{weights} is missing or was made with another config; run `unlearnx run` first")
        self.echo(f"[seed {seed}] {label}: training on {len(data)} samples")
        t = self.cfg["train"]
        model = model.to(self.device)
        start = time.perf_counter()
        log = train_classifier(model, data, epochs=t["epochs"], lr=t["lr"], optimizer=t["optimizer"],
                               momentum=t["momentum"], weight_decay=t["weight_decay"], batch_size=t["batch_size"],
                               schedule=t["schedule"], seed=seed, progress=not self.quiet)
        seconds = time.perf_counter() - start
        rec = {"label": label, "key": key, "seconds": seconds, "loss_curves": _loss_curves(log)}
        return model, self._save(model, rec, rec_path, weights), False

    def _method_step(self, entry, original, scenario, key, seed_dir, seed) -> tuple[object, dict, bool]:
        import unlearnx

        # ASCII file names (ℓ1-sparse -> l1-sparse) so run folders travel across file systems.
        ascii_label = unicodedata.normalize("NFKD", entry["label"]).encode("ascii", "ignore").decode()
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_label).strip("_") or entry["method"]
        rec_path, weights = seed_dir / "methods" / f"{slug}.json", seed_dir / "methods" / f"{slug}.safetensors"
        model = copy.deepcopy(original)
        rec = self._cached(rec_path, weights, key)
        if rec is not None:
            from unlearnx.report import load_state_dict

            self.echo(f"[seed {seed}] {entry['label']}: reusing {weights.relative_to(self.out)}")
            return load_state_dict(model, weights).to(self.device), rec, True
        if self.eval_only:
            raise FileNotFoundError(f"{weights} is missing or was made with another config; run `unlearnx run` first")
        self.echo(f"[seed {seed}] {entry['label']}: unlearning with {entry['method']} {entry['hparams'] or ''}")
        torch.manual_seed(seed)
        res = unlearnx.unlearn(model, method=entry["method"], forget=scenario.forget, retain=scenario.retain,
                               inplace=True, seed=seed, progress=not self.quiet, device=self.device,
                               **entry["hparams"])
        from unlearnx.report import to_jsonable

        rec = {"label": entry["label"], "key": key, "method": entry["method"], "hparams": entry["hparams"],
               "hparams_resolved": to_jsonable(getattr(res, "hparams", None) or {}),
               "seconds": float(res.seconds), "loss_curves": _loss_curves(res.log),
               "log": _small_log(to_jsonable(res.log or {}))}
        return res.model, self._save(res.model, rec, rec_path, weights), False

    def run_seed(self, seed: int) -> dict:
        from tqdm import tqdm

        from unlearnx.data import labels_of
        from unlearnx.report import atomic_write_json

        cfg = self.cfg
        seed_dir = self.out / f"seed-{seed}"
        (train, test), data_name = _build_data(cfg["data"], seed)
        scenario = _build_scenario(cfg["scenario"], train, test, seed)
        suite = cfg["eval"]["suite"]
        if suite == "auto":
            suite = "corrective" if cfg["scenario"]["kind"] in ("badnets", "confusion") else "classification"
        mkw = _model_kwargs(cfg["model"], scenario.train)
        base = _key(cfg["data"], _file_identity(cfg["data"]["path"]), cfg["scenario"], cfg["model"]["name"], mkw,
                    cfg["train"], seed)
        timings, cached = {}, []

        # The original model: user weights, or trained on D (the manipulated D for corrective scenarios).
        original = _fresh_model(cfg["model"], mkw, seed)
        if cfg["model"]["path"] is not None:
            from unlearnx.report import load_state_dict

            original = load_state_dict(original, cfg["model"]["path"]).to(self.device)
            orig_rec = {"label": "Original", "key": _key(base, _file_identity(cfg["model"]["path"])),
                        "seconds": None, "loss_curves": {}}
        else:
            original, orig_rec, hit = self._train_step("Original", original, scenario.train, _key(base, "original"),
                                                       seed_dir, seed)
            cached += ["Original"] if hit else []
        timings["original_train_s"] = orig_rec["seconds"]

        retrain, re_rec, hit = self._train_step("Retrain", _fresh_model(cfg["model"], mkw, seed), scenario.retain,
                                                _key(base, "retrain"), seed_dir, seed)
        cached += ["Retrain"] if hit else []
        timings["retrain_s"] = re_rec["seconds"]

        runs = {"Retrain": re_rec, "Original": orig_rec}
        models = {"Retrain": retrain, "Original": original}
        for entry in cfg["_methods"]:
            key = _key(orig_rec["key"], entry["method"], entry["hparams"])
            models[entry["label"]], runs[entry["label"]], hit = self._method_step(entry, original, scenario, key,
                                                                                   seed_dir, seed)
            cached += [entry["label"]] if hit else []
            timings[f"{entry['label']}_s"] = runs[entry["label"]]["seconds"]

        random_model = _fresh_model(cfg["model"], mkw, seed + 10_007).to(self.device) if cfg["eval"]["zrf"] else None
        start = time.perf_counter()
        reference = self._evaluate(retrain, scenario, suite, seconds=re_rec["seconds"], random_model=random_model)
        metrics = {}
        for label in tqdm(list(models), desc=f"evaluate (seed {seed})", disable=self.quiet, leave=False):
            seconds = None if label == "Original" else runs[label]["seconds"]
            metrics[label] = self._evaluate(models[label], scenario, suite, seconds=seconds, reference=reference,
                                            random_model=random_model)
        timings["evaluation_s"] = time.perf_counter() - start
        per_item = None
        if cfg["eval"]["per_item"]:
            per_item = {"forget_indices": scenario.forget_indices.tolist(),
                        "labels": labels_of(scenario.forget).tolist(),
                        "models": {label: self._per_item(m, scenario) for label, m in models.items()}}
        forget_digest = hashlib.sha256(scenario.forget_indices.to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()
        seed_result = {
            "seed": seed, "suite": suite, "cached": cached, "timings": timings, "metrics": metrics,
            "runs": {label: {k: v for k, v in r.items() if k != "key"} for label, r in runs.items()},
            "per_item": per_item,
            "scenario": {"name": scenario.name, "data": data_name, "n_train": len(scenario.train),
                         "n_forget": len(scenario.forget), "n_retain": len(scenario.retain),
                         "n_test": len(scenario.test), "forget_digest": forget_digest},
        }
        if self.ctx.is_main:
            atomic_write_json(seed_dir / "seed_results.json", seed_result)
        return seed_result


def _small_log(log: dict, limit: int = 2000) -> dict:
    # Keep scalar and short-list entries of a method's log; long per-step traces stay out of results.json.
    out = {}
    for k, v in log.items():
        if isinstance(v, list) and len(v) > limit:
            out[k] = f"<{len(v)} values>"
        else:
            out[k] = v
    return out


def _aggregate(per_seed: list[dict]) -> tuple[dict, dict]:
    labels = list(per_seed[0]["metrics"])
    rows, std = {}, {}
    for label in labels:
        keys = list(dict.fromkeys(k for s in per_seed for k in s["metrics"][label]))
        rows[label], std[label] = {}, {}
        for k in keys:
            vals = [s["metrics"][label][k] for s in per_seed if s["metrics"][label].get(k) is not None]
            if not vals:
                continue
            rows[label][k] = statistics.fmean(vals)
            if len(vals) > 1:
                std[label][k] = statistics.stdev(vals)
    return rows, (std if len(per_seed) > 1 else {})


def run_experiment(config: Mapping, out_dir=None, *, quiet: bool = False, eval_only: bool = False,
                   echo: Callable[[str], None] | None = None) -> dict:
    """Run (or, with `eval_only`, re-evaluate) the experiment of `config`; return the results dict.

    config: a raw or validated config (validated here either way). out_dir: run directory
    (default: the config's out_dir). quiet: no progress bars or step messages. eval_only: never
    train or unlearn; load the saved models of the run directory and evaluate them again (fails
    with FileNotFoundError naming the missing file). Steps already finished with the same inputs
    are reused (see the module docstring). Writes results.json, report.md, report.html and
    plots/ into the run directory. Under torchrun (unlearnx.distributed) every rank runs the
    experiment, rank 0 alone writes files, and the other ranks wait for it at barriers.
    """
    cfg = validate_config(config)
    out = Path(out_dir if out_dir is not None else cfg["out_dir"])
    if cfg["task"] == "llm":
        from unlearnx.experiment_llm import run_llm_experiment

        return run_llm_experiment(cfg, out, quiet=quiet, eval_only=eval_only, echo=echo)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir: {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    run = _Run(cfg, out, quiet=quiet, eval_only=eval_only, echo=echo)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    try:
        mach = machine()  # records the thread count the run used
        if run.ctx.world_size > 1:
            mach["processes"] = run.ctx.world_size  # torchrun: the same results, computed by N ranks
        per_seed = [run.run_seed(seed) for seed in cfg["seeds"]]
    finally:
        torch.set_num_threads(threads)
    rows, std = _aggregate(per_seed)
    public_cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    first_runs = per_seed[0]["runs"]
    hparams = {e["label"]: {"method": e["method"], "hparams": e["hparams"],
                            "resolved": first_runs[e["label"]].get("hparams_resolved", {})} for e in cfg["_methods"]}
    audit_models = {}
    for s in per_seed:
        for label, r in s["runs"].items():
            if r.get("model_file"):
                audit_models[f"seed {s['seed']} / {label}"] = {"file": r["model_file"], "sha256": r["sha256"]}
    results = {
        "format": "unlearnx-results/1",
        "name": cfg["name"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "eval" if eval_only else "run",
        "suite": per_seed[0]["suite"],
        "seeds": cfg["seeds"],
        "scenario": {k: v for k, v in per_seed[0]["scenario"].items() if k != "forget_digest"},
        "rows": rows,
        "std": std,
        "hparams": hparams,
        "skipped": cfg["_skipped"],
        "runs": {str(s["seed"]): s["runs"] for s in per_seed},
        "per_item": {str(s["seed"]): s["per_item"] for s in per_seed if s["per_item"] is not None},
        "per_seed_metrics": {str(s["seed"]): s["metrics"] for s in per_seed},
        "cached_steps": {str(s["seed"]): s["cached"] for s in per_seed},
        "timings": {**{f"seed {s['seed']}: {k}": v for s in per_seed for k, v in s["timings"].items()},
                    "total_s": time.perf_counter() - start},
        "audit": {"n_forget": per_seed[0]["scenario"]["n_forget"],
                  "forget_digest": {str(s["seed"]): s["scenario"]["forget_digest"] for s in per_seed},
                  "models": audit_models},
        "versions": versions(),
        "machine": mach,
        "config": public_cfg,
    }
    from unlearnx.report import atomic_write_json, write_report

    if run.ctx.is_main:
        atomic_write_json(out / "results.json", results)
        write_report(results, out)
    run.ctx.barrier()  # no rank returns before the report exists
    return results
