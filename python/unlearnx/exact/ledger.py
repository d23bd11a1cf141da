"""The deletion ledger: a SQLite record of every deletion request and of what was served after it.

Tables (schema version 2, `PRAGMA user_version`):
  requests(id, ids, requester, received_at, state, applied_at, effect, manifest_version,
           request_key, prev_hash, row_hash, applied_hash)
      one row per request; state goes 'received' -> 'applied' exactly once; `effect` is JSON
      naming the shards, slices and adapters the request affected; `request_key` is the optional
      client-chosen key that makes retries idempotent.
  deleted_ids(id, request_id)   every id ever requested for deletion (primary key: no id twice)
  manifests(version, sha256, request_id, created_at, prev_hash, row_hash)
                                every manifest served, with its hash
  served_files(version, path, sha256, role)           every checkpoint/data file it served
  ledger_meta(key, value)       e.g. when a schema-1 ledger was upgraded

Tamper evidence: every request row stores `row_hash` = sha256 of the canonical JSON of its
immutable content (id, ids, requester, received_at, request_key) and of `prev_hash`, the previous
request's row_hash (64 zeros for the first), so editing, deleting or reordering a row breaks the
chain from that row on; applying a request adds `applied_hash` = sha256 over the row_hash and the
applied fields (state, applied_at, effect, manifest_version). Manifest rows are chained the same
way, their content including the served files. `verify()` recomputes both chains and checks that
the union of the requests' ids is exactly the deleted_ids table. The chain is evidence against
edits with SQL or a hex editor, not a signature: someone who rewrites the whole chain consistently
is not detected by the ledger alone (the audit also compares it with served.json and the files).

The database runs in WAL mode with synchronous=FULL: a committed transaction survives a crash or
power loss. Python's stdlib `sqlite3` only.
"""
from __future__ import annotations

import hashlib
import json
import operator
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 2
GENESIS = "0" * 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ids TEXT NOT NULL,
  requester TEXT NOT NULL,
  received_at TEXT NOT NULL,
  state TEXT NOT NULL CHECK(state IN ('received', 'applied')),
  applied_at TEXT,
  effect TEXT,
  manifest_version INTEGER,
  request_key TEXT,
  prev_hash TEXT,
  row_hash TEXT,
  applied_hash TEXT
);
CREATE TABLE IF NOT EXISTS deleted_ids(
  id INTEGER PRIMARY KEY,
  request_id INTEGER NOT NULL REFERENCES requests(id)
);
CREATE TABLE IF NOT EXISTS manifests(
  version INTEGER PRIMARY KEY,
  sha256 TEXT NOT NULL,
  request_id INTEGER REFERENCES requests(id),
  created_at TEXT NOT NULL,
  prev_hash TEXT,
  row_hash TEXT
);
CREATE TABLE IF NOT EXISTS served_files(
  version INTEGER NOT NULL REFERENCES manifests(version),
  path TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  role TEXT NOT NULL,
  PRIMARY KEY(version, path)
);
CREATE TABLE IF NOT EXISTS ledger_meta(
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
""" + """
CREATE INDEX IF NOT EXISTS requests_by_requester ON requests(requester);
CREATE UNIQUE INDEX IF NOT EXISTS requests_by_key ON requests(request_key) WHERE request_key IS NOT NULL;
"""
# Columns schema 1 lacked (the upgrade adds them, then chains the existing rows).
_V2_COLUMNS = {"requests": ("request_key", "prev_hash", "row_hash", "applied_hash"), "manifests": ("prev_hash", "row_hash")}

MAX_REQUESTER_LEN = 200
MAX_REQUEST_KEY_LEN = 200


class LedgerError(ValueError):
    """A deletion request the ledger refuses (malformed, unknown or duplicate ids)."""


class LedgerCorrupt(ValueError):
    """The ledger file is not a readable SQLite deletion ledger."""


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
    request_key: str | None = None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1e6) % 1000000:06d}Z"


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def request_row_hash(rid: int, ids: list[int], requester: str, received_at: str, request_key: str | None,
                     prev_hash: str) -> str:
    """sha256 of a request row's immutable content chained to the previous row's hash."""
    return _digest({"kind": "request", "id": rid, "ids": list(ids), "requester": requester,
                    "received_at": received_at, "request_key": request_key, "prev_hash": prev_hash})


def request_applied_hash(row_hash: str, applied_at: str, effect: dict | None, manifest_version: int) -> str:
    """sha256 over a request's row_hash and the fields set when it was applied."""
    return _digest({"kind": "applied", "row_hash": row_hash, "state": "applied", "applied_at": applied_at,
                    "effect": effect, "manifest_version": manifest_version})


def manifest_row_hash(version: int, sha256: str, request_id: int | None, created_at: str, files: list,
                      prev_hash: str) -> str:
    """sha256 of a manifest row and its served files, chained to the previous manifest row."""
    return _digest({"kind": "manifest", "version": version, "sha256": sha256, "request_id": request_id,
                    "created_at": created_at, "files": sorted([list(f) for f in files]), "prev_hash": prev_hash})


def validate_request_key(key) -> str | None:
    """None, or a non-empty printable key of at most MAX_REQUEST_KEY_LEN characters (stripped)."""
    if key is None:
        return None
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_REQUEST_KEY_LEN or not key.isprintable():
        raise LedgerError(f"request key must be a non-empty printable string of at most {MAX_REQUEST_KEY_LEN} "
                          f"characters, got {key!r}")
    return key.strip()


def validate_requester(requester) -> str:
    if (not isinstance(requester, str) or not requester.strip() or len(requester) > MAX_REQUESTER_LEN
            or not requester.isprintable()):
        raise LedgerError(
            f"requester must be a non-empty printable tag of at most {MAX_REQUESTER_LEN} characters, got {requester!r}"
        )
    return requester.strip()


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
    """SQLite deletion ledger at `path` (created if missing).

    A schema-1 ledger (no hash chain) is upgraded on open: the columns are added and the existing
    rows chained; `ledger_meta['upgraded']` records when and how many rows, since edits made before
    the upgrade cannot be detected. With upgrade=False (the audit, which never writes) an old
    ledger is opened as is and `needs_upgrade` is True.
    Raises LedgerCorrupt naming the file when it is not a readable SQLite database.
    """

    def __init__(self, path: str | Path, *, upgrade: bool = True):
        self.path = Path(path)
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=60)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            check = [r[0] for r in self.conn.execute("PRAGMA quick_check")]
            if check != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(map(str, check[:5])))
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            old = "requests" in tables and "row_hash" not in self._columns("requests")
            if old and upgrade:
                self._upgrade()
            elif not old:
                self.conn.executescript(SCHEMA)
                if self.pragma("user_version") < SCHEMA_VERSION:
                    self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.needs_upgrade = old and not upgrade
        except sqlite3.DatabaseError as exc:
            if hasattr(self, "conn"):
                self.conn.close()
            raise LedgerCorrupt(f"{self.path}: not a readable unlearnx deletion ledger (SQLite: {exc})") from None

    def _columns(self, table: str) -> set[str]:
        return {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}

    def _upgrade(self) -> None:
        """Schema 1 -> 2: add the hash-chain columns and chain the existing rows (one transaction)."""
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            if "row_hash" in self._columns("requests"):  # another process upgraded it meanwhile
                cur.execute("ROLLBACK")
                return
            for table, cols in _V2_COLUMNS.items():
                have = self._columns(table)
                for c in cols:
                    if c not in have:
                        cur.execute(f"ALTER TABLE {table} ADD COLUMN {c} TEXT")
            cur.execute("CREATE TABLE IF NOT EXISTS ledger_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            cur.execute("CREATE INDEX IF NOT EXISTS requests_by_requester ON requests(requester)")
            cur.execute("CREATE UNIQUE INDEX IF NOT EXISTS requests_by_key ON requests(request_key) "
                        "WHERE request_key IS NOT NULL")
            prev = GENESIS
            rows = cur.execute("SELECT id, ids, requester, received_at, state, applied_at, effect, manifest_version "
                               "FROM requests ORDER BY id").fetchall()
            for rid, ids, requester, received_at, state, applied_at, effect, mv in rows:
                h = request_row_hash(rid, json.loads(ids), requester, received_at, None, prev)
                ah = (request_applied_hash(h, applied_at, json.loads(effect) if effect else None, mv)
                      if state == "applied" else None)
                cur.execute("UPDATE requests SET prev_hash=?, row_hash=?, applied_hash=? WHERE id=?", (prev, h, ah, rid))
                prev = h
            prev = GENESIS
            for version, sha, req, created in cur.execute(
                    "SELECT version, sha256, request_id, created_at FROM manifests ORDER BY version").fetchall():
                files = cur.execute("SELECT path, sha256, role FROM served_files WHERE version=?", (version,)).fetchall()
                h = manifest_row_hash(version, sha, req, created, files, prev)
                cur.execute("UPDATE manifests SET prev_hash=?, row_hash=? WHERE version=?", (prev, h, version))
                prev = h
            cur.execute("INSERT OR REPLACE INTO ledger_meta(key, value) VALUES ('upgraded', ?)",
                        (json.dumps({"from_schema": 1, "at": _now(), "requests": len(rows)}),))
            cur.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()

    def pragma(self, name: str):
        return self.conn.execute(f"PRAGMA {name}").fetchone()[0]

    def meta(self, key: str):
        """A `ledger_meta` value (decoded JSON), or None."""
        try:
            r = self.conn.execute("SELECT value FROM ledger_meta WHERE key=?", (key,)).fetchone()
        except sqlite3.OperationalError:  # a schema-1 ledger opened with upgrade=False
            return None
        return None if r is None else json.loads(r[0])

    # -- requests -------------------------------------------------------------------------------
    def find_retry(self, ids, requester: str, *, request_key: str | None = None) -> Request | None:
        """The earlier request a new one repeats, or None.

        With a request key: the request recorded under that key, which must name the same ids and
        requester (LedgerError otherwise: the key is taken). Without one: an earlier request by
        the same requester for exactly the same ids.
        """
        ids = validate_ids(ids)
        requester = validate_requester(requester)
        request_key = validate_request_key(request_key)
        if request_key is not None:
            r = self.conn.execute(f"SELECT {_COLS} FROM requests WHERE request_key = ?", (request_key,)).fetchone()
            if r is None:
                return None
            req = self._row(r)
            if req.ids != ids or req.requester != requester:
                raise LedgerError(f"request key {request_key!r} was already used by request {req.id} "
                                  f"(requester {req.requester!r}, {len(req.ids)} ids) for a different deletion")
            return req
        r = self.conn.execute(f"SELECT {_COLS} FROM requests WHERE requester = ? AND ids = ? ORDER BY id LIMIT 1",
                              (requester, json.dumps(list(ids)))).fetchone()
        return None if r is None else self._row(r)

    def record_request(self, ids, requester: str, *, known_ids: set[int], request_key: str | None = None) -> int:
        """Durably record a request in state 'received'; returns its id.

        Refuses (LedgerError) empty or non-integer ids, ids repeated in the request, ids that are
        not training ids (`known_ids`), ids already requested by an earlier request, and a request
        key already in use. (Retries are recognised before, with `find_retry`.)
        """
        ids = validate_ids(ids)
        requester = validate_requester(requester)
        request_key = validate_request_key(request_key)
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
            if request_key is not None and cur.execute(
                    "SELECT 1 FROM requests WHERE request_key = ?", (request_key,)).fetchone():
                raise LedgerError(f"request key {request_key!r} is already used by another request")
            last = cur.execute("SELECT row_hash FROM requests ORDER BY id DESC LIMIT 1").fetchone()
            prev = GENESIS if last is None else last[0]
            received_at = _now()
            cur.execute(
                "INSERT INTO requests(ids, requester, received_at, state, request_key, prev_hash) "
                "VALUES (?, ?, ?, 'received', ?, ?)",
                (json.dumps(list(ids)), requester, received_at, request_key, prev),
            )
            rid = int(cur.lastrowid)
            cur.execute("UPDATE requests SET row_hash=? WHERE id=?",
                        (request_row_hash(rid, list(ids), requester, received_at, request_key, prev), rid))
            cur.executemany("INSERT INTO deleted_ids(id, request_id) VALUES (?, ?)", [(i, rid) for i in ids])
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return rid

    def _row(self, r) -> Request:
        return Request(
            id=r[0], ids=tuple(json.loads(r[1])), requester=r[2], received_at=r[3], state=r[4],
            applied_at=r[5], effect=json.loads(r[6]) if r[6] else None, manifest_version=r[7],
            request_key=r[8],
        )

    def requests(self, state: str | None = None) -> list[Request]:
        q = f"SELECT {_COLS} FROM requests"
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
            last = cur.execute("SELECT row_hash FROM manifests ORDER BY version DESC LIMIT 1").fetchone()
            prev = GENESIS if last is None else last[0]
            created = _now()
            rows = [(f["path"], f["sha256"], f["role"]) for f in files]
            cur.execute(
                "INSERT INTO manifests(version, sha256, request_id, created_at, prev_hash, row_hash) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (version, sha256, request_id, created, prev,
                 manifest_row_hash(version, sha256, request_id, created, rows, prev)),
            )
            cur.executemany("INSERT INTO served_files(version, path, sha256, role) VALUES (?, ?, ?, ?)",
                            [(version, *r) for r in rows])
            if request_id is not None:
                r = cur.execute("SELECT row_hash FROM requests WHERE id=? AND state='received'", (request_id,)).fetchone()
                if r is None:
                    raise RuntimeError(f"request {request_id} is not in state 'received'")
                applied_at = _now()
                effect_json = json.dumps(effect, sort_keys=True)
                cur.execute(
                    "UPDATE requests SET state='applied', applied_at=?, effect=?, manifest_version=?, applied_hash=? "
                    "WHERE id=?",
                    (applied_at, effect_json, version,
                     request_applied_hash(r[0], applied_at, json.loads(effect_json), version), request_id),
                )
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

    # -- tamper evidence ------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Recompute the hash chains and compare the requests' ids with deleted_ids; returns one
        message per problem (empty: every row is as it was written), each naming the row."""
        if self.needs_upgrade:
            return [f"{self.path.name} has schema version 1 (no hash chain over its rows); open the directory "
                    "with any writing command (e.g. `unlearnx exact status DIR`) to upgrade it, then audit again"]
        errors: list[str] = []
        prev = GENESIS
        by_request: dict[int, set[int]] = {}
        for r in self.conn.execute(f"SELECT {_COLS}, prev_hash, row_hash, applied_hash FROM requests ORDER BY id"):
            rid, ids_json, requester, received_at, state, applied_at, effect, mv, key, prev_hash, row_hash, ah = r
            try:
                ids = json.loads(ids_json)
                if validate_ids(ids) != tuple(ids):
                    raise LedgerError("ids are not sorted")
                eff = json.loads(effect) if effect else None
            except (ValueError, TypeError) as exc:
                errors.append(f"request {rid}: malformed row ({exc})")
                prev = row_hash
                continue
            by_request[rid] = set(ids)
            if prev_hash != prev:
                errors.append(f"request {rid}: its previous-row hash does not match the row before it "
                              "(a request was removed, inserted or edited)")
            if row_hash != request_row_hash(rid, ids, requester, received_at, key, prev_hash or ""):
                errors.append(f"request {rid}: row hash mismatch: its ids, requester, received_at or key were "
                              "changed after it was recorded")
            if state == "applied":
                if ah is None or ah != request_applied_hash(row_hash or "", applied_at, eff, mv):
                    errors.append(f"request {rid}: applied-state hash mismatch: its state, applied_at, effect or "
                                  "manifest version were changed after it was applied")
            elif ah is not None or applied_at is not None:
                errors.append(f"request {rid}: marked 'received' but carries applied fields (state was changed)")
            prev = row_hash
        table: dict[int, set[int]] = {}
        for i, rid in self.conn.execute("SELECT id, request_id FROM deleted_ids"):
            table.setdefault(rid, set()).add(i)
        for rid in sorted(set(by_request) | set(table)):
            want, have = by_request.get(rid, set()), table.get(rid, set())
            if rid not in by_request:
                errors.append(f"deleted_ids names request {rid}, which is not in the requests table")
            elif want != have:
                errors.append(f"request {rid}: its ids differ from the deleted_ids table "
                              f"({len(want - have)} missing there, {len(have - want)} extra)")
        prev = GENESIS
        for version, sha, req, created, prev_hash, row_hash in self.conn.execute(
                "SELECT version, sha256, request_id, created_at, prev_hash, row_hash FROM manifests ORDER BY version"):
            files = self.conn.execute("SELECT path, sha256, role FROM served_files WHERE version=?", (version,)).fetchall()
            if prev_hash != prev:
                errors.append(f"manifest version {version}: its previous-row hash does not match the row before it")
            if row_hash != manifest_row_hash(version, sha, req, created, files, prev_hash or ""):
                errors.append(f"manifest version {version}: row hash mismatch: its sha256, request, time or "
                              "served files were changed after it was recorded")
            prev = row_hash
        return errors

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


_COLS = "id, ids, requester, received_at, state, applied_at, effect, manifest_version, request_key"
