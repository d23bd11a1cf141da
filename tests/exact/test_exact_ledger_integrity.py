"""The ledger protects its own rows (hash chains + ids == deleted_ids), deletions are idempotent
for retries, old ledgers are upgraded, and corrupt files are named, never a traceback (issue 25)."""
import json
import sqlite3

import pytest

from unlearnx.exact import ExactStore, Ledger, LedgerError, audit_directory
from unlearnx.exact.cli import main
from unlearnx.exact.ledger import LedgerCorrupt


def _two_requests(directory):
    store = ExactStore.open(directory)
    sl = store.served()[0]["shards"]
    a = [sl[0]["slices"][0][0], sl[0]["slices"][1][0]]
    b = [sl[1]["slices"][2][0]]
    store.delete(a, requester="ticket-1")
    store.delete(b, requester="ticket-2", request_key="k-2")
    store.close()
    assert audit_directory(directory).ok
    return a, b


def _sql(directory, *statements):
    conn = sqlite3.connect(directory / "ledger.sqlite")
    for st in statements:
        conn.execute(st)
    conn.commit()
    conn.close()


def _audit_errors(directory):
    report = audit_directory(directory)
    assert not report.ok
    return "\n".join(report.errors)


@pytest.mark.parametrize("column, value", [
    ("ids", "'[1]'"), ("requester", "'someone-else'"), ("received_at", "'2020-01-01T00:00:00.000000Z'"),
    ("request_key", "'forged'"), ("effect", "'{\"shards\":[]}'"), ("applied_at", "'2020-01-01'"),
    ("manifest_version", "1"),
])
def test_tampered_request_row_fails_audit_naming_it(sisa_dir, column, value):
    _two_requests(sisa_dir)
    _sql(sisa_dir, f"UPDATE requests SET {column}={value} WHERE id=1")
    errors = _audit_errors(sisa_dir)
    assert "request 1:" in errors and "request 2" not in errors


def test_removed_or_reordered_rows_break_the_chain(sisa_dir):
    _two_requests(sisa_dir)
    # Rewrite request 1's hash as if its row were re-inserted: request 2's link breaks.
    _sql(sisa_dir, "UPDATE requests SET row_hash='00' WHERE id=1")
    assert "request 2: its previous-row hash does not match" in _audit_errors(sisa_dir)


def test_requests_ids_must_equal_deleted_ids(sisa_dir):
    a, _ = _two_requests(sisa_dir)
    _sql(sisa_dir, f"DELETE FROM deleted_ids WHERE id={a[0]}")
    assert "request 1: its ids differ from the deleted_ids table (1 missing there" in _audit_errors(sisa_dir)


def test_tampered_manifest_row_fails_audit(sisa_dir):
    _two_requests(sisa_dir)
    _sql(sisa_dir, "UPDATE manifests SET created_at='2000-01-01' WHERE version=1")
    assert "manifest version 1: row hash mismatch" in _audit_errors(sisa_dir)


def test_tampered_old_served_files_fail_audit(sisa_dir):
    _two_requests(sisa_dir)  # versions 0 (untrained), 1 (trained), 2 and 3 (the deletions)
    _sql(sisa_dir, "UPDATE served_files SET sha256='0' WHERE version=1 AND rowid=(SELECT MIN(rowid) FROM served_files WHERE version=1)")
    assert "manifest version 1: row hash mismatch" in _audit_errors(sisa_dir)


def test_retries_are_idempotent(sisa_dir):
    store = ExactStore.open(sisa_dir)
    sl = store.served()[0]["shards"]
    ids = [sl[2]["slices"][0][0], sl[2]["slices"][0][1]]
    rid, retry = store.request_deletion(ids, requester="ticket-9")
    assert not retry
    version = store.served()[0]["version"]
    # Same requester, same ids (any order): the recorded request, nothing applied again.
    assert store.request_deletion(ids[::-1], requester="ticket-9") == (rid, True)
    assert store.served()[0]["version"] == version and len(store.ledger.requests()) == 1
    # Another requester asking for the same ids is a duplicate, not a retry.
    with pytest.raises(LedgerError, match="duplicate deletion"):
        store.delete(ids, requester="ticket-10")
    # With a request key: the key identifies the request; reusing it for something else is refused.
    other = [sl[2]["slices"][1][0]]
    rid2, retry = store.request_deletion(other, requester="svc", request_key="abc-1")
    assert not retry and store.request_deletion(other, requester="svc", request_key="abc-1") == (rid2, True)
    with pytest.raises(LedgerError, match="request key 'abc-1' was already used by request"):
        store.delete([sl[2]["slices"][1][1]], requester="svc", request_key="abc-1")
    with pytest.raises(LedgerError, match="duplicate deletion"):  # a new key for already deleted ids
        store.delete(other, requester="svc", request_key="abc-2")
    assert len(store.ledger.requests()) == 2
    store.close()
    assert audit_directory(sisa_dir).ok


def test_cli_retry_exits_zero_with_recorded_outcome(sisa_dir, capsys):
    ids = ExactStore.open(sisa_dir).served()[0]["shards"][0]["slices"][2][:2]
    argv = ["delete", str(sisa_dir), "--ids", ",".join(map(str, ids)), "--requester", "t-1", "--request-key", "r-77"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert first.pop("retry") is False and again.pop("retry") is True
    assert again == first and first["state"] == "applied" and first["request_key"] == "r-77"
    assert main(["delete", str(sisa_dir), "--ids", str(ids[0]), "--requester", "t-1", "--request-key", "r-77"]) == 2
    assert "--request-key: request key 'r-77' was already used" in capsys.readouterr().err
    assert main(["delete", str(sisa_dir), "--ids", str(ids[0]), "--requester", "t-2"]) == 2
    assert "--ids: duplicate deletion" in capsys.readouterr().err


def _downgrade_to_schema_1(directory):
    _sql(directory, "DROP INDEX requests_by_key", "DROP INDEX requests_by_requester",
         *[f"ALTER TABLE requests DROP COLUMN {c}" for c in ("request_key", "prev_hash", "row_hash", "applied_hash")],
         *[f"ALTER TABLE manifests DROP COLUMN {c}" for c in ("prev_hash", "row_hash")],
         "DROP TABLE ledger_meta", "PRAGMA user_version=0")


def test_schema_1_ledger_is_reported_then_upgraded(sisa_dir, capsys):
    _two_requests(sisa_dir)
    _downgrade_to_schema_1(sisa_dir)
    before = (sisa_dir / "ledger.sqlite").read_bytes()
    assert "schema version 1 (no hash chain" in _audit_errors(sisa_dir)
    assert (sisa_dir / "ledger.sqlite").read_bytes() == before  # the audit never writes
    assert main(["status", str(sisa_dir)]) == 0  # a writer upgrades it
    report = audit_directory(sisa_dir)
    assert report.ok, report.format()
    assert any("upgraded from schema 1" in w and "first 2 request(s)" in w for w in report.warnings)
    led = Ledger(sisa_dir / "ledger.sqlite")
    assert led.pragma("user_version") == 2 and led.verify() == []
    led.close()
    _sql(sisa_dir, "UPDATE requests SET requester='x' WHERE id=2")  # and from now on rows are protected
    assert "request 2: row hash mismatch" in _audit_errors(sisa_dir)


@pytest.mark.parametrize("damage", ["garbage", "page"])
def test_corrupt_ledger_is_named(sisa_dir, capsys, damage):
    _two_requests(sisa_dir)
    path = sisa_dir / "ledger.sqlite"
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data = bytearray(b"this is not a database" * 100)
    else:  # a flipped region inside the first table page: SQLite's own check notices
        for k in range(100, 4096, 7):
            data[k] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerCorrupt, match="ledger.sqlite"):
        Ledger(path)
    errors = _audit_errors(sisa_dir)
    assert "ledger.sqlite" in errors and "Traceback" not in errors
    for cmd in ("status", "audit"):
        capsys.readouterr()
        assert main([cmd, str(sisa_dir)]) in (1, 2)
        out = capsys.readouterr()
        assert "ledger.sqlite" in out.err + out.out


@pytest.mark.parametrize("offset", [0, 1, 40, -2])
def test_flipped_byte_in_served_json_is_named(sisa_dir, capsys, offset):
    path = sisa_dir / "served.json"
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    assert "served.json" in _audit_errors(sisa_dir)
    assert main(["audit", str(sisa_dir)]) == 1
    assert "served.json" in capsys.readouterr().out
    assert main(["status", str(sisa_dir)]) == 2
    assert "served.json" in capsys.readouterr().err


def test_corrupt_config_json_is_named(sisa_dir, capsys):
    (sisa_dir / "config.json").write_bytes(b'{"format": "unlearnx.exact.config/1", "method": ')
    assert "config.json" in _audit_errors(sisa_dir)
    assert main(["status", str(sisa_dir)]) == 2
    assert "config.json" in capsys.readouterr().err
    (sisa_dir / "config.json").write_text('{"format": "unlearnx.exact.config/1"}')
    assert main(["status", str(sisa_dir)]) == 2
    assert "config.json: unexpected content" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["shard-data", "checkpoint", "s3t-backbone"])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped"])
def test_corrupt_served_file_fails_audit_naming_it(sisa_dir, s3t_dir, which, damage):
    directory = s3t_dir if which == "s3t-backbone" else sisa_dir
    store = ExactStore.open(directory)
    manifest = store.served()[0]
    store.close()
    entry = {"shard-data": lambda: manifest["shards"][0]["data"],
             "checkpoint": lambda: manifest["shards"][0]["checkpoints"][0],
             "s3t-backbone": lambda: manifest["backbone"]}[which]()
    path = directory / entry["path"]
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data = bytearray(b"\xff" * 64)
    elif damage == "truncated":
        data = data[:20]
    else:
        data[9] ^= 0x40  # inside the zip local header / the safetensors JSON header
    path.write_bytes(bytes(data))
    errors = _audit_errors(directory)  # a report, never an exception
    assert entry["path"] in errors


def test_missing_ledger_is_refused_not_recreated(sisa_dir, capsys):
    _two_requests(sisa_dir)
    (sisa_dir / "ledger.sqlite").unlink()
    assert main(["status", str(sisa_dir)]) == 2
    assert "ledger.sqlite is missing" in capsys.readouterr().err
    assert not (sisa_dir / "ledger.sqlite").exists()
    assert "missing ledger.sqlite" in _audit_errors(sisa_dir)
