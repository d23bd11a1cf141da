"""SIGKILL a real `delete` (a subprocess) at named points, then check recovery: the request is
applied exactly once, the served state was old-or-new (never a mix), the result is bit-identical
to an uninterrupted run, and the audit passes."""
import shutil
import signal

import pytest

from unlearnx.exact import ExactStore, LedgerError, audit_directory
from unlearnx.exact.io import CRASH_ENV, CRASH_POINTS, sha256_file

SWAPPED = {"after_manifest_swap", "after_ledger_commit"}  # the new manifest is already served


def _uninterrupted(directory, tmp_path, ids):
    control = shutil.copytree(directory, tmp_path / "control")
    store = ExactStore.open(control)
    store.delete(ids, requester="crash-test")
    out = store.served()[1], store.ledger.requests()[-1].effect
    store.close()
    return out


def _check_recovered(directory, ids, control_sha, control_effect):
    store = ExactStore.open(directory)  # recovery runs here
    reqs = store.ledger.requests()
    assert [(r.state, r.ids) for r in reqs] == [("applied", tuple(sorted(ids)))]
    assert reqs[0].effect == control_effect
    assert store.served()[1] == control_sha  # same checkpoints, same data files, same hashes
    assert store.ledger.latest_manifest()[1] == control_sha
    report = audit_directory(directory)
    assert report.ok, report.format()
    # The client never got an answer: its retry is recognised and answered, nothing applied twice.
    assert store.request_deletion(ids, requester="crash-test") == (reqs[0].id, True)
    assert store.served()[1] == control_sha and len(store.ledger.requests()) == 1
    with pytest.raises(LedgerError, match="already requested"):  # someone else asking again is refused
        store.delete(ids, requester="another-client")
    assert store.recover() == []
    store.close()


def _kill_delete(run_cli, directory, ids, point):
    proc = run_cli("delete", directory, "--ids", ",".join(map(str, ids)), "--requester", "crash-test",
                   env_extra={CRASH_ENV: point})
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


@pytest.mark.parametrize("point", [
    "after_request_recorded", "after_checkpoint_write", "after_manifest_swap",
    pytest.param("after_data_write", marks=pytest.mark.slow),
    pytest.param("before_manifest_swap", marks=pytest.mark.slow),
    pytest.param("after_ledger_commit", marks=pytest.mark.slow),
])
def test_sisa_delete_killed_recovers_exactly_once(sisa_dir, tmp_path, point, run_cli):
    assert point in CRASH_POINTS
    ids = ExactStore.open(sisa_dir).served()[0]["shards"][1]["slices"][1][:2]
    control_sha, control_effect = _uninterrupted(sisa_dir, tmp_path, ids)
    old_sha = sha256_file(sisa_dir / "served.json")
    _kill_delete(run_cli, sisa_dir, ids, point)
    # Either the old or the new manifest is served at the moment of the crash, never a mix.
    assert sha256_file(sisa_dir / "served.json") == (control_sha if point in SWAPPED else old_sha)
    if point != "after_ledger_commit":
        assert not audit_directory(sisa_dir).ok  # the audit notices the interrupted request
    _check_recovered(sisa_dir, ids, control_sha, control_effect)


def test_crash_during_recovery_too(sisa_dir, tmp_path, run_cli):
    ids = ExactStore.open(sisa_dir).served()[0]["shards"][0]["slices"][0][:1]
    control_sha, control_effect = _uninterrupted(sisa_dir, tmp_path, ids)
    _kill_delete(run_cli, sisa_dir, ids, "after_checkpoint_write")
    proc = run_cli("status", sisa_dir, env_extra={CRASH_ENV: "before_manifest_swap"})  # recovery is killed
    assert proc.returncode == -signal.SIGKILL
    _check_recovered(sisa_dir, ids, control_sha, control_effect)


@pytest.mark.parametrize("point", ["after_data_write", pytest.param("after_manifest_swap", marks=pytest.mark.slow)])
def test_s3t_delete_killed_recovers_exactly_once(s3t_dir, tmp_path, point, run_cli):
    ids = ExactStore.open(s3t_dir).served()[0]["shards"][2]["slices"][0][:2]
    control_sha, control_effect = _uninterrupted(s3t_dir, tmp_path, ids)
    _kill_delete(run_cli, s3t_dir, ids, point)
    _check_recovered(s3t_dir, ids, control_sha, control_effect)
