"""SISA: Sharded, Isolated, Sliced, Aggregated training (Bourtoule et al., "Machine Unlearning",
IEEE S&P 2021).

S disjoint shards, one model per shard; each shard's data is cut into R disjoint slices and the
shard model is trained slice by slice: step r trains on D_{s,0} u ... u D_{s,r} starting from the
checkpoint of step r-1, and a checkpoint is saved after every step. Deleting ids in slice r0 of
shard s reloads checkpoint r0-1 (a fresh init for r0 = 0) and retrains steps r0..R-1 on the data
without those ids; other shards and checkpoints 0..r0-1 are untouched. With equal cost per step,
the expected speed-up of one request over retraining everything is S * 2R / (R + 1).

Exactness: step r is a deterministic function of (root seed, shard, r, the ids of slices 0..r):
the init seed is derive_seed(seed, "sisa-init", s), the data are the rows in sorted-id order and
the train_fn's generator is seeded with derive_seed(seed, "sisa-slice", s, r); optimizers do not
carry state across steps. So retraining after a deletion yields bit for bit (on CPU) the model a
from-scratch training on the remaining data would.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset
from tqdm import tqdm

from unlearnx.exact.data import Arrays
from unlearnx.exact.io import CheckpointStore, crash_point
from unlearnx.exact.models import TrainFn, derive_seed, init_model


class SISA:
    """The SISA method over a checkpoint store.

    model_fn: () -> nn.Module, any classifier mapping x [N, F] to logits [N, C].
    train_fn: see `unlearnx.exact.models.TrainFn`.
    """

    method = "sisa"

    def __init__(self, *, seed: int, slices: int, model_fn: Callable[[], nn.Module], train_fn: TrainFn,
                 store: CheckpointStore, device: str | torch.device = "cpu", progress: bool = False):
        if slices < 1:
            raise ValueError(f"slices must be >= 1, got {slices}")
        if not callable(model_fn) or not callable(train_fn):
            raise TypeError("model_fn and train_fn must be callables")
        self.seed, self.slices = int(seed), int(slices)
        self.model_fn, self.train_fn, self.store = model_fn, train_fn, store
        self.device = torch.device(device)
        self.progress = progress

    def fresh_model(self, shard: int) -> nn.Module:
        return init_model(self.model_fn, derive_seed(self.seed, "sisa-init", shard)).to(self.device)

    def train_steps(self, shard: int, model: nn.Module, slices: list[list[int]], data: Arrays, *,
                    start: int = 0, on_step: Callable[[int, nn.Module, list[int]], None] | None = None) -> nn.Module:
        """Run steps start..R-1 of shard `shard` on `model` in place (model holds step start-1).

        slices: R lists of ids; data: rows containing at least those ids. `on_step(r, model,
        cumulative_ids)` is called after each step (the store saves a checkpoint there).
        """
        if len(slices) != self.slices:
            raise ValueError(f"slices must hold {self.slices} lists, got {len(slices)}")
        cumulative = sorted(i for sl in slices[:start] for i in sl)
        for r in tqdm(range(start, self.slices), desc=f"sisa shard {shard}", disable=not self.progress, leave=False):
            cumulative = sorted(cumulative + list(slices[r]))
            x, y = data.select(cumulative).tensors(self.device)
            g = torch.Generator().manual_seed(derive_seed(self.seed, "sisa-slice", shard, r))
            self.train_fn(model, TensorDataset(x, y), g)
            if on_step is not None:
                on_step(r, model, cumulative)
        return model

    def _save(self, shard: int, r: int, model: nn.Module, cumulative: list[int]) -> dict:
        meta = {"role": "sisa-slice", "shard": shard, "slice": r, "trained_on": cumulative}
        entry = self.store.save(model.state_dict(), meta, prefix=f"sisa-s{shard}-r{r}")
        crash_point("after_checkpoint_write")
        return {"slice": r, **entry}

    def train_shard(self, shard: int, slices: list[list[int]], data: Arrays) -> dict:
        """Train shard `shard` from scratch; returns {"checkpoints": [R entries]}."""
        ckpts: list[dict] = []
        self.train_steps(shard, self.fresh_model(shard), slices, data,
                         on_step=lambda r, m, c: ckpts.append(self._save(shard, r, m, c)))
        return {"checkpoints": ckpts}

    def forget(self, shard: int, entry: dict, slices: list[list[int]], hit: list[int], data: Arrays) -> tuple[dict, dict]:
        """Apply a deletion to one shard: `slices` are the shard's slices without the deleted ids,
        `hit` the (sorted) slices that contained them. Returns the new method part of the shard
        entry and the effect recorded in the ledger."""
        r0 = hit[0]
        model = self.fresh_model(shard)
        if r0 > 0:
            tensors, _ = self.store.load(entry["checkpoints"][r0 - 1])
            model.load_state_dict(tensors)
        ckpts = list(entry["checkpoints"][:r0])
        self.train_steps(shard, model, slices, data, start=r0,
                         on_step=lambda r, m, c: ckpts.append(self._save(shard, r, m, c)))
        effect = {"shard": shard, "slices_hit": hit, "retrained": True, "retrained_from_slice": r0,
                  "checkpoints_replaced": [c["slice"] for c in ckpts[r0:]]}
        return {"checkpoints": ckpts}, effect

    def shard_model(self, shard: int, entry: dict) -> nn.Module:
        """The served model of a shard: the checkpoint after its last slice."""
        model = self.fresh_model(shard)
        tensors, _ = self.store.load(entry["checkpoints"][-1])
        model.load_state_dict(tensors)
        return model.eval()

    @staticmethod
    def files(entry: dict) -> list[dict]:
        return [{"path": c["path"], "sha256": c["sha256"], "role": "sisa-slice"} for c in entry["checkpoints"]]
