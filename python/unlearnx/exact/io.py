"""Durable files for exact unlearning: atomic writes, content-addressed safetensors checkpoints,
the directory lock, and the crash-test hook.

Every persistent file is written to a unique temporary name in its final folder, flushed and
fsync'ed, renamed over the target, and the folder is fsync'ed, so a crash (even SIGKILL or power
loss) leaves either the complete old file or the complete new one.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from unlearnx.report.io import atomic_write_bytes, fsync_dir  # noqa: F401  (re-exported for the store)

CRASH_ENV = "UNLEARNX_EXACT_CRASH_AT"
# Named points where the test hook may kill the process; documented in docs/exact.md.
CRASH_POINTS = (
    "after_request_recorded",
    "after_checkpoint_write",
    "after_data_write",
    "before_manifest_swap",
    "after_manifest_swap",
    "after_ledger_commit",
)


def crash_point(name: str) -> None:
    """Test hook: SIGKILL this process when UNLEARNX_EXACT_CRASH_AT names `name`.

    Only the crash tests set the variable; it lets them kill a real `delete` at a precise point
    (no cleanup handlers run, exactly like `kill -9`).
    """
    if name not in CRASH_POINTS:
        raise ValueError(f"crash point {name!r} is not one of {CRASH_POINTS}")
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def json_bytes(obj) -> bytes:
    """Canonical JSON encoding (sorted keys, compact), so equal content always hashes equally.
    Compact, not indented: json's C encoder only runs without indent (10x faster on manifests)."""
    return (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()


def atomic_write_json(path: str | os.PathLike, obj) -> str:
    """Atomically write `obj` as canonical JSON; returns the sha256 of the bytes written."""
    data = json_bytes(obj)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def parse_json(data: bytes, path: str | os.PathLike, *, kind: type = dict):
    """Decode the JSON bytes read from `path`; ValueError naming the file when they are not valid
    UTF-8 JSON or not a `kind` (a corrupt or foreign file)."""
    try:
        obj = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path}: not valid JSON ({exc}); the file is corrupt or was modified outside unlearnx") from None
    if not isinstance(obj, kind):
        raise ValueError(f"{path}: expected a JSON {kind.__name__}, got {type(obj).__name__}")
    return obj


def read_json(path: str | os.PathLike):
    """Read a JSON object from `path` (see `parse_json`)."""
    with open(path, "rb") as f:
        return parse_json(f.read(), path)


class CheckpointStore:
    """Content-addressed safetensors files under `root/<folder>/`.

    A file is named after the sha256 of its bytes, so it is immutable: a retrained checkpoint is a
    new file, and the files the served manifest points to are never overwritten.
    `info` (role, shard, slice, the training manifest `trained_on`...) is stored as one canonical
    JSON string under the safetensors metadata key "unlearnx": one key, because safetensors
    writes several metadata keys in hash-map order, which would make equal checkpoints hash
    differently.
    """

    def __init__(self, root: str | os.PathLike, folder: str = "checkpoints"):
        self.root = Path(root)
        self.folder = folder

    def save(self, tensors: dict[str, torch.Tensor], info: dict, *, prefix: str) -> dict:
        """Write `tensors` with `info`; returns the manifest entry {"path", "sha256"}."""
        if not prefix.replace("-", "").isalnum():
            raise ValueError(f"prefix must be alphanumeric with dashes, got {prefix!r}")
        payload = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        data = st_save(payload, metadata={"unlearnx": json.dumps(info, sort_keys=True)})
        digest = sha256_bytes(data)
        rel = f"{self.folder}/{prefix}-{digest[:20]}.safetensors"
        target = self.root / rel
        # Same name means same bytes: a crashed earlier attempt may already have written it.
        if not (target.exists() and sha256_file(target) == digest):
            atomic_write_bytes(target, data, sync_dir=False)
        return {"path": rel, "sha256": digest}

    def load(self, entry: dict) -> tuple[dict[str, torch.Tensor], dict]:
        """Read a checkpoint, refusing it if its bytes do not match the recorded sha256."""
        path = self.root / entry["path"]
        with open(path, "rb") as f:
            data = f.read()
        digest = sha256_bytes(data)
        if digest != entry["sha256"]:
            raise RuntimeError(
                f"checkpoint {entry['path']} has sha256 {digest}, but {entry['sha256']} was recorded: "
                "the file was modified or corrupted; run `unlearnx exact audit`"
            )
        return st_load(data), _info_from_header(data[8 : 8 + int.from_bytes(data[:8], "little")])


def _info_from_header(header: bytes) -> dict:
    meta = json.loads(header).get("__metadata__") or {}
    return json.loads(meta["unlearnx"]) if "unlearnx" in meta else {}


def read_checkpoint_info(path: str | os.PathLike) -> dict:
    """The `info` dict of a checkpoint written by CheckpointStore ({} if it has none); reads only
    the safetensors header (8-byte little-endian length + JSON)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return _info_from_header(f.read(n))


class DirLock:
    """Exclusive advisory lock on `<dir>/.lock` so two writers never apply requests concurrently."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / ".lock"
        self._fd: int | None = None

    def __enter__(self):
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
