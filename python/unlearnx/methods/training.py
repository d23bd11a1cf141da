"""The shared training loop of the classifier/regressor methods, and the data/optimizer helpers.

`train_classifier` trains the ORIGINAL model and is what Retrain re-runs on D_r; FT, ℓ1-sparse,
GA, RL and the distillation methods use the same engine (`fit`) with their own losses.

Learning-rate schedule (documented choice): `train_classifier` defaults to cosine annealing over
all steps (a common from-scratch recipe for small models); the unlearning methods use a constant
learning rate, as the SalUn / Unlearn-Sparse reference code effectively does for its 10-epoch
runs (its MultiStepLR milestones lie beyond the last unlearning epoch).
"""
from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm import trange

from unlearnx._modes import training_mode
from unlearnx.data.datasets import check_dataset
from unlearnx.distributed.context import current as current_context
from unlearnx.distributed.reduce import all_reduce_floats, all_reduce_gradients_, broadcast_parameters_
from unlearnx.distributed.sharding import rank_parts, side_rows
from unlearnx.distributed.wrap import gradient_scale, reduces_gradients

__all__ = [
    "LossFn",
    "as_loader",
    "dataset_of",
    "union_loader",
    "method_loaders",
    "make_optimizer",
    "seeded",
    "reinitialize",
    "fit",
    "train_classifier",
    "LOSSES",
    "FlaggedDataset",
    "model_device",
]

# loss_fn(model, x, y, epoch) -> scalar; `epoch` lets a loss change over time (ℓ1-sparse's γ_t).
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


def _cross_entropy(model, x, y, epoch):
    return F.cross_entropy(model(x), y)


def _l1(model, x, y, epoch):
    return F.l1_loss(model(x), y)


def _mse(model, x, y, epoch):
    return F.mse_loss(model(x), y)


LOSSES: dict[str, LossFn] = {"cross_entropy": _cross_entropy, "l1": _l1, "mse": _mse}


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None):
    """Run the block with torch's global RNG seeded to `seed`, restoring the caller's RNG state after."""
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def dataset_of(data, name: str) -> Dataset:
    """The map-style Dataset behind `data` (a Dataset, or a DataLoader's `.dataset`)."""
    ds = data.dataset if isinstance(data, DataLoader) else data
    check_dataset(ds, name)
    return ds


def as_loader(data, *, batch_size: int, seed: int, name: str, shuffle: bool = True) -> DataLoader:
    """`data` itself when it is a DataLoader; else a DataLoader over the Dataset with seeded shuffling.

    The generator is seeded once, so every epoch sees a new order and the sequence of orders is
    fixed by `seed` (deterministic on CPU).
    """
    if isinstance(data, DataLoader):
        return data
    check_dataset(data, name)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))


def union_loader(forget, retain, *, batch_size: int, seed: int, shuffle: bool = True) -> DataLoader:
    """A DataLoader over D = D_f ∪ D_r (the Datasets behind `forget` and `retain`, concatenated in that
    order), seeded shuffling as `as_loader`: the full training set for SSD's importance and OMP's retrain."""
    union = ConcatDataset([dataset_of(forget, "forget"), dataset_of(retain, "retain")])
    return DataLoader(union, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))


def method_loaders(hparams, forget, retain, *, seed: int) -> dict[str, DataLoader | None]:
    """{"forget": ..., "retain": ...} loaders for a method with hyper-parameters `hparams`: each
    Dataset gets `as_loader` with the method's `batch_size` (default 64; forget: `forget_batch_size`
    when the method has one); DataLoaders and None pass through."""
    batch = hparams.get("batch_size", 64)
    sizes = {"forget": hparams.get("forget_batch_size", batch), "retain": batch}
    return {name: None if d is None else as_loader(d, batch_size=sizes[name], seed=seed, name=name)
            for name, d in (("forget", forget), ("retain", retain))}


def make_optimizer(params: Iterable[nn.Parameter], name: str, *, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """"sgd": SGD(lr, momentum, weight_decay); "adam": Adam(lr, weight_decay) with default betas."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every parameter of `model` in place with torch's global RNG seeded to `seed`.

    Calls `reset_parameters()` on every module that owns parameters, in `model.modules()` order,
    which for models built in the order their modules are registered (every builder of
    unlearnx.models, any nn.Sequential) consumes the RNG exactly as building a fresh model after
    `torch.manual_seed(seed)` does: the result equals a freshly built model. Buffers such as
    BatchNorm running statistics are reset by the same call.
    """
    missing = [n or type(model).__name__ for n, m in model.named_modules()
               if any(True for _ in m.parameters(recurse=False)) and not callable(getattr(m, "reset_parameters", None))]
    if missing:
        raise ValueError(f"cannot re-initialise modules without reset_parameters(): {missing}; "
                         "build a fresh model yourself and train it with train_classifier")
    with seeded(seed, model_device(model)):
        for m in model.modules():
            if any(True for _ in m.parameters(recurse=False)):
                m.reset_parameters()
    return model


class FlaggedDataset(Dataset):
    """View of `base` whose items carry a constant membership flag (1.0 = forget, 0.0 = retain).

    keep_target=False: items `(x, flag)`, flag a float scalar tensor. keep_target=True: items
    `(x, cat(y.flatten().float(), [flag]))` — a float vector `[len(y) + 1]` whose last entry is the flag.
    """

    def __init__(self, base: Dataset, flag: float, *, keep_target: bool = False):
        check_dataset(base, "base")
        self.base, self.flag, self.keep_target = base, torch.tensor([float(flag)]), keep_target

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i][0], self.base[i][1]
        if self.keep_target:
            return x, torch.cat([torch.as_tensor(y, dtype=torch.float32).reshape(-1), self.flag])
        return x, self.flag[0]


def _batch_xy(batch, device):
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError("data must yield (x, y) pairs")
    return batch[0].to(device), batch[1].to(device)


def fit(
    model: nn.Module,
    passes: Callable[[int], Sequence[tuple[str, DataLoader, LossFn]]],
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    scheduler=None,
    grad_hook: Callable[[nn.Module], None] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> dict[str, list[float]]:
    """The one training engine: for each epoch, for each `(name, loader, loss_fn)` in `passes(epoch)`,
    one pass over `loader` minimising `loss_fn(model, x, y, epoch)` with `optimizer`.

    Per step: zero grads, backward, `grad_hook(model)` (e.g. gradient masking), optimizer step,
    `scheduler.step()` (per step, when given). The model is in train mode during the passes
    (as the reference code of every method here) and its mode is restored afterwards.
    Returns {"<name>_loss": [sample-weighted mean loss per epoch]}. A non-finite loss raises
    FloatingPointError (the learning rate is too high for this model/data).
    """
    device = model_device(model)
    log: dict[str, list[float]] = defaultdict(list)
    ctx = current_context()
    if ctx.sharded:
        broadcast_parameters_(model, ctx)
    with training_mode(model, train=True):
        bar = trange(epochs, desc=desc, disable=not progress or not ctx.is_main, leave=False)
        for epoch in bar:
            for name, loader, loss_fn in passes(epoch):
                total, count = 0.0, 0
                for batch in loader:
                    if ctx.sharded:
                        value, rows = _sharded_backward(model, batch, loss_fn, epoch, optimizer, ctx, device)
                    else:
                        x, y = _batch_xy(batch, device)
                        loss = loss_fn(model, x, y, epoch)
                        if not torch.isfinite(loss):
                            raise FloatingPointError(
                                f"{desc}: the {name} loss became {loss.item()} at epoch {epoch}; lower lr")
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        value, rows = loss.item(), len(x)
                    if not math.isfinite(value):
                        raise FloatingPointError(f"{desc}: the {name} loss became {value} at epoch {epoch}; lower lr")
                    if grad_hook is not None:
                        grad_hook(model)
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                    total += value * rows
                    count += rows
                log[f"{name}_loss"].append(total / max(count, 1))
                bar.set_postfix({f"{name}_loss": f"{log[f'{name}_loss'][-1]:.4f}"})
    return dict(log)


def _sharded_backward(model, batch, loss_fn, epoch, optimizer, ctx, device) -> tuple[float, int]:
    """The gradient of the global batch's mean loss, summed over this rank's micro-batches and all ranks.

    Each part's loss (a mean over its rows) is scaled by rows(part) / rows(global batch), so the
    parts sum to the one-process loss; terms that do not depend on the data (penalties) are scaled
    by weights summing to 1, hence also counted once. Returns (global loss, rows of the global batch).
    """
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError("data must yield (x, y) pairs")
    rows = side_rows(batch)
    optimizer.zero_grad(set_to_none=True)
    local = 0.0
    scale = gradient_scale(model, ctx)  # DDP/FSDP2 average in backward: undo it
    # A DDP/FSDP2 model communicates in every forward/backward: all ranks run as many parts.
    for part, real in rank_parts(batch, ctx, equal_counts=scale != 1.0):
        x, y = _batch_xy(part, device)
        loss = loss_fn(model, x, y, epoch) * (real * len(x) / rows)
        (loss * scale if scale != 1.0 else loss).backward()
        local += loss.item()
    if not reduces_gradients(model):
        all_reduce_gradients_([p for g in optimizer.param_groups for p in g["params"]], ctx)
    return all_reduce_floats([local], ctx)[0], rows


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int):
    """lr_t = lr · ½(1 + cos(π t / T)), stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, total_steps) / total_steps)))


def train_classifier(
    model: nn.Module,
    data,
    *,
    epochs: int,
    lr: float,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 64,
    schedule: str = "cosine",
    loss: str = "cross_entropy",
    seed: int = 0,
    progress: bool = True,
    loss_fn: LossFn | None = None,
    grad_hook: Callable[[nn.Module], None] | None = None,
) -> dict[str, list[float]]:
    """Train `model` in place on `data` (Dataset or DataLoader of (x, y)); the recipe of the original
    model and of Retrain.

    Minimises mean CE(f(x), y) (or `loss` "l1"/"mse" for regression, or a custom
    `loss_fn(model, x, y, epoch)`) with `optimizer` ("sgd" with momentum, or "adam"),
    `weight_decay`, `schedule` "cosine" (per-step cosine annealing to 0) or "constant".
    Shuffling and any randomness in the model (dropout) are seeded by `seed`.
    Returns {"train_loss": [mean loss per epoch]}.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for key, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    for key, value, low in (("lr", lr, 0.0), ("momentum", momentum, None), ("weight_decay", weight_decay, None)):
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not ok or (value <= 0 if low is not None else value < 0):
            raise ValueError(f"{key} must be a finite number {'> 0' if low is not None else '>= 0'}, got {value!r}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    if loss_fn is None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        loss_fn = LOSSES[loss]
    loader = as_loader(data, batch_size=batch_size, seed=seed, name="data")
    opt = make_optimizer(model.parameters(), optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = cosine_schedule(opt, epochs * len(loader)) if schedule == "cosine" else None
    with seeded(seed, model_device(model)):
        return fit(model, lambda epoch: [("train", loader, loss_fn)], epochs=epochs, optimizer=opt,
                   scheduler=sched, grad_hook=grad_hook, progress=progress, desc="train")
