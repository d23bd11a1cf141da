"""Fixtures for the exact-unlearning tests: small trained SISA and S3T directories (trained once
per session, copied per test) and a helper to run the CLI in a subprocess."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import unlearnx
from unlearnx.exact import ExactStore, builtin_digits

# Tiny recipe: the tests check exactness and bookkeeping, not accuracy.
SMALL = {"recipe": {"epochs": 10.0, "pretrain_epochs": 10.0}, "hidden": 32}


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # Tiny models: one thread is faster and avoids OpenMP spin contention on a shared 2-core box.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def digits():
    return builtin_digits(seed=0)


def _template(tmp_path_factory, digits, method: str) -> Path:
    root = tmp_path_factory.mktemp(f"template-{method}") / "m"
    torch.set_num_threads(1)
    store = ExactStore.create(root, train=digits["train"], test=digits["test"], public=digits["public"],
                              method=method, shards=3, slices=3, seed=0, **SMALL)
    store.train()
    store.close()
    return root


@pytest.fixture(scope="session")
def sisa_template(tmp_path_factory, digits):
    return _template(tmp_path_factory, digits, "sisa")


@pytest.fixture(scope="session")
def s3t_template(tmp_path_factory, digits):
    return _template(tmp_path_factory, digits, "s3t")


@pytest.fixture
def sisa_dir(sisa_template, tmp_path):
    return Path(shutil.copytree(sisa_template, tmp_path / "sisa"))


@pytest.fixture
def s3t_dir(s3t_template, tmp_path):
    return Path(shutil.copytree(s3t_template, tmp_path / "s3t"))


def _subprocess_env(**extra) -> dict:
    """Environment for a child Python that imports this checkout's unlearnx, single-threaded."""
    env = dict(os.environ)
    pkg_parent = str(Path(unlearnx.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _run_cli(*args, env_extra: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unlearnx.exact.cli", *map(str, args)],
                          env=_subprocess_env(**(env_extra or {})), capture_output=True, text=True, timeout=timeout)


# The helpers reach the tests as fixtures: `from conftest import ...` resolves to whichever
# folder's conftest was imported first when several test folders are collected together.
@pytest.fixture(scope="session")
def subprocess_env():
    """_subprocess_env(**extra) -> the environment of a child Python that imports this checkout."""
    return _subprocess_env


@pytest.fixture(scope="session")
def run_cli():
    """_run_cli(*args, env_extra=None, timeout=120): `python -m unlearnx.exact.cli ARGS` in a child."""
    return _run_cli
