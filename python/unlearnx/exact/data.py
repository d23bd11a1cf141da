"""Data for exact unlearning: labelled arrays with stable integer ids, the built-in data sets,
data files, and the shard/slice assignment.

A deletion request names training ids; every training row carries one, so the manifests and the
audit can speak about ids instead of row positions.
"""
from __future__ import annotations

import io
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unlearnx.exact.io import atomic_write_bytes, sha256_bytes


@dataclass(frozen=True)
class Arrays:
    """Rows `x` [N, F] float32, labels `y` [N] int64, ids [N] int64 (distinct)."""

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray

    def __post_init__(self):
        x, y, ids = self.x, self.y, self.ids
        if x.ndim != 2:
            raise ValueError(f"x must have shape [N, F], got {x.shape}")
        if y.shape != (x.shape[0],) or ids.shape != (x.shape[0],):
            raise ValueError(f"y and ids must have shape [{x.shape[0]}], got {y.shape} and {ids.shape}")
        if not np.issubdtype(y.dtype, np.integer) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"y and ids must be integer arrays, got {y.dtype} and {ids.dtype}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be distinct")
        if not np.isfinite(x).all():
            raise ValueError("x contains NaN or Inf")

    @classmethod
    def of(cls, x, y, ids=None) -> "Arrays":
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        y = np.asarray(y).astype(np.int64)
        ids = np.arange(len(x), dtype=np.int64) if ids is None else np.asarray(ids).astype(np.int64)
        order = np.argsort(ids, kind="stable")  # rows sorted by id: one canonical order
        return cls(x[order], y[order], ids[order])

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, ids) -> "Arrays":
        """The rows with these ids, in sorted-id order; KeyError naming a missing id."""
        ids = np.sort(np.asarray(list(ids), dtype=np.int64))
        pos = np.searchsorted(self.ids, ids)
        ok = (pos < len(self.ids)) & (self.ids[np.minimum(pos, len(self.ids) - 1)] == ids)
        if not ok.all():
            raise KeyError(f"ids not in this data: {ids[~ok][:10].tolist()}")
        return Arrays(self.x[pos], self.y[pos], ids)

    def without(self, ids) -> "Arrays":
        keep = ~np.isin(self.ids, np.asarray(list(ids), dtype=np.int64))
        return Arrays(self.x[keep], self.y[keep], self.ids[keep])

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.x).to(device), torch.from_numpy(self.y).to(device)

    def to_npz_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, x=self.x, y=self.y, ids=self.ids)
        return buf.getvalue()


def save_arrays(root: Path, rel: str, arrays: Arrays) -> dict:
    """Atomically write `arrays` as npz under root/rel-<hash>.npz; returns {"path", "sha256"}."""
    data = arrays.to_npz_bytes()
    digest = sha256_bytes(data)
    path = f"{rel}-{digest[:20]}.npz"
    if not (root / path).exists():
        atomic_write_bytes(root / path, data, sync_dir=False)  # the store fsyncs data/ before the swap
    return {"path": path, "sha256": digest}


def load_arrays(path: str | os.PathLike) -> Arrays:
    with np.load(path, allow_pickle=False) as z:
        return Arrays(z["x"], z["y"], z["ids"])


def builtin_digits(seed: int = 0) -> dict[str, Arrays]:
    """scikit-learn's 8x8 digits (1797 rows, 64 features scaled to [0, 1], 10 classes), split with
    `seed` into test (360 rows), public (300 rows: S3T's backbone pre-training data, never
    deletable) and train (the rest, 1137 rows). Ids are the row numbers of load_digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.float32) / 16.0
    perm = np.random.default_rng(seed).permutation(len(x))
    parts = {"test": perm[:360], "public": perm[360:660], "train": perm[660:]}
    return {k: Arrays.of(x[p], d.target[p], p) for k, p in parts.items()}


def synthetic_blobs(n: int, *, features: int = 64, classes: int = 10, separation: float = 1.0,
                    seed: int = 0) -> dict[str, Arrays]:
    """Gaussian class clusters: x = mu_y + N(0, I), mu_c ~ N(0, separation^2 I); split 80/10/10
    into train/test/public with ids 0..n-1."""
    if n < 10 * classes:
        raise ValueError(f"n must be at least {10 * classes}, got {n}")
    rng = np.random.default_rng(seed)
    mu = rng.normal(0.0, separation, size=(classes, features))
    y = rng.integers(0, classes, size=n)
    x = (mu[y] + rng.normal(size=(n, features))).astype(np.float32)
    perm = rng.permutation(n)
    a, b = int(0.8 * n), int(0.9 * n)
    parts = {"train": perm[:a], "test": perm[a:b], "public": perm[b:]}
    return {k: Arrays.of(x[p], y[p], p) for k, p in parts.items()}


def read_array_file(path: str | os.PathLike, what: str = "data file") -> dict[str, np.ndarray]:
    """The named arrays of a .npz file (no pickled objects) or a .pt file holding a dict of tensors
    (read with weights_only=True: a .pt cannot run code). A missing, corrupt or foreign file raises
    FileNotFoundError/ValueError whose message starts with `what` and the path."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory, expected a .npz or .pt file")
    if path.suffix not in (".npz", ".pt"):
        raise ValueError(f"{what} must end in .npz or .pt, got {path.name}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if not isinstance(z, np.lib.npyio.NpzFile):
                    raise ValueError("a single array (.npy), not an archive of named arrays")
                raw = {k: z[k] for k in z.files}
        else:
            with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict):
                raise ValueError(f"expected a dict of name -> tensor, got {type(obj).__name__}")
            raw = {str(k): (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in obj.items()}
    except Exception as exc:  # BadZipFile, UnpicklingError, EOFError, OSError...: all mean a bad file
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        if isinstance(exc, pickle.UnpicklingError):
            detail = "a pickle that is not plain tensors; unlearnx never unpickles objects"
        raise ValueError(f"{what} {path}: not a readable {path.suffix} file of named arrays "
                         f"({type(exc).__name__}: {detail})") from None
    return raw


def _rows(raw: dict, path: Path, what: str, x_key: str, y_key: str, ids_key: str | None, ids=None) -> Arrays:
    x, y = raw[x_key], raw[y_key]
    ids = raw[ids_key] if ids_key is not None and ids_key in raw else ids
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ValueError(f"{what} {path}: {x_key} must be a numeric array, got dtype {x.dtype}")
    for k, a in ((y_key, y), (ids_key, ids)):
        if a is not None and not np.issubdtype(np.asarray(a).dtype, np.integer):
            raise ValueError(f"{what} {path}: {k} must be an integer array, got dtype {np.asarray(a).dtype}")
    if x.ndim != 2 or len(x) == 0 or x.shape[1] == 0:
        raise ValueError(f"{what} {path}: {x_key} must have shape [N, F] with N, F >= 1, got {x.shape}")
    if y.shape != (len(x),) or (ids is not None and np.shape(ids) != (len(x),)):
        raise ValueError(f"{what} {path}: {y_key}{' and ' + ids_key if ids_key else ''} must have shape "
                         f"[{len(x)}], got {y.shape}{' and ' + str(np.shape(ids)) if ids is not None else ''}")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"{what} {path}: {y_key} must be class labels >= 0, got {int(y.min())}")
    try:
        return Arrays.of(x, y, ids)
    except ValueError as exc:
        raise ValueError(f"{what} {path}: {exc}") from None


def load_data_file(path: str | os.PathLike, what: str = "data file") -> dict[str, Arrays]:
    """Read a .npz or .pt file with keys x, y, ids (training rows) and optionally test_x, test_y
    (evaluation rows) and public_x, public_y, public_ids (S3T backbone pre-training rows).
    Every problem raises FileNotFoundError/ValueError naming `what`, the file and the key."""
    path = Path(path)
    raw = read_array_file(path, what)
    missing = {"x", "y", "ids"} - set(raw)
    if missing:
        raise ValueError(f"{what} {path} lacks keys {sorted(missing)} (needs x, y, ids)")
    out = {"train": _rows(raw, path, what, "x", "y", "ids")}
    for prefix in ("test", "public"):
        if f"{prefix}_x" in raw and f"{prefix}_y" not in raw:
            raise ValueError(f"{what} {path} has {prefix}_x but no {prefix}_y")
    if "test_x" in raw:
        out["test"] = _rows(raw, path, what, "test_x", "test_y", None)
    if "public_x" in raw:
        # keep public ids disjoint from training ids when the file gives none
        default = int(out["train"].ids.max()) + 1 + np.arange(len(raw["public_x"]))
        out["public"] = _rows(raw, path, what, "public_x", "public_y", "public_ids", default)
    features = out["train"].x.shape[1]
    for name, d in out.items():
        if d.x.shape[1] != features:
            raise ValueError(f"{what} {path}: {name}_x has {d.x.shape[1]} features, x has {features}")
    return out


def assign_slices(ids, *, shards: int, slices: int, seed: int) -> list[list[list[int]]]:
    """Partition ids into `shards` disjoint shards of `slices` disjoint slices each.

    A seeded permutation of the sorted ids is dealt round-robin to shards; each shard's list is cut
    into `slices` contiguous near-equal parts; every slice is stored sorted. Returns
    assignment[shard][slice] = sorted list of ids.
    """
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    if shards < 1 or slices < 1:
        raise ValueError(f"shards and slices must be >= 1, got {shards} and {slices}")
    if len(ids) < shards * slices:
        raise ValueError(f"{len(ids)} training rows cannot fill {shards} shards x {slices} slices")
    from unlearnx.exact.models import derive_seed

    g = torch.Generator().manual_seed(derive_seed(seed, "assign"))
    perm = ids[torch.randperm(len(ids), generator=g).numpy()]
    out = []
    for s in range(shards):
        mine = perm[s::shards]
        out.append([sorted(int(i) for i in part) for part in np.array_split(mine, slices)])
    return out
