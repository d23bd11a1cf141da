"""Generated bad-input battery for `unlearnx exact` (issue 25): every numeric argument of every
subcommand (found by walking the argparse tree, so a new argument is covered automatically) gets a
wrong type, NaN, +-inf, values just outside its range and an empty string; every file argument gets
a missing file, a folder, a wrong suffix and corrupt or foreign files of each format it reads. Each
case asserts exit status 2, that the message names the argument, no traceback, and that nothing was
written."""
import argparse
import hashlib
import io
import math
import pickle
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unlearnx.exact.cli import add_subcommands, main

_parser = argparse.ArgumentParser()
_sub = _parser.add_subparsers(dest="command")
add_subcommands(_sub)
SUBCOMMANDS = _sub.choices


def _numeric_cases():
    for cmd, parser in SUBCOMMANDS.items():
        for action in parser._actions:
            bounds = getattr(action.type, "bounds", None)
            if not action.option_strings or bounds is None:
                continue
            opt = max(action.option_strings, key=len)
            kind, low, high = bounds[:3]
            bad = ["abc", "nan", "NaN", "inf", "-inf", "", " ", "1e999"]
            if kind == "int":
                bad += [str(low - 1), str(high + 1), "1.5", "0x10"]
            else:
                low_incl, high_incl = bounds[3:]
                bad += [str(low) if not low_incl else str(low - 1e-3), str(high * 1.01 + 1e-9)]
                if high_incl is False:
                    bad.append(str(high))
            for value in bad:
                yield pytest.param(cmd, opt, value, id=f"{cmd}{opt}={value!r}")


NUMERIC = list(_numeric_cases())


def test_battery_covers_every_numeric_argument():
    opts = {(p.values[0], p.values[1]) for p in NUMERIC}
    assert {("init", o) for o in ("--shards", "--slices", "--sequences", "--seed", "--hidden", "--epochs", "--lr",
                                  "--batch-size")} <= opts


def _call(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse refuses a bad argument with exit status 2
        return exc.code


def _snapshot(directory):
    skip = {".lock", "ledger.sqlite-wal", "ledger.sqlite-shm"}
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name not in skip}


def _expect_refused(argv, capsys, name):
    capsys.readouterr()
    rc = _call(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, rc, err)
    assert name in err, (name, err)
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sisa_template):
    import shutil

    return shutil.copytree(sisa_template, tmp_path_factory.mktemp("battery") / "m")


def _required(cmd, trained):
    return {"delete": ["--ids", "1", "--requester", "t"]}.get(cmd, [])


@pytest.mark.parametrize("cmd, opt, value", NUMERIC)
def test_numeric_argument_refused_before_anything_is_written(tmp_path, capsys, trained, cmd, opt, value):
    target = tmp_path / "new" if cmd == "init" else trained
    before = None if cmd == "init" else _snapshot(trained)
    _expect_refused([cmd, str(target), *_required(cmd, trained), f"{opt}={value}"], capsys, opt)
    if cmd == "init":
        assert not target.exists()
    else:
        assert _snapshot(trained) == before


TEXT_CASES = [
    ("--ids", v) for v in ("", ",", "a", "1,a", "1.5", "1,1", "nan", "inf")
] + [
    ("--requester", v) for v in ("", "   ", "x" * 201, "bad\x00tag", "line\nbreak")
] + [
    ("--request-key", v) for v in ("", "  ", "k" * 201, "\x07")
]


@pytest.mark.parametrize("opt, value", TEXT_CASES, ids=[f"{o}={v[:12]!r}" for o, v in TEXT_CASES])
def test_delete_text_arguments_refused(capsys, trained, opt, value):
    args = {"--ids": "1", "--requester": "t"}
    args[opt] = value
    argv = ["delete", str(trained)] + [x for k, v in args.items() for x in (f"{k}={v}",)]
    before = _snapshot(trained)
    _expect_refused(argv, capsys, opt)
    assert _snapshot(trained) == before


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _pt(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class Foreign:  # a pickled object: must never be unpickled
    def __reduce__(self):
        return (print, ("unpickled!",))


GOOD = dict(x=np.zeros((20, 4), np.float32), y=np.arange(20) % 2, ids=np.arange(20))
_zip = io.BytesIO()
with zipfile.ZipFile(_zip, "w") as z:
    z.writestr("readme.txt", "not arrays")

BAD_FILES = {
    "garbage.npz": b"\x00\x01not a zip at all",
    "truncated.npz": _npz(**GOOD)[:100],
    "foreign-zip.npz": _zip.getvalue(),
    "object-array.npz": _npz(x=np.array([Foreign()], dtype=object)),
    "single-array.npz": (lambda b: (np.save(b, np.zeros(3)), b.getvalue())[1])(io.BytesIO()),
    "empty.npz": b"",
    "pickle.pt": pickle.dumps({"x": Foreign()}),
    "garbage.pt": b"\x80\x04garbage",
    "tensor-not-dict.pt": _pt(torch.zeros(3, 4)),
    "text.json.npz": b'{"x": [1, 2]}',
}
# Files that read fine but hold the wrong content for --data.
DATA_CONTENT = {
    "missing-keys.npz": _npz(x=GOOD["x"]),
    "nan-x.npz": _npz(**{**GOOD, "x": np.full((20, 4), np.nan, np.float32)}),
    "string-x.npz": _npz(**{**GOOD, "x": np.array([["a"] * 4] * 20)}),
    "float-ids.npz": _npz(**{**GOOD, "ids": np.arange(20) + 0.5}),
    "dup-ids.npz": _npz(**{**GOOD, "ids": np.zeros(20, np.int64)}),
    "short-y.npz": _npz(**{**GOOD, "y": np.zeros(3, np.int64)}),
    "negative-y.npz": _npz(**{**GOOD, "y": -np.ones(20, np.int64)}),
    "empty-x.npz": _npz(x=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int64), ids=np.zeros(0, np.int64)),
    "1d-x.pt": _pt({"x": torch.zeros(20), "y": torch.zeros(20, dtype=torch.long), "ids": torch.arange(20)}),
    "test-x-no-y.npz": _npz(**GOOD, test_x=GOOD["x"]),
    "bad-test-features.npz": _npz(**GOOD, test_x=np.zeros((3, 7), np.float32), test_y=np.zeros(3, np.int64)),
}
INPUT_CONTENT = {
    "no-x.npz": _npz(y=np.zeros(3, np.int64)),
    "wrong-features.npz": _npz(x=np.zeros((3, 7), np.float32)),
    "nan-x.npz": _npz(x=np.full((3, 64), np.nan, np.float32)),
    "string-x.npz": _npz(x=np.array([["a"] * 64] * 3)),
    "float-y.npz": _npz(x=np.zeros((3, 64), np.float32), y=np.zeros(3)),
}


def _file_cases(content):
    names = {**BAD_FILES, **content}
    return ["missing.npz", "folder.npz", "wrong-suffix.csv"] + sorted(names)


def _materialise(tmp_path, name, content):
    path = tmp_path / name
    if name == "folder.npz":
        path.mkdir()
    elif name == "wrong-suffix.csv":
        path.write_text("1,2,3\n")
    elif name != "missing.npz":
        path.write_bytes({**BAD_FILES, **content}[name])
    return path


@pytest.mark.parametrize("name", _file_cases(DATA_CONTENT))
def test_init_data_file_refused_and_nothing_written(tmp_path, capsys, name):
    path = _materialise(tmp_path, name, DATA_CONTENT)
    target = tmp_path / "out" / "m"
    err = _expect_refused(["init", str(target), "--data", str(path), "-S", "2", "-R", "2"], capsys, "--data")
    assert "unpickled!" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", _file_cases(INPUT_CONTENT))
def test_serve_predict_input_refused_and_nothing_written(tmp_path, capsys, trained, name):
    path = _materialise(tmp_path, name, INPUT_CONTENT)
    before = _snapshot(trained)
    out = tmp_path / "pred.json"
    _expect_refused(["serve-predict", str(trained), "--input", str(path), "--out", str(out)], capsys, "--input")
    assert not out.exists() and _snapshot(trained) == before


@pytest.mark.parametrize("make", ["folder", "no-parent"])
def test_serve_predict_out_refused(tmp_path, capsys, trained, make):
    out = tmp_path / "pred" if make == "folder" else tmp_path / "nowhere" / "p.json"
    if make == "folder":
        out.mkdir()
    _expect_refused(["serve-predict", str(trained), "--out", str(out)], capsys, "--out")


@pytest.mark.parametrize("cmd", ["train", "delete", "serve-predict", "audit", "status"])
def test_directory_argument_missing_or_a_file(tmp_path, capsys, cmd):
    extra = _required(cmd, None)
    for target in (tmp_path / "absent", tmp_path / "file.txt"):
        if target.name == "file.txt":
            target.write_text("x")
        _expect_refused([cmd, str(target), *extra], capsys, str(target))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_init_directory_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    _expect_refused(["init", str(tmp_path / "f")], capsys, str(tmp_path / "f"))


@pytest.mark.parametrize("recipe, key", [({"lr": float("nan")}, "lr"), ({"lr": float("inf")}, "lr"),
                                          ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"),
                                          ({"momentum": 1.0}, "momentum"), ({"lr": "0.1"}, "lr")])
def test_library_create_validates_recipe_before_writing(tmp_path, digits, recipe, key):
    from unlearnx.exact import ExactStore

    with pytest.raises(ValueError, match=rf"recipe\['{key}'\]"):
        ExactStore.create(tmp_path / "m", train=digits["train"], recipe=recipe)
    assert not (tmp_path / "m").exists()


def test_failed_init_removes_what_it_created(tmp_path, digits, monkeypatch):
    from unlearnx.exact import ExactStore
    from unlearnx.exact import store as store_mod

    def boom(path, obj):
        raise OSError(f"disk full writing {path}")

    monkeypatch.setattr(store_mod, "atomic_write_json", boom)  # fails at the manifest swap
    with pytest.raises(OSError, match="disk full"):
        ExactStore.create(tmp_path / "a" / "b" / "m", train=digits["train"], shards=2, slices=2)
    assert not (tmp_path / "a").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("user file")
    with pytest.raises(OSError, match="disk full"):
        ExactStore.create(tmp_path / "mine", train=digits["train"], shards=2, slices=2)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["keep.txt"]


def _numeric_parsers():
    for cmd, parser in SUBCOMMANDS.items():
        for action in parser._actions:
            if getattr(action.type, "bounds", None) is not None:
                yield action.type


@settings(max_examples=25, deadline=None)
@given(text=st.one_of(st.text(max_size=12), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                      st.integers(-10**20, 10**20).map(str)))
def test_numeric_parsers_return_in_range_or_refuse(text):
    """Property: any text either parses to a finite value inside the argument's range, or raises
    ArgumentTypeError (argparse then names the argument and exits 2); nothing else escapes."""
    for parse in _numeric_parsers():
        kind, low, high = parse.bounds[:3]
        try:
            value = parse(text)
        except argparse.ArgumentTypeError as exc:
            assert "expected" in str(exc)
            continue
        assert math.isfinite(value) and low <= value <= high
        assert isinstance(value, int) if kind == "int" else isinstance(value, float)
        if kind == "float":
            low_incl, high_incl = parse.bounds[3:]
            assert (value > low or low_incl) and (value < high or high_incl)
