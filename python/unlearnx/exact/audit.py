"""Audit of an exact-unlearning directory: proof that deleted data is gone from what is served.

`audit_directory(DIR)` checks, without modifying anything:
  0. the ledger's own rows: the hash chains over the request and manifest rows are intact (no row
     edited, removed or inserted since it was written) and the union of the requests' ids is
     exactly the deleted_ids table (see unlearnx.exact.ledger);
  1. the ledger: every request is applied, the served manifest is the last one recorded (same
     version and sha256), it reflects the last request, and it serves exactly the recorded files;
  2. every served file (checkpoint, adapter, backbone, shard data) exists and its sha256 matches
     the manifest and the ledger;
  3. no deleted id is in any shard's slices, shard data file, or the training manifest
     (`unlearnx.trained_on` metadata, inside the hashed safetensors bytes) of any served
     checkpoint/adapter, and each such manifest equals what the slices say it must be
     (SISA checkpoint r: slices 0..r; S3T adapter k of sequence b: slices order_b[0..k]);
  4. every training id is either deleted or in exactly its originally assigned slice, and every
     S3T shard still serves a non-empty prefix;
  5. no file left on disk outside the manifest holds a deleted id (an unreferenced file that holds
     none is only a warning).
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unlearnx.exact.io import parse_json, read_checkpoint_info, read_json, sha256_bytes, sha256_file
from unlearnx.exact.ledger import Ledger


@dataclass
class AuditReport:
    directory: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        lines = [f"unlearnx exact audit: {self.directory}: {'PASS' if self.ok else 'FAIL'}"]
        lines += [f"  checked {k}: {v}" for k, v in self.checked.items()]
        lines += [f"  ERROR: {e}" for e in self.errors]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


class _Unreadable(ValueError):
    """A served file that cannot be parsed (its sha256 check reports the corruption too)."""


def _ids_in_npz(path: Path) -> set[int]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return set(z["ids"].tolist())
    except Exception as exc:  # BadZipFile, missing key, torn file...
        raise _Unreadable(f"{path.name} is unreadable ({type(exc).__name__})") from None


def _checkpoint_info(path: Path) -> dict:
    try:
        info = read_checkpoint_info(path)
        if not isinstance(info, dict):
            raise TypeError("metadata is not an object")
        return info
    except Exception as exc:  # a corrupt header: bad length, not JSON, not UTF-8
        raise _Unreadable(f"{path.name} is unreadable ({type(exc).__name__})") from None


def _check_checkpoint(report: AuditReport, root: Path, entry: dict, expected: list[int], deleted: set[int],
                      what: str, meta_expect: dict) -> None:
    path = root / entry["path"]
    try:
        meta = _checkpoint_info(path)
    except _Unreadable as exc:
        report.errors.append(f"{what} ({entry['path']}): {exc}")
        return
    if not isinstance(meta.get("trained_on"), list):
        report.errors.append(f"{what} ({entry['path']}) has no training manifest (trained_on)")
        return
    trained_on = set(meta["trained_on"])
    leaked = trained_on & deleted
    if leaked:
        report.errors.append(f"{what} ({entry['path']}) was trained on deleted ids {sorted(leaked)[:20]}")
    if trained_on != set(expected):
        report.errors.append(f"{what} ({entry['path']}) training manifest differs from its slices "
                             f"({len(trained_on)} ids recorded, {len(expected)} expected)")
    for k, v in meta_expect.items():
        if meta.get(k) != v:
            report.errors.append(f"{what} ({entry['path']}) metadata {k}={meta.get(k)!r}, expected {v!r}")


def audit_directory(directory: str | Path) -> AuditReport:
    """Audit DIR; see the module docstring for what is proven. Never modifies DIR (a schema-1
    ledger is reported, not upgraded). A corrupt file is an error naming it, never an exception."""
    root = Path(directory)
    report = AuditReport(str(root))
    for name in ("config.json", "served.json", "ledger.sqlite"):
        if not (root / name).exists():
            report.errors.append(f"missing {name}: not an initialised exact-unlearning directory")
    if report.errors:
        return report
    try:
        config = read_json(root / "config.json")
        with open(root / "served.json", "rb") as f:
            served_bytes = f.read()
        served_sha = sha256_bytes(served_bytes)
        ledger = Ledger(root / "ledger.sqlite", upgrade=False)
    except (ValueError, OSError) as exc:  # corrupt config.json or ledger.sqlite: named in the message
        report.errors.append(str(exc))
        return report
    try:
        chain_errors = ledger.verify()
        if ledger.needs_upgrade:
            report.errors += chain_errors
            return report
        upgraded = ledger.meta("upgraded")
        latest = ledger.latest_manifest()
        pending = ledger.pending()
        requests = ledger.requests()
        deleted = ledger.deleted_ids()
        recorded_by_version = {v: ledger.served_files(v) for v in {latest[0]} if latest}
    except (sqlite3.DatabaseError, ValueError) as exc:
        report.errors.append(f"{root / 'ledger.sqlite'}: unreadable deletion ledger ({exc})")
        return report
    finally:
        ledger.close()

    # 0. the ledger's own rows: hash chains, and the requests' ids are exactly the deleted ids
    report.errors += [f"ledger.sqlite: {e}" for e in chain_errors]
    if upgraded:
        report.warnings.append(f"ledger.sqlite was upgraded from schema 1 at {upgraded['at']}: its first "
                               f"{upgraded['requests']} request(s) were chained then, earlier edits are not detectable")
    report.checked["ledger rows (hash chain)"] = len(requests)
    if latest is None or latest[1] != served_sha:
        report.errors.append(f"served.json (sha256 {served_sha[:16]}...) is not the last manifest recorded in the "
                             f"ledger ({latest}): the file is corrupt or was modified outside unlearnx")
    try:
        manifest = parse_json(served_bytes, root / "served.json")
    except ValueError as exc:
        report.errors.append(str(exc))
        return report
    try:
        _audit_served(report, root, config, manifest, served_sha, latest, pending, requests, deleted,
                      recorded_by_version)
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        report.errors.append(f"served.json or config.json has unexpected content ({exc!r}); "
                             "they are corrupt or were modified outside unlearnx")
    return report


def _audit_served(report: AuditReport, root: Path, config: dict, manifest: dict, served_sha: str, latest,
                  pending, requests, deleted: set[int], recorded_by_version: dict) -> None:
    recorded = recorded_by_version.get(manifest["version"], {})
    # 1. ledger vs served manifest
    for r in pending:
        report.errors.append(f"request {r.id} ({r.requester}, {len(r.ids)} ids) is received but not applied; "
                             "open the directory (any unlearnx exact command but audit) to recover")
    if latest is not None and latest[1] == served_sha and latest != (manifest["version"], served_sha):
        report.errors.append(f"served.json (version {manifest['version']}, sha256 {served_sha[:16]}...) is not the "
                             f"last manifest recorded in the ledger ({latest})")
    last_req = max((r.id for r in requests), default=0)
    if manifest["applied_through"] != last_req:
        report.errors.append(f"served manifest reflects requests up to {manifest['applied_through']}, "
                             f"the ledger has {last_req}")

    # 2. served files and hashes
    from unlearnx.exact.s3t import S3T
    from unlearnx.exact.sisa import SISA
    from unlearnx.exact.store import manifest_files

    engine = SISA if config["method"] == "sisa" else S3T
    files = manifest_files(manifest, engine)
    for f in files:
        path = root / f["path"]
        if not path.exists():
            report.errors.append(f"served file {f['path']} ({f['role']}) is missing")
            continue
        actual = sha256_file(path)
        if actual != f["sha256"]:
            report.errors.append(f"served file {f['path']} ({f['role']}) has sha256 {actual[:16]}..., "
                                 f"manifest records {f['sha256'][:16]}...")
        led = recorded.get(f["path"])
        if led is None or led["sha256"] != f["sha256"]:
            report.errors.append(f"served file {f['path']} is not recorded with this sha256 in the ledger")
    if set(recorded) != {f["path"] for f in files}:
        report.errors.append("the ledger's served files for this manifest differ from the manifest's files")
    report.checked["served files"] = len(files)

    # 3 and 4. slices, data, training manifests, completeness
    seen: set[int] = set()
    n_ckpt = 0
    for e, assigned in zip(manifest["shards"], config["assignment"], strict=True):
        s = e["shard"]
        union = [i for sl in e["slices"] for i in sl]
        leaked = set(union) & deleted
        if leaked:
            report.errors.append(f"shard {s} slices still list deleted ids {sorted(leaked)[:20]}")
        for r, (sl, orig) in enumerate(zip(e["slices"], assigned, strict=True)):
            if not set(sl) <= set(orig):
                report.errors.append(f"shard {s} slice {r} holds ids not assigned to it")
        seen |= set(union)
        data_path = root / e["data"]["path"]
        try:
            ids = _ids_in_npz(data_path) if data_path.exists() else None
        except _Unreadable as exc:
            report.errors.append(f"shard {s} data {e['data']['path']}: {exc}")
            ids = None
        if ids is not None:
            if ids & deleted:
                report.errors.append(f"shard {s} data {e['data']['path']} still holds deleted ids {sorted(ids & deleted)[:20]}")
            if ids != set(union):
                report.errors.append(f"shard {s} data {e['data']['path']} rows differ from its slices")
        if not manifest["trained"]:
            continue
        if config["method"] == "sisa":
            for c in e["checkpoints"]:
                r = c["slice"]
                if (root / c["path"]).exists():
                    _check_checkpoint(report, root, c, [i for sl in e["slices"][: r + 1] for i in sl], deleted,
                                      f"shard {s} slice {r} checkpoint", {"shard": s, "slice": r, "role": "sisa-slice"})
                n_ckpt += 1
            if [c["slice"] for c in e["checkpoints"]] != list(range(config["slices"])):
                report.errors.append(f"shard {s} does not serve one checkpoint per slice")
        else:
            if max(len(q["adapters"]) for q in e["sequences"]) == 0:
                report.errors.append(f"shard {s} serves no sequence with a non-empty prefix")
            for b, q in enumerate(e["sequences"]):
                for k, a in enumerate(q["adapters"]):
                    if a["position"] != k or a["slice"] != q["order"][k]:
                        report.errors.append(f"shard {s} sequence {b} adapter {k} is out of order")
                    if (root / a["path"]).exists():
                        expected = [i for j in q["order"][: k + 1] for i in e["slices"][j]]
                        _check_checkpoint(report, root, a, expected, deleted,
                                          f"shard {s} sequence {b} adapter {k}",
                                          {"shard": s, "sequence": b, "position": k, "slice": q["order"][k],
                                           "role": "s3t-adapter"})
                    n_ckpt += 1
    if manifest.get("backbone") and (root / manifest["backbone"]["path"]).exists():
        try:
            meta = _checkpoint_info(root / manifest["backbone"]["path"])
        except _Unreadable as exc:
            report.errors.append(f"the S3T backbone ({manifest['backbone']['path']}): {exc}")
            meta = {"trained_on": []}
        if meta.get("trained_on") != [] or set(meta.get("public_ids", [])) & deleted:
            report.errors.append("the S3T backbone was trained on deletable or deleted ids")
    known = {i for shard in config["assignment"] for sl in shard for i in sl}
    missing = known - seen - deleted
    if missing:
        report.errors.append(f"{len(missing)} training ids are neither served nor deleted: {sorted(missing)[:20]}")
    unknown_deleted = deleted - known
    if unknown_deleted:
        report.errors.append(f"the ledger lists deleted ids that were never training ids: {sorted(unknown_deleted)[:20]}")
    report.checked["checkpoints/adapters"] = n_ckpt
    report.checked["deleted ids"] = len(deleted)
    report.checked["requests"] = len(requests)

    # 5. files on disk outside the manifest
    keep = {f["path"] for f in files} | {config[k]["path"] for k in ("test_data", "public_data") if config.get(k)}
    for folder in ("checkpoints", "data"):
        d = root / folder
        for p in sorted(d.iterdir()) if d.is_dir() else []:
            rel = f"{folder}/{p.name}"
            if rel in keep:
                continue
            held: set[int] = set()
            try:
                if p.suffix == ".safetensors":
                    held = set(_checkpoint_info(p).get("trained_on", []))
                elif p.suffix == ".npz":
                    held = _ids_in_npz(p)
            except Exception:  # a torn temp file: unreadable, reported as unreferenced below
                pass
            if held & deleted:
                report.errors.append(f"unreferenced file {rel} still holds deleted ids {sorted(held & deleted)[:20]}; "
                                     "open the directory to collect it")
            else:
                report.warnings.append(f"unreferenced file {rel}")
