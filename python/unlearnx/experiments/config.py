"""The config language of experiments: typed fields, validation with suggestions, overrides, loading.

A task declares its schema as nested dicts of `Field`s; `validate_section` checks a config section
against it (unknown keys get a close-match suggestion, values their kind and choices) and fills in
defaults. `validate_config` picks the task from the config's `task` key (the task registry,
unlearnx.experiments.tasks) and lets it validate the rest. Every error is a `ConfigError` whose
message names the config key.

    cfg = load_config("configs/methods/ssd.yaml", overrides=["methods.ssd.alpha=5"])
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ConfigError", "Field", "suggest", "check_value", "check_range", "validate_section", "validate_methods",
           "normalise_name", "apply_overrides", "load_config", "validate_config", "default_out_dir"]


class ConfigError(ValueError):
    """An invalid experiment configuration; the message names the offending config key."""


@dataclass(frozen=True)
class Field:
    """One config entry: kind in {"str", "int", "number", "bool", "int_list", "dict", "file", "any"}."""

    kind: str
    default: object = None
    choices: tuple | None = None
    help: str = ""


def suggest(key: str, options) -> str:
    """' (did you mean 'x'?)' for a close match of `key` among `options`, else the allowed list."""
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(sorted(options))})"


def check_value(path: str, value, f: Field):
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
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise ConfigError(f"config key {path!r}: expected a file path, got {value!r}")
        if not Path(value).is_file():
            raise ConfigError(f"{path}: file not found: {value}")
        value = str(value)
    if f.choices is not None and value not in f.choices:
        raise ConfigError(f"config key {path!r}: expected one of {list(f.choices)}, got {value!r}")
    return value


def check_range(path: str, value, *, low=None, high=None, low_open: bool = False) -> None:
    """ConfigError naming `path` unless low <= value <= high (low < value with low_open); None passes."""
    if value is None:
        return
    bad = ((low is not None and (value <= low if low_open else value < low))
           or (high is not None and value > high))
    if bad:
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else f"<= {high}"
        raise ConfigError(f"config key {path!r}: expected a value {' and '.join(p for p in (lo, hi) if p)}, "
                          f"got {value!r}")


def validate_section(cfg, schema: Mapping, prefix: str, *, special: Mapping | None = None) -> dict:
    """Check the mapping `cfg` against `schema` ({key: Field or nested schema}); return a complete
    copy with defaults. special: {key: function(value) -> validated} for sections whose keys
    depend on another key (e.g. a scenario's kind)."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'!r}: expected a mapping, got {cfg!r}")
    for key in cfg:
        if key not in schema:
            raise ConfigError(f"unknown config key {prefix + str(key)!r}{suggest(str(key), schema)}")
    out = {}
    for key, f in schema.items():
        if special and key in special:
            out[key] = special[key](cfg.get(key) or {})
        elif isinstance(f, Mapping):
            out[key] = validate_section(cfg.get(key) or {}, f, f"{prefix}{key}.")
        elif key in cfg:
            out[key] = check_value(prefix + key, cfg[key], f)
        else:
            out[key] = copy.deepcopy(f.default)
    return out


def normalise_name(name: str) -> str:
    """Method names compare without case and punctuation (l1_sparse == L1-Sparse)."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


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


_METHOD_ENTRY_KEYS = ("name", "label", "optional")


def validate_methods(entries, task: str, *, display_names: Mapping[str, str] | None = None,
                     excluded: Mapping[str, str] | None = None,
                     reserved_labels: Sequence[str] = ("Retrain", "Original", "target")) -> tuple[list[dict], list[dict]]:
    """Return (runnable entries, skipped entries) of a config's `methods` list.

    An entry: {label, method, hparams}. task: the method registry to look names up in
    ("classifier", "causal_lm", "diffusion"); display_names: {registered name: table label}
    (default: the registered name); excluded: {registered name: why it cannot run in this task}.
    """
    from unlearnx import methods as methods_mod

    display_names = display_names or {}
    excluded = excluded or {}
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"config key 'methods': expected a non-empty list of methods, got {entries!r}")
    registry = {normalise_name(n): n for n in methods_mod.available(task=task)}
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
        if normalise_name(name) not in registry:
            if optional:
                skipped.append({"method": name, "reason": "not registered in this installation"})
                continue
            hint = suggest(name, list(registry.values())) if registry else " (no method is registered yet)"
            raise ConfigError(f"config key '{path}.name': unknown method {name!r}{hint}")
        registered = registry[normalise_name(name)]
        if registered in excluded:
            raise ConfigError(f"config key '{path}.name': {registered!r} {excluded[registered]}")
        label = entry.get("label", display_names.get(registered, registered))
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"config key '{path}.label': expected a non-empty string, got {label!r}")
        if label in labels or label in reserved_labels:
            raise ConfigError(f"config key '{path}.label': the label {label!r} is used twice (a duplicate: set "
                              "'label' to tell the runs apart)")
        labels.add(label)
        defaults = dict(methods_mod.get(registered, task=task).defaults_for(entry))
        hparams = {}
        for key, value in entry.items():
            if key in _METHOD_ENTRY_KEYS:
                continue
            if key not in defaults:
                raise ConfigError(f"unknown config key '{path}.{key}' for method {registered!r}"
                                  + (suggest(key, defaults) if defaults else " (it has no hyper-parameters)"))
            value = check_value(f"{path}.{key}", value, _hparam_kind(defaults[key]))
            if isinstance(defaults[key], tuple) and isinstance(value, list):
                value = tuple(value)  # YAML has no tuples; the method's default says which it wants
            hparams[key] = value
        runnable.append({"label": label, "method": registered, "hparams": hparams})
    if not runnable:
        raise ConfigError("config key 'methods': none of the listed methods is registered "
                          f"({', '.join(s['method'] for s in skipped)})")
    return runnable, skipped


def default_out_dir(name: str) -> str:
    """runs/<name with unsafe characters replaced>."""
    return str(Path("runs") / re.sub(r"[^A-Za-z0-9._-]+", "_", name))


def validate_config(config: Mapping) -> dict:
    """Check `config` against its task's schema and return a complete copy with defaults filled in.

    The task comes from the `task` key (default "classification"; `available_tasks()`). Adds
    "_methods" (the resolved runnable entries) and "_skipped" (optional methods that are not
    registered). Raises ConfigError naming the key: unknown keys (with a close-match suggestion),
    wrong types, values outside their choices or ranges, missing files, unknown methods or
    hyper-parameters. Validating an already validated config gives the same config. An optional
    `tune` section (any task) is checked by `unlearnx.experiments.tune.validate_tune`.
    """
    from unlearnx.experiments.tasks import available_tasks, get_task

    if not isinstance(config, Mapping):
        raise ConfigError(f"the config must be a mapping of keys to values, got {type(config).__name__}")
    name = config.get("task", "classification")
    if name not in available_tasks():
        raise ConfigError(f"config key 'task': expected one of {available_tasks()}, got {name!r}")
    task = get_task(name)
    # `tune` (the search of `unlearnx tune`, unlearnx.experiments.tune) is a section of every task;
    # `unlearnx run` carries it along unused.
    public = {k: v for k, v in config.items() if not str(k).startswith("_") and k != "tune"}
    cfg = validate_section(public, task.schema(), "", special=task.special_sections())
    if cfg.get("out_dir") is None:
        cfg["out_dir"] = default_out_dir(cfg["name"])
    if cfg.get("device") == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("config key 'device': 'cuda' requested but torch sees no GPU (use 'cpu' or 'auto')")
    cfg = task.validate(cfg)
    if config.get("tune") is not None:
        from unlearnx.experiments.tune import validate_tune

        cfg["tune"] = validate_tune(config["tune"], cfg)
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
        for part in parts[:-1]:
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
                   if normalise_name(part) in (normalise_name(e if isinstance(e, str) else str(e.get("name", ""))),
                                               normalise_name("" if isinstance(e, str) else str(e.get("label", ""))))]
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
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys, got {type(raw).__name__}")
    return validate_config(apply_overrides(raw, overrides))
