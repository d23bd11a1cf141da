import json
import shutil

from unlearnx.exact import ExactStore, audit_directory
from unlearnx.exact.cli import main
from unlearnx.exact.io import atomic_write_json


def _delete_one(directory, shard=1, slice_=2):
    store = ExactStore.open(directory)
    old = store.served()[0]
    ids = old["shards"][shard]["slices"][slice_][:1]
    store.delete(ids, requester="t")
    return store, old, ids


def test_audit_passes_after_deletions(sisa_dir, capsys):
    _delete_one(sisa_dir)
    report = audit_directory(sisa_dir)
    assert report.ok and report.checked["deleted ids"] == 1 and report.checked["checkpoints/adapters"] == 9
    assert main(["audit", str(sisa_dir)]) == 0
    assert "PASS" in capsys.readouterr().out


def test_audit_fails_on_modified_checkpoint(sisa_dir, capsys):
    store, _, _ = _delete_one(sisa_dir)
    path = sisa_dir / store.served()[0]["shards"][0]["checkpoints"][1]["path"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    report = audit_directory(sisa_dir)
    assert not report.ok and any(path.name in e and "sha256" in e for e in report.errors)
    assert main(["audit", str(sisa_dir)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_audit_proves_deleted_ids_absent_from_training_manifests(sisa_template, tmp_path):
    work = shutil.copytree(sisa_template, tmp_path / "w")
    store = ExactStore.open(work)
    manifest, _ = store.served()
    stale = manifest["shards"][1]["checkpoints"][2]
    stale_bytes = (work / stale["path"]).read_bytes()
    ids = manifest["shards"][1]["slices"][2][:1]
    store.delete(ids, requester="t")
    assert not (work / stale["path"]).exists()  # garbage-collected after the swap
    # Roll shard 1 back to the pre-deletion checkpoint and make manifest and ledger hashes agree.
    (work / stale["path"]).write_bytes(stale_bytes)
    new, _ = store.served()
    new["shards"][1]["checkpoints"][2] = stale
    sha = atomic_write_json(work / "served.json", new)
    conn = store.ledger.conn
    conn.execute("UPDATE manifests SET sha256=? WHERE version=?", (sha, new["version"]))
    conn.execute("UPDATE served_files SET path=?, sha256=? WHERE version=? AND role='sisa-slice' AND path LIKE ?",
                 (stale["path"], stale["sha256"], new["version"], "%sisa-s1-r2-%"))
    report = audit_directory(work)
    assert not report.ok
    assert any("trained on deleted ids" in e and str(ids[0]) in e for e in report.errors), report.format()


def test_audit_flags_unreferenced_file_with_deleted_ids_until_recovery(sisa_template, tmp_path):
    work = shutil.copytree(sisa_template, tmp_path / "w")
    store = ExactStore.open(work)
    manifest, _ = store.served()
    stale = manifest["shards"][0]["checkpoints"][2]
    stale_bytes = (work / stale["path"]).read_bytes()
    store.delete(manifest["shards"][0]["slices"][2][:1], requester="t")
    (work / stale["path"]).write_bytes(stale_bytes)  # a left-over copy of an erased checkpoint
    report = audit_directory(work)
    assert any("unreferenced file" in e and "deleted ids" in e for e in report.errors)
    store.close()
    ExactStore.open(work).close()  # recovery collects it
    assert audit_directory(work).ok


def test_audit_fails_on_manifest_listing_deleted_id_and_on_missing_dir(sisa_dir, tmp_path, capsys):
    store, _, ids = _delete_one(sisa_dir)
    manifest, _ = store.served()
    manifest["shards"][1]["slices"][2].append(ids[0])
    (sisa_dir / "served.json").write_text(json.dumps(manifest))
    report = audit_directory(sisa_dir)
    assert any("still list deleted ids" in e for e in report.errors)
    assert any("not the last manifest recorded" in e for e in report.errors)
    assert not audit_directory(tmp_path / "none").ok
    capsys.readouterr()
    assert main(["audit", str(tmp_path / "none")]) == 2  # no such directory: a usage error
    assert f"{tmp_path / 'none'} is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["audit", str(tmp_path / "empty")]) == 1  # a directory that fails the audit
    assert "missing config.json" in capsys.readouterr().out
