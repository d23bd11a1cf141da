"""The deletion ledger: a SQLite record of every deletion request and of what was served after it.

Tables (schema version 1):
  requests(id, ids, requester, received_at, state, applied_at, effect, manifest_version)
      one row per request; state goes 'received' -> 'applied' exactly once; `effect` is JSON
      naming the shards, slices and adapters the request affected.
  deleted_ids(id, request_id)   every id ever requested for deletion (primary key: no id twice)
  manifests(version, sha256, request_id, created_at)   every manifest served, with its hash
  served_files(version, path, sha256, role)           every checkpoint/data file it served

The database runs in WAL mode with synchronous=FULL: a committed transaction survives a crash or
power loss. Python's stdlib `sqlite3` only.
"""
from __future__ import annotations

import json
import operator
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ids TEXT NOT NULL,
  requester TEXT NOT NULL,
  received_at TEXT NOT NULL,
  state TEXT NOT NULL CHECK(state IN ('received', 'applied')),
  applied_at TEXT,
  effect TEXT,
  manifest_version INTEGER
);
CREATE TABLE IF NOT EXISTS deleted_ids(
  id INTEGER PRIMARY KEY,
  request_id INTEGER NOT NULL REFERENCES requests(id)
);
CREATE TABLE IF NOT EXISTS manifests(
  version INTEGER PRIMARY KEY,
  sha256 TEXT NOT NULL,
  request_id INTEGER REFERENCES requests(id),
  created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS served_files(
  version INTEGER NOT NULL REFERENCES manifests(version),
  path TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  role TEXT NOT NULL,
  PRIMARY KEY(version, path)
);
"""

MAX_REQUESTER_LEN = 200


class LedgerError(ValueError):
    """A deletion request the ledger refuses (malformed, unknown or duplicate ids)."""


@dataclass(frozen=True)
class Request:
    id: int
    ids: tuple[int, ...]
    requester: str
    received_at: str
    state: str
    applied_at: str | None
    effect: dict | None
    manifest_version: int | None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1e6) % 1000000:06d}Z"


def validate_ids(ids) -> tuple[int, ...]:
    """Check a request's ids: a non-empty sequence of distinct integers (returned sorted)."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise LedgerError(f"ids must be a sequence of integers, got {type(ids).__name__}")
    out = []
    for v in ids:
        try:
            if isinstance(v, bool):
                raise TypeError
            out.append(operator.index(v))  # int and numpy integers; floats and strings refused
        except TypeError:
            raise LedgerError(f"ids must be integers, got {v!r} ({type(v).__name__})") from None
    if not out:
        raise LedgerError("ids is empty: a deletion request must name at least one id")
    seen, dups = set(), set()
    for v in out:
        (dups if v in seen else seen).add(v)
    if dups:
        raise LedgerError(f"ids contains duplicates: {sorted(dups)[:20]}")
    return tuple(sorted(out))


class Ledger:
    """SQLite deletion ledger at `path` (created if missing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=60)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def pragma(self, name: str):
        return self.conn.execute(f"PRAGMA {name}").fetchone()[0]

    # -- requests -------------------------------------------------------------------------------
    def record_request(self, ids, requester: str, *, known_ids: set[int]) -> int:
        """Durably record a request in state 'received'; returns its id.

        Refuses (LedgerError) empty or non-integer ids, ids repeated in the request, ids that are
        not training ids (`known_ids`), and ids already requested by an earlier request.
        """
        ids = validate_ids(ids)
        if not isinstance(requester, str) or not requester.strip() or len(requester) > MAX_REQUESTER_LEN:
            raise LedgerError(
                f"requester must be a non-empty tag of at most {MAX_REQUESTER_LEN} characters, got {requester!r}"
            )
        unknown = [i for i in ids if i not in known_ids]
        if unknown:
            raise LedgerError(f"unknown ids (not in the training data): {unknown[:20]}"
                              + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""))
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            already = []
            for chunk in range(0, len(ids), 500):
                part = ids[chunk : chunk + 500]
                q = f"SELECT id, request_id FROM deleted_ids WHERE id IN ({','.join('?' * len(part))})"
                already += cur.execute(q, part).fetchall()
            if already:
                desc = ", ".join(f"{i} (request {r})" for i, r in sorted(already)[:20])
                raise LedgerError(f"duplicate deletion: ids already requested: {desc}")
            cur.execute(
                "INSERT INTO requests(ids, requester, received_at, state) VALUES (?, ?, ?, 'received')",
                (json.dumps(list(ids)), requester.strip(), _now()),
            )
            rid = cur.lastrowid
            cur.executemany("INSERT INTO deleted_ids(id, request_id) VALUES (?, ?)", [(i, rid) for i in ids])
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return int(rid)

    def _row(self, r) -> Request:
        return Request(
            id=r[0], ids=tuple(json.loads(r[1])), requester=r[2], received_at=r[3], state=r[4],
            applied_at=r[5], effect=json.loads(r[6]) if r[6] else None, manifest_version=r[7],
        )

    def requests(self, state: str | None = None) -> list[Request]:
        q = "SELECT id, ids, requester, received_at, state, applied_at, effect, manifest_version FROM requests"
        args: tuple = ()
        if state is not None:
            q += " WHERE state = ?"
            args = (state,)
        return [self._row(r) for r in self.conn.execute(q + " ORDER BY id", args)]

    def pending(self) -> list[Request]:
        """Requests received but not yet applied, in the order they must be applied."""
        return self.requests("received")

    def deleted_ids(self, *, applied_only: bool = False) -> set[int]:
        q = "SELECT d.id FROM deleted_ids d"
        if applied_only:
            q += " JOIN requests r ON r.id = d.request_id WHERE r.state = 'applied'"
        return {r[0] for r in self.conn.execute(q)}

    # -- manifests ------------------------------------------------------------------------------
    def record_manifest(self, version: int, sha256: str, files: list[dict], *,
                        request_id: int | None = None, effect: dict | None = None) -> None:
        """In one transaction: record a served manifest and its files, and (for a deletion) mark
        the request applied. Idempotent: recording the same version again is a no-op."""
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            row = cur.execute("SELECT sha256 FROM manifests WHERE version = ?", (version,)).fetchone()
            if row is not None:
                if row[0] != sha256:
                    raise RuntimeError(
                        f"manifest version {version} already recorded with sha256 {row[0]}, not {sha256}"
                    )
                cur.execute("ROLLBACK")
                return
            cur.execute(
                "INSERT INTO manifests(version, sha256, request_id, created_at) VALUES (?, ?, ?, ?)",
                (version, sha256, request_id, _now()),
            )
            cur.executemany(
                "INSERT INTO served_files(version, path, sha256, role) VALUES (?, ?, ?, ?)",
                [(version, f["path"], f["sha256"], f["role"]) for f in files],
            )
            if request_id is not None:
                n = cur.execute(
                    "UPDATE requests SET state='applied', applied_at=?, effect=?, manifest_version=? "
                    "WHERE id=? AND state='received'",
                    (_now(), json.dumps(effect, sort_keys=True), version, request_id),
                ).rowcount
                if n != 1:
                    raise RuntimeError(f"request {request_id} is not in state 'received'")
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def latest_manifest(self) -> tuple[int, str] | None:
        r = self.conn.execute("SELECT version, sha256 FROM manifests ORDER BY version DESC LIMIT 1").fetchone()
        return None if r is None else (int(r[0]), r[1])

    def served_files(self, version: int) -> dict[str, dict]:
        return {
            p: {"sha256": h, "role": role}
            for p, h, role in self.conn.execute(
                "SELECT path, sha256, role FROM served_files WHERE version = ?", (version,)
            )
        }

    def summary(self) -> dict:
        counts = dict(self.conn.execute("SELECT state, COUNT(*) FROM requests GROUP BY state").fetchall())
        latest = self.latest_manifest()
        return {
            "requests_received": int(sum(counts.values())),
            "requests_applied": int(counts.get("applied", 0)),
            "requests_pending": int(counts.get("received", 0)),
            "ids_deleted": int(self.conn.execute("SELECT COUNT(*) FROM deleted_ids").fetchone()[0]),
            "manifest_version": None if latest is None else latest[0],
            "manifest_sha256": None if latest is None else latest[1],
        }
