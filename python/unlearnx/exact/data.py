"""Data for exact unlearning: labelled arrays with stable integer ids, the built-in data sets,
data files, and the shard/slice assignment.

A deletion request names training ids; every training row carries one, so the manifests and the
audit can speak about ids instead of row positions.
"""
from __future__ import annotations

import io
import os
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
    with np.load(path) as z:
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


def load_data_file(path: str | os.PathLike) -> dict[str, Arrays]:
    """Read a .npz or .pt file with keys x, y, ids (training rows) and optionally test_x, test_y
    (evaluation rows) and public_x, public_y, public_ids (S3T backbone pre-training rows)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path) as z:
            raw = {k: z[k] for k in z.files}
    elif path.suffix == ".pt":
        raw = torch.load(path, map_location="cpu", weights_only=True)
        raw = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in raw.items()}
    else:
        raise ValueError(f"data file must end in .npz or .pt, got {path.name}")
    missing = {"x", "y", "ids"} - set(raw)
    if missing:
        raise ValueError(f"data file {path} lacks keys {sorted(missing)} (needs x, y, ids)")
    out = {"train": Arrays.of(raw["x"], raw["y"], raw["ids"])}
    if "test_x" in raw:
        out["test"] = Arrays.of(raw["test_x"], raw["test_y"])
    if "public_x" in raw:
        pub_ids = raw.get("public_ids")
        if pub_ids is None:  # keep public ids disjoint from training ids
            pub_ids = int(out["train"].ids.max()) + 1 + np.arange(len(raw["public_x"]))
        out["public"] = Arrays.of(raw["public_x"], raw["public_y"], pub_ids)
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
