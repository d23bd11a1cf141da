"""`unlearnx bench` runs the packaged op benchmarks where no checkout is around."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import unlearnx


def _installed_copy(tmp_path: Path) -> tuple[Path, dict]:
    """unlearnx copied alone into a site folder (as a wheel installs it) and an env that imports it."""
    site = tmp_path / "site"
    shutil.copytree(Path(unlearnx.__file__).resolve().parent, site / "unlearnx",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    return site, env


def _cli(args, env, cwd, timeout=240):
    return subprocess.run([sys.executable, "-m", "unlearnx.cli", "bench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # ~10 s of CPU, three interpreters; a minute of wall time on a loaded 2-core machine
def test_bench_family_quick_on_an_installed_package(tmp_path):
    site, env = _installed_copy(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = _cli(["--family", "ssd", "--quick", "--no-compile", "--reps", "1", "--out", "tables.md"], env, work)
    assert proc.returncode == 0, proc.stderr
    assert "-m unlearnx.bench.ssd --quick --no-compile --reps 1" in proc.stdout
    assert "| ssd_dampen_ " in proc.stdout and "unlearnx" in proc.stdout
    assert "## ssd" in (work / "tables.md").read_text()
    # the end-to-end scripts live in the repository only: a clear error names what is available
    proc = _cli(["--family", "corrective"], env, work)
    assert proc.returncode == 2 and "need a checkout" in proc.stderr and "ssd" in proc.stderr
    assert not (work / "benchmarks").exists()
    # without --quick and --csv the rows would go nowhere: no checkout's results folder is found
    proc = subprocess.run([sys.executable, "-c", "from unlearnx.bench import harness; "
                           "print(harness._checkout_results_dir())"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "None", proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_bench_device_cuda_without_a_gpu_exits_2(capsys):
    from unlearnx import cli

    assert cli.main(["bench", "--device", "cuda", "--quick"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
