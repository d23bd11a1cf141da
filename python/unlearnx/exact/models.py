"""Models and the default training recipe for exact unlearning.

Everything here is a deterministic function of its seed: a per-(shard, slice) seed derived from one
root seed drives weight initialisation and data order, which is what makes "retrain from the
checkpoint" bit-identical to "train from scratch without the deleted ids".
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset


def derive_seed(root: int, *parts) -> int:
    """A 63-bit seed from the root seed and a path of labels, e.g. (root, "sisa-slice", 3, 2)."""
    text = "|".join(str(p) for p in (root, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


class TrainFn(Protocol):
    """`train_fn(model, dataset, generator) -> None`: train `model` in place on `dataset`
    (a TensorDataset (x [N, F], y [N]) in sorted-id order, possibly empty) using only `generator`
    for randomness. It must be deterministic given its arguments, and must not keep state between
    calls (each slice gets a fresh optimizer)."""

    def __call__(self, model: nn.Module, dataset: TensorDataset, generator: torch.Generator) -> None: ...


class MLP(nn.Module):
    """x [N, in_features] -> Linear -> ReLU -> Linear -> ReLU -> Linear -> logits [N, classes]."""

    def __init__(self, in_features: int, hidden: int, classes: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mlp_factory(spec: dict) -> Callable[[], nn.Module]:
    for k in ("in_features", "hidden", "classes"):
        if not isinstance(spec.get(k), int) or spec[k] < 1:
            raise ValueError(f"model spec needs a positive integer {k!r}, got {spec.get(k)!r}")
    return lambda: MLP(spec["in_features"], spec["hidden"], spec["classes"])


def init_model(model_fn: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build `model_fn()` with the global RNG seeded by `seed`, without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_fn()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_fn must return an nn.Module, got {type(model).__name__}")
    return model


@dataclass(frozen=True)
class SGDTrainer:
    """The default train_fn: `steps` minibatch SGD steps (momentum, fresh optimizer per call) on
    cross-entropy, batches drawn from seeded permutations of the dataset.

    A fixed step count per call makes every slice cost the same, so retraining from slice r costs
    (R - r)/R of a shard (the cost model behind SISA's speed-up S*2R/(R+1)).
    """

    steps: int
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"SGDTrainer needs steps >= 0, batch_size >= 1, lr > 0; got {self}")

    def __call__(self, model: nn.Module, dataset: TensorDataset, generator: torch.Generator) -> None:
        x, y = dataset.tensors
        n = len(y)
        params = [p for p in model.parameters() if p.requires_grad]
        if n == 0 or self.steps == 0 or not params:
            return
        opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        model.train()
        perm, pos = torch.randperm(n, generator=generator), 0
        for _ in range(self.steps):
            if pos >= n:
                perm, pos = torch.randperm(n, generator=generator), 0
            idx = perm[pos : pos + self.batch_size].to(x.device)
            pos += self.batch_size
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def steps_for(*, epochs: float, rows: int, batch_size: int) -> int:
    """SGD steps for `epochs` passes over `rows` rows: ceil(epochs * rows / batch_size), >= 1."""
    return max(1, math.ceil(epochs * rows / batch_size))


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus `n_adapters` low-rank adapters, each switched on by a mask.

        y = x W^T + b + sum_{k active} (alpha / rank) * (x A_k^T) B_k^T
        x [N, in], W [out, in], A_k [rank, in], B_k [out, rank]

    (Hu et al., 2021, LoRA.) B_k starts at zero, so a fresh adapter leaves the output unchanged.
    S3T gives each slice position of a sequence its own adapter (parameter isolation).
    """

    def __init__(self, base: nn.Linear, *, n_adapters: int, rank: int = 8, alpha: float = 16.0):
        super().__init__()
        if n_adapters < 1 or rank < 1:
            raise ValueError(f"n_adapters and rank must be >= 1, got {n_adapters} and {rank}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.scale = alpha / rank
        self.A = nn.ParameterList(
            [nn.Parameter(torch.zeros(rank, base.in_features), requires_grad=False) for _ in range(n_adapters)]
        )
        self.B = nn.ParameterList(
            [nn.Parameter(torch.zeros(base.out_features, rank), requires_grad=False) for _ in range(n_adapters)]
        )
        self.register_buffer("active", torch.zeros(n_adapters, dtype=torch.bool))

    def reset_adapter(self, k: int, generator: torch.Generator) -> None:
        """A_k ~ U(-1/sqrt(in), 1/sqrt(in)) from `generator`, B_k = 0."""
        bound = 1.0 / math.sqrt(self.base.in_features)
        with torch.no_grad():
            a = torch.rand(self.A[k].shape, generator=generator) * (2 * bound) - bound
            self.A[k].copy_(a.to(self.A[k].device))
            self.B[k].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        for k in torch.nonzero(self.active).flatten().tolist():
            out = out + self.scale * ((x @ self.A[k].t()) @ self.B[k].t())
        return out


class S3TNet(nn.Module):
    """S3T's model: a frozen feature extractor and a two-layer head whose Linear layers carry one
    LoRA adapter per sequence position.

        x [N, in] -> Linear(in, h) -> ReLU  (frozen backbone)
          -> LoRALinear(h, h) -> ReLU -> LoRALinear(h, classes) -> logits [N, classes]
    """

    def __init__(self, in_features: int, hidden: int, classes: int, *, positions: int,
                 rank: int = 8, alpha: float = 16.0):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.head1 = LoRALinear(nn.Linear(hidden, hidden), n_adapters=positions, rank=rank, alpha=alpha)
        self.head2 = LoRALinear(nn.Linear(hidden, classes), n_adapters=positions, rank=rank, alpha=alpha)
        self.positions = positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head2(F.relu(self.head1(self.backbone(x))))

    def lora_layers(self) -> list[LoRALinear]:
        return [self.head1, self.head2]

    def base_state(self) -> dict[str, torch.Tensor]:
        """The frozen weights (backbone and head bases): what the public pre-training produces."""
        return {k: v for k, v in self.state_dict().items() if ".A." not in k and ".B." not in k and "active" not in k}

    def set_trainable(self, *, base: bool, adapter: int | None) -> None:
        """Freeze everything except the base weights (pre-training) or adapter `adapter`."""
        for name, p in self.named_parameters():
            is_adapter = ".A." in name or ".B." in name
            p.requires_grad_(base if not is_adapter else False)
        if adapter is not None:
            for layer in self.lora_layers():
                layer.A[adapter].requires_grad_(True)
                layer.B[adapter].requires_grad_(True)

    def set_prefix(self, length: int) -> None:
        """Activate adapters 0..length-1 (the served prefix of a sequence), deactivate the rest."""
        if not 0 <= length <= self.positions:
            raise ValueError(f"prefix length must be in [0, {self.positions}], got {length}")
        for layer in self.lora_layers():
            layer.active.zero_()
            layer.active[:length] = True

    def adapter_state(self, k: int) -> dict[str, torch.Tensor]:
        return {f"head{i + 1}.{m}": getattr(layer, m)[k].detach().clone()
                for i, layer in enumerate(self.lora_layers()) for m in ("A", "B")}

    def load_adapter(self, k: int, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for i, layer in enumerate(self.lora_layers()):
                for m in ("A", "B"):
                    getattr(layer, m)[k].copy_(tensors[f"head{i + 1}.{m}"])
