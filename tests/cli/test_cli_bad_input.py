"""Bad input to experiment configs: a generated battery over every schema key, property tests, and
the cases a user reported (scenario n / fraction, unreadable model weights). Every failure is a
ConfigError (exit 2 from the CLI) naming the key, raised before any file is written."""
import math
import pathlib

import pytest
import torch
import yaml

from unlearnx import cli
from unlearnx.experiments import ConfigError, Field, get_task, validate_config

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _leaves(schema, prefix=""):
    for key, f in schema.items():
        if isinstance(f, dict):
            yield from _leaves(f, f"{prefix}{key}.")
        elif isinstance(f, Field):
            yield prefix + key, f


def _bad_values(f: Field):
    """Values of the wrong kind (and non-finite numbers) for a field."""
    if f.kind == "number":
        return ["fast", math.nan, math.inf, -math.inf, True, [1.0]]
    if f.kind == "int":
        return ["3", 2.5, True, None if f.default is not None else "x", [1]]
    if f.kind == "int_list":
        return ["0", [], [0, 0], [0.5], True]
    if f.kind == "bool":
        return ["yes", 1]
    if f.kind == "str":
        return [5, ["a"]] + (["no-such-choice"] if f.choices else [])
    if f.kind == "dict":
        return ["x", [1]]
    if f.kind == "file":
        return [5, "/no/such/file.safetensors"]
    return []


def _set(cfg: dict, path: str, value) -> dict:
    node = cfg
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return cfg


def _base(task: str) -> dict:
    return {"task": task, "methods": ["ga"]}


def _cases():
    for task in ("classification", "llm"):
        for path, f in _leaves(get_task(task).schema()):
            if path in ("task", "methods"):
                continue
            for value in _bad_values(f):
                if value is None:
                    continue
                yield task, path, value


@pytest.mark.parametrize("task,path,value", list(_cases()), ids=lambda v: repr(v)[:30])
def test_every_key_rejects_wrong_kinds_naming_the_key(task, path, value):
    with pytest.raises(ConfigError) as err:
        validate_config(_set(_base(task), path, value))
    assert path in str(err.value)


@pytest.mark.parametrize("path,value", [
    ("train.epochs", 0), ("train.lr", 0.0), ("train.lr", -1.0), ("train.batch_size", 0), ("train.momentum", 1.5),
    ("train.weight_decay", -0.1), ("threads", -1), ("eval.batch_size", 0),
])
def test_classification_numbers_out_of_range_name_the_key(path, value):
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        validate_config(_set(_base("classification"), path, value))


def test_random_scenario_by_count_validates_twice_and_rejects_zero():
    cfg = validate_config({"scenario": {"kind": "random", "n": 5}})
    assert cfg["scenario"]["n"] == 5 and cfg["scenario"]["fraction"] is None
    assert validate_config(cfg)["scenario"] == cfg["scenario"]  # a validated config validates again
    for n in (0, -3):
        with pytest.raises(ConfigError, match=r"scenario\.n.*>= 1"):
            validate_config({"scenario": {"kind": "random", "n": n}})


@pytest.mark.parametrize("scenario", [
    {"kind": "random", "fraction": 0}, {"kind": "random", "fraction": 1.5}, {"kind": "random", "fraction": -0.1},
    {"kind": "badnets", "poison_fraction": 0}, {"kind": "badnets", "identified_fraction": 2.0},
    {"kind": "confusion", "fraction": 0.0}, {"kind": "badnets", "patch": 0},
])
def test_scenario_fractions_out_of_range_fail_in_validation(tmp_path, capsys, scenario):
    path = tmp_path / "c.yaml"
    out = tmp_path / "run"
    path.write_text(yaml.safe_dump({"scenario": scenario, "methods": ["ft"], "out_dir": str(out)}))
    assert cli.main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "scenario." in err and "Traceback" not in err
    assert not out.exists()


def _weights_cases(tmp_path):
    from safetensors.torch import save_file

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    pickled = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(2), "obj": pathlib.PurePosixPath("x")}, pickled)  # needs full pickle
    wrong = tmp_path / "wrong.safetensors"
    save_file({"not_a_layer.weight": torch.zeros(3)}, str(wrong))
    return {"corrupt": corrupt, "pickle": pickled, "wrong-keys": wrong}


@pytest.mark.parametrize("case", ["corrupt", "pickle", "wrong-keys"])
def test_unreadable_model_weights_exit_2_naming_model_path(tmp_path, capsys, case):
    weights = _weights_cases(tmp_path)[case]
    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"path": str(weights)}, "methods": ["ft"], "out_dir": str(out),
                                   "train": {"epochs": 1}, "eval": {"per_item": False}}))
    assert cli.main(["run", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "model.path" in err and str(weights.name) in err and "Traceback" not in err
    assert not out.exists()  # nothing half-written: no run folder


_value = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=8), st.lists(st.integers(-2, 5), max_size=3))
_keys = st.sampled_from(["seeds", "threads", "device", "name", "train.epochs", "train.lr", "train.momentum",
                         "train.optimizer", "scenario.kind", "scenario.fraction", "scenario.n", "scenario.classes",
                         "eval.suite", "eval.batch_size", "data.name", "model.name", "methods", "nonsense.key"])


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_keys, _value, max_size=4))
def test_config_validation_only_ever_raises_config_error(assignments):
    cfg = {}
    for path, value in assignments.items():
        _set(cfg, path, value)
    try:
        out = validate_config(cfg)
    except ConfigError as exc:
        assert str(exc)
    else:
        assert out["_methods"]  # a valid config resolves its methods
