import pytest
import numpy as np

from unlearnx.exact import ExactStore, Ledger, LedgerError, audit_directory


def test_ledger_is_wal_and_synchronous_full(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    assert led.pragma("journal_mode") == "wal"
    assert led.pragma("synchronous") == 2  # FULL


@pytest.mark.parametrize("ids, message", [
    ([], "empty"),
    ([1, 2, 2], "duplicates"),
    ([1.5], "integers"),
    (["7"], "integers"),
    ([True], "integers"),
    ("1,2", "sequence of integers"),
    ([10**9], "unknown ids"),
])
def test_ledger_rejects_malformed_requests(tmp_path, ids, message):
    led = Ledger(tmp_path / "l.sqlite")
    with pytest.raises(LedgerError, match=message):
        led.record_request(ids, "tag", known_ids={1, 2, 3})
    assert led.requests() == []


def test_ledger_rejects_repeated_ids_and_bad_requester(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    rid = led.record_request([np.int64(1), 2], "a", known_ids={1, 2, 3})
    with pytest.raises(LedgerError, match=r"already requested: 2 \(request 1\)"):
        led.record_request([3, 2], "b", known_ids={1, 2, 3})
    with pytest.raises(LedgerError, match="requester"):
        led.record_request([3], "  ", known_ids={1, 2, 3})
    assert [r.id for r in led.requests()] == [rid]
    assert led.deleted_ids() == {1, 2}  # the refused request recorded nothing


def test_store_refuses_bad_requests_without_changing_state(sisa_dir):
    store = ExactStore.open(sisa_dir)
    _, sha = store.served()
    known = store.served()[0]["shards"][0]["slices"][0][0]
    for bad in ([known, known], [-5], [known, 10**7]):
        with pytest.raises(LedgerError):
            store.delete(bad, requester="t")
    assert store.served()[1] == sha and store.ledger.requests() == []
    store.delete([known], requester="t")
    with pytest.raises(LedgerError, match="already requested"):
        store.delete([known], requester="again")


def test_requests_applied_in_order_once_with_hashes(sisa_dir):
    store = ExactStore.open(sisa_dir)
    slices = store.served()[0]["shards"]
    r1 = store.delete([slices[0]["slices"][0][0]], requester="first")
    r2 = store.delete([slices[1]["slices"][2][0], slices[2]["slices"][1][0]], requester="second")
    reqs = store.ledger.requests()
    assert [(r.id, r.state, r.requester) for r in reqs] == [(r1, "applied", "first"), (r2, "applied", "second")]
    assert reqs[0].manifest_version < reqs[1].manifest_version
    assert sorted(e["shard"] for e in reqs[1].effect["shards"]) == [1, 2]
    manifest, sha = store.served()
    assert store.ledger.latest_manifest() == (manifest["version"], sha)
    files = store.ledger.served_files(manifest["version"])
    assert all(v["sha256"] for v in files.values()) and any(v["role"] == "sisa-slice" for v in files.values())
    # Reopening applies nothing twice.
    store.close()
    again = ExactStore.open(sisa_dir)
    assert again.served()[1] == sha and again.recover() == []
    assert audit_directory(sisa_dir).ok
