"""S3T: Sequence-aware Sharded Sliced Training (Chowdhury et al., "Towards Scalable Exact Machine
Unlearning Using Parameter-Efficient Fine-Tuning", 2024).

A frozen backbone; per shard, B sequences (orders) of its R slices -- cyclic rotations by default,
sequence b = (b, b+1, ..., b+R-1) mod R. Along a sequence, position k trains its own LoRA adapters
(`LoRALinear`, one adapter per position) on slice order[k] with adapters 0..k-1 active and frozen,
so adapter k depends only on slices order[0..k] (parameter isolation). Deleting ids in slice j
truncates every sequence of that shard before j's position: the adapters at and after it are
deactivated and dropped, with no training; the shard serves its longest surviving prefix. Only
when no sequence of a shard keeps a non-empty prefix is the shard retrained (all sequences).

Deletion rate: the expected number of deletion requests served before any retraining;
`simulate_deletion_rate` estimates it like the paper (uniformly random deleted points).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset
from tqdm import tqdm

from unlearnx.exact.data import Arrays
from unlearnx.exact.io import CheckpointStore, crash_point
from unlearnx.exact.models import S3TNet, TrainFn, derive_seed, init_model


def cyclic_orders(slices: int, sequences: int) -> list[list[int]]:
    """B cyclic rotations of (0..R-1): order_b[k] = (b + k) mod R, for b < B <= R."""
    if not 1 <= sequences <= slices:
        raise ValueError(f"sequences must be in [1, slices={slices}], got {sequences}")
    return [[(b + k) % slices for k in range(slices)] for b in range(sequences)]


def truncate_prefixes(orders: list[list[int]], prefixes: list[int], hit: set[int] | list[int]) -> list[int]:
    """New prefix length of each sequence after a deletion that hit slices `hit`:
    p_b' = min(p_b, min_{j in hit} position of j in order_b)."""
    out = []
    for order, p in zip(orders, prefixes, strict=True):
        cut = min((order.index(j) for j in hit), default=p)
        out.append(min(p, cut))
    return out


def simulate_deletion_rate(*, shards: int = 5, slices: int = 6, orders: list[list[int]] | None = None,
                           trials: int = 100, seed: int = 0) -> np.ndarray:
    """Requests served before the first retraining, per trial.

    Each request deletes one uniformly random training point (equal-size slices, so a uniform
    (shard, slice)); a shard must retrain when all its sequences have an empty prefix. `orders`
    defaults to all R cyclic rotations; SISA serving its checkpoint prefix is orders=[[0..R-1]].
    Returns an int array [trials].
    """
    orders = cyclic_orders(slices, slices) if orders is None else orders
    rng = np.random.default_rng(seed)
    served = np.zeros(trials, dtype=np.int64)
    for t in range(trials):
        prefixes = [[slices] * len(orders) for _ in range(shards)]
        n = 0
        while True:
            s, j = int(rng.integers(shards)), int(rng.integers(slices))
            prefixes[s] = truncate_prefixes(orders, prefixes[s], [j])
            if max(prefixes[s]) == 0:
                break
            n += 1
        served[t] = n
    return served


class S3T:
    """The S3T method over a checkpoint store (model: `S3TNet`, built from a spec dict with
    in_features, hidden, classes; LoRA rank and alpha)."""

    method = "s3t"

    def __init__(self, *, seed: int, slices: int, sequences: int, spec: dict, train_fn: TrainFn,
                 store: CheckpointStore, rank: int = 8, alpha: float = 16.0,
                 device: str | torch.device = "cpu", progress: bool = False):
        self.seed, self.slices = int(seed), int(slices)
        self.orders = cyclic_orders(slices, sequences)
        self.spec, self.rank, self.alpha = dict(spec), int(rank), float(alpha)
        self.train_fn, self.store = train_fn, store
        self.device = torch.device(device)
        self.progress = progress
        self._base: dict[str, torch.Tensor] | None = None

    def _net(self) -> S3TNet:
        return init_model(
            lambda: S3TNet(self.spec["in_features"], self.spec["hidden"], self.spec["classes"],
                           positions=self.slices, rank=self.rank, alpha=self.alpha),
            derive_seed(self.seed, "s3t-base"),
        ).to(self.device)

    # -- backbone -------------------------------------------------------------------------------
    def pretrain_backbone(self, public: Arrays | None, train_fn: TrainFn | None) -> dict:
        """Train the base weights on public (never deletable) rows, then freeze them; with no
        public data the base stays at its seeded random init (random features). Returns the
        checkpoint entry; its metadata lists the public ids it saw."""
        net = self._net()
        seen: list[int] = []
        if public is not None and len(public) and train_fn is not None:
            net.set_trainable(base=True, adapter=None)
            x, y = public.tensors(self.device)
            train_fn(net, TensorDataset(x, y), torch.Generator().manual_seed(derive_seed(self.seed, "s3t-pretrain")))
            seen = public.ids.tolist()
        meta = {"role": "s3t-backbone", "trained_on": [], "public_ids": seen}
        return self.store.save(net.base_state(), meta, prefix="s3t-backbone")

    def set_backbone(self, entry: dict) -> None:
        self._base, _ = self.store.load(entry)

    def _net_with_base(self) -> S3TNet:
        if self._base is None:
            raise RuntimeError("S3T backbone not loaded: call set_backbone(entry) first")
        net = self._net()
        net.load_state_dict(self._base, strict=False)
        return net

    # -- training -------------------------------------------------------------------------------
    def train_sequence(self, shard: int, b: int, slices: list[list[int]], data: Arrays) -> list[dict]:
        """Train all R positions of sequence b of shard `shard`; returns the adapter entries."""
        order = self.orders[b]
        net = self._net_with_base()
        out = []
        for k, j in enumerate(order):
            g = torch.Generator().manual_seed(derive_seed(self.seed, "s3t-adapter", shard, b, k))
            for layer in net.lora_layers():
                layer.reset_adapter(k, g)
            net.set_trainable(base=False, adapter=k)
            net.set_prefix(k + 1)
            x, y = data.select(slices[j]).tensors(self.device)
            self.train_fn(net, TensorDataset(x, y), g)
            influence = sorted(i for jj in order[: k + 1] for i in slices[jj])
            meta = {"role": "s3t-adapter", "shard": shard, "sequence": b, "position": k, "slice": j,
                    "trained_on": influence}
            entry = self.store.save(net.adapter_state(k), meta, prefix=f"s3t-s{shard}-b{b}-p{k}")
            crash_point("after_checkpoint_write")
            out.append({"position": k, "slice": j, **entry})
        return out

    def train_shard(self, shard: int, slices: list[list[int]], data: Arrays) -> dict:
        seqs = []
        for b in tqdm(range(len(self.orders)), desc=f"s3t shard {shard}", disable=not self.progress, leave=False):
            seqs.append({"order": self.orders[b], "adapters": self.train_sequence(shard, b, slices, data)})
        return {"sequences": seqs}

    def forget(self, shard: int, entry: dict, slices: list[list[int]], hit: list[int], data: Arrays) -> tuple[dict, dict]:
        """Truncate every sequence of the shard at the first hit slice; retrain the shard only if
        no sequence keeps a non-empty prefix."""
        old = [len(s["adapters"]) for s in entry["sequences"]]
        new = truncate_prefixes([s["order"] for s in entry["sequences"]], old, hit)
        deactivated = [
            {"sequence": b, "position": k, "slice": s["order"][k]}
            for b, s in enumerate(entry["sequences"]) for k in range(new[b], old[b])
        ]
        effect = {"shard": shard, "slices_hit": hit, "adapters_deactivated": deactivated,
                  "prefixes": new, "retrained": False}
        if max(new) == 0:
            effect["retrained"] = True
            part = self.train_shard(shard, slices, data)
            effect["prefixes"] = [len(s["adapters"]) for s in part["sequences"]]
            return part, effect
        seqs = [{"order": s["order"], "adapters": s["adapters"][: new[b]]} for b, s in enumerate(entry["sequences"])]
        return {"sequences": seqs}, effect

    def served_sequence(self, entry: dict) -> int:
        """Index of the longest surviving prefix (lowest index on ties)."""
        lengths = [len(s["adapters"]) for s in entry["sequences"]]
        return int(np.argmax(lengths))

    def shard_model(self, shard: int, entry: dict) -> nn.Module:
        seq = entry["sequences"][self.served_sequence(entry)]
        net = self._net_with_base()
        for a in seq["adapters"]:
            tensors, _ = self.store.load(a)
            net.load_adapter(a["position"], tensors)
        net.set_prefix(len(seq["adapters"]))
        return net.eval()

    @staticmethod
    def files(entry: dict) -> list[dict]:
        return [{"path": a["path"], "sha256": a["sha256"], "role": "s3t-adapter"}
                for s in entry["sequences"] for a in s["adapters"]]
