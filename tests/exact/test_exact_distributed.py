"""Shard training under torchrun (gloo, 2 processes) gives the same checkpoints as 1 process."""
import shutil
import subprocess
import sys

import pytest

from unlearnx.exact import ExactStore, audit_directory
from unlearnx.exact.cli import main


@pytest.mark.slow  # ~25 s each on the shared 2-core machine (torchrun start-up, 3 interpreters)
@pytest.mark.parametrize("method", ["sisa", "s3t"])
def test_torchrun_two_processes_matches_one(tmp_path, method, run_cli, subprocess_env):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["init", str(one), "--method", method, "-S", "3", "-R", "2", "--epochs", "3", "--hidden", "16"]) == 0
    shutil.copytree(one, two)
    proc = run_cli("train", one)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
         "-m", "unlearnx.exact.cli", "train", str(two)],
        env=subprocess_env(), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "over 2 process(es)" in proc.stdout
    a, b = ExactStore.open(one), ExactStore.open(two)
    (ma, sha_a), (mb, sha_b) = a.served(), b.served()
    assert ma["trained"] and sha_a == sha_b  # the manifest lists every checkpoint's sha256
    assert a.ledger.served_files(ma["version"]) == b.ledger.served_files(mb["version"])
    assert audit_directory(two).ok
