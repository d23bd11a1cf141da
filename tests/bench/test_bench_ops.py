"""unlearnx.bench: every op family runs on tiny shapes and writes rows of the one schema."""
import csv
import importlib
import io

import pytest
import torch

from unlearnx.bench import FAMILIES
from unlearnx.bench import harness


def _rows(path):
    text = path.read_text()
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == harness.OP_COLUMNS
    return list(reader)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_runs_quick_and_writes_the_schema(family, tmp_path, capsys):
    out = tmp_path / f"{family}.csv"
    mod = importlib.import_module(FAMILIES[family])
    assert mod.main(["--quick", "--no-compile", "--reps", "1", "--csv", str(out)]) == 0
    rows = _rows(out)
    assert rows
    printed = capsys.readouterr().out
    for kernel in {r["kernel"] for r in rows}:
        case = [r for r in rows if r["kernel"] == kernel]
        providers = {r["provider"] for r in case}
        assert "eager" in providers and "unlearnx" in providers, (kernel, providers)
        assert kernel in printed
    for r in rows:
        ms = float(r["ms_p50"])
        assert ms > 0 and float(r["ms_p20"]) <= ms <= float(r["ms_p80"])
        # the ratios and the ceiling share are computed from the row's own numbers
        assert float(r["x_vs_eager"]) == pytest.approx(float(r["eager_ms"]) / ms, rel=2e-3, abs=2e-3)
        assert r["compile_ms"] == "" and r["x_vs_compile"] == ""  # --no-compile
        assert r["ceiling"] and float(r["limit_ms"]) > 0
        assert float(r["pct_of_ceiling"]) == pytest.approx(100 * float(r["limit_ms"]) / ms, rel=2e-3, abs=0.1)
        assert r["device"] and r["torch"] == torch.__version__ and r["unlearnx"] and r["date"]
        if r["provider"] == "eager":
            assert r["x_vs_eager"] == "1.000"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cuda_without_a_gpu_is_a_clear_error(family, capsys):
    mod = importlib.import_module(FAMILIES[family])
    assert mod.main(["--device", "cuda", "--quick"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_bad_device_and_reps_are_errors(capsys):
    from unlearnx.bench import ssd

    assert ssd.main(["--device", "tpu", "--quick"]) == 2
    assert ssd.main(["--reps", "0", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "--device 'tpu'" in err and "--reps must be >= 1" in err


def test_rows_append_under_one_header_and_other_columns_are_refused(tmp_path, capsys):
    from unlearnx.bench import ssd

    path = tmp_path / "ops.csv"
    row = {"kernel": "k", "provider": "p", "ms_p50": "1.0"}
    harness.append_op_rows(path, [row])
    harness.append_op_rows(path, [dict(row, provider="q")])
    assert [r["provider"] for r in _rows(path)] == ["p", "q"]
    out = tmp_path / "old.csv"
    out.write_text("kernel,provider,mode\nx,y,z\n")
    assert ssd.main(["--quick", "--no-compile", "--reps", "1", "--csv", str(out)]) == 2
    assert "other columns" in capsys.readouterr().err
    assert out.read_text() == "kernel,provider,mode\nx,y,z\n"


def test_quick_runs_write_no_csv_by_default(tmp_path, monkeypatch):
    from unlearnx.bench import ssd

    monkeypatch.setattr(harness, "_checkout_results_dir", lambda: tmp_path)
    assert ssd.main(["--quick", "--no-compile", "--reps", "1"]) == 0
    assert not list(tmp_path.iterdir())


def test_backend_context_restores_the_environment(monkeypatch):
    monkeypatch.delenv("UNLEARNX_BACKEND", raising=False)
    import os

    with harness.backend("reference"):
        assert os.environ["UNLEARNX_BACKEND"] == "reference"
    assert "UNLEARNX_BACKEND" not in os.environ
    monkeypatch.setenv("UNLEARNX_BACKEND", "native")
    with harness.backend(None):
        assert os.environ["UNLEARNX_BACKEND"] == "native"
    with harness.backend("reference"):
        pass
    assert os.environ["UNLEARNX_BACKEND"] == "native"


@pytest.mark.slow
def test_compile_baseline_column(tmp_path):
    """torch.compile of the plain composition becomes the torch_compile row and every row's compile_ms."""
    import argparse

    args = argparse.Namespace(device="cpu", quick=True, no_compile=False, reps=1, csv=str(tmp_path / "c.csv"),
                              no_save=False)
    ctx = harness.Context.from_args("unit", args)
    x = torch.randn(1 << 16)

    def plain(t):
        return (t * 2 + 1).relu()

    ctx.run_case("affine_relu", "64K", "float32", [harness.Provider("unlearnx", lambda: torch.relu(x * 2 + 1))],
                 eager=lambda: plain(x), compose=plain, compose_args=(x,), bytes_moved=8 * x.numel())
    ctx.finish()
    rows = _rows(tmp_path / "c.csv")
    assert [r["provider"] for r in rows] == ["eager", "torch_compile", "unlearnx"]
    comp = rows[1]
    assert "compile" in comp["note"] and all(r["compile_ms"] == comp["ms_p50"] for r in rows)
    assert float(rows[2]["x_vs_compile"]) == pytest.approx(float(comp["ms_p50"]) / float(rows[2]["ms_p50"]), rel=2e-3)


def test_a_failing_provider_is_reported_and_the_family_goes_on(tmp_path, capsys):
    import argparse

    args = argparse.Namespace(device="cpu", quick=True, no_compile=True, reps=1, csv=str(tmp_path / "f.csv"),
                              no_save=False)
    ctx = harness.Context.from_args("unit", args)
    x = torch.randn(1024)

    def broken():
        raise NotImplementedError("Could not run 'unlearnx::op' with arguments from the 'CUDA' backend")

    ctx.run_case("op", "1K", "float32", [harness.Provider("unlearnx", broken)], eager=lambda: x * 2,
                 bytes_moved=8 * x.numel())
    ctx.finish()
    assert ctx.failures and "NotImplementedError" in ctx.failures[0]
    assert [r["provider"] for r in _rows(tmp_path / "f.csv")] == ["eager"]
    assert "FAILED op 1K unlearnx" in capsys.readouterr().err
