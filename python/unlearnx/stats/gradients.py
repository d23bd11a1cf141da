"""Gradient statistics over a model and a data stream: diagonal Fisher, saliency, per-sample norms.

All three take ``data``, any iterable of batches (a DataLoader, a list of dicts for transformers
models), and ``loss_fn(model, batch) -> Tensor[B]`` of per-sample losses (default:
unlearnx.stats.losses.default_loss_fn). The model runs in eval mode (restored afterwards);
tensors in a batch are moved to the device of the model's first parameter. Memory stays O(P)
plus one batch of activations whatever the number of batches; no per-sample gradient is stored
for the supported layer types (see unlearnx.stats._capture), and other parameters take a
correct batch-of-one fallback.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
import torch.nn as nn
from tqdm import tqdm

from unlearnx._modes import training_mode
from unlearnx.distributed.context import current as current_context
from unlearnx.distributed.reduce import all_reduce_floats, all_reduce_stats_, owned_items
from unlearnx.stats._capture import NORM, SQ, Demote, PerSampleCapture, _check_loss
from unlearnx.stats.losses import batch_size, default_loss_fn, move_to

__all__ = ["fisher_diagonal", "grad_saliency", "per_sample_grad_norms"]

LossFn = Callable[[nn.Module, object], torch.Tensor]
_MODES = ("per_sample", "per_batch")


def _check_common(model, data, loss_fn) -> LossFn:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(f"data must be an iterable of batches (e.g. a DataLoader or a list), got {type(data).__name__}")
    if loss_fn is None:
        return default_loss_fn
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model, batch) -> Tensor[B], got {type(loss_fn).__name__}")
    return loss_fn


def _select_params(model: nn.Module, params) -> dict[str, nn.Parameter]:
    named = dict(model.named_parameters())
    if params is None:
        chosen = {n: p for n, p in named.items() if p.requires_grad}
        if not chosen:
            raise ValueError("model has no parameter with requires_grad=True; pass params=[names]")
        return chosen
    if isinstance(params, (str, torch.Tensor)) or not isinstance(params, Iterable):
        raise TypeError("params must be an iterable of parameter names or nn.Parameter objects of the model")
    by_id = {id(p): n for n, p in named.items()}
    chosen = {}
    for i, item in enumerate(params):
        if isinstance(item, str):
            if item not in named:
                raise ValueError(f"params[{i}] = {item!r} is not a parameter of the model")
            chosen[item] = named[item]
        elif isinstance(item, torch.Tensor):
            if id(item) not in by_id:
                raise ValueError(f"params[{i}] is a tensor that is not a parameter of the model")
            chosen[by_id[id(item)]] = item
        else:
            raise TypeError(f"params[{i}] must be a parameter name or an nn.Parameter, got {type(item).__name__}")
    if not chosen:
        raise ValueError("params is empty")
    return chosen


@contextmanager
def _stats_mode(model: nn.Module, wanted: dict[str, nn.Parameter]):
    """Eval mode and requires_grad on the wanted parameters, both restored on exit."""
    flags = {n: p.requires_grad for n, p in wanted.items()}
    try:
        for p in wanted.values():
            p.requires_grad_(True)
        with training_mode(model), torch.enable_grad():
            yield
    finally:
        for n, p in wanted.items():
            p.requires_grad_(flags[n])


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _batches(data, progress: bool, desc: str):
    total = len(data) if hasattr(data, "__len__") else None
    return tqdm(data, total=total, desc=desc, disable=not progress, leave=False)


def _reduce_count(acc, count: int, ctx) -> int:
    """Sum the accumulators and the batch/sample count over ranks; raise (on every rank) if empty."""
    if ctx.world_size > 1:
        all_reduce_stats_(acc, ctx)
        count = int(all_reduce_floats([count], ctx)[0])
    if count == 0:
        raise ValueError("data yielded no batches")
    return count


def _zeros_like_params(wanted):
    return {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in wanted.items()}


def _per_batch_gradients(model, data, loss_fn, wanted, progress, desc):
    """Yields, per batch, the gradients of the batch-MEAN loss w.r.t. the wanted parameters."""
    device = _device(model)
    names, plist = list(wanted), list(wanted.values())
    for batch in _batches(data, progress, desc):
        batch = move_to(batch, device)
        B = batch_size(batch)
        if B is None:
            raise ValueError("a batch holds no tensor with a batch dimension")
        loss = loss_fn(model, batch)
        _check_loss(loss, B)
        grads = torch.autograd.grad(loss.mean(), plist, allow_unused=True)
        yield names, grads


def _per_sample_pass(model, data, loss_fn, wanted, mode, progress, desc, acc=None, allow_empty=False):
    """Runs the hooked pass; returns (number of samples, list of per-batch squared-norm tensors)."""
    device = _device(model)
    capture = PerSampleCapture(model, wanted, mode, acc if acc is not None else {})
    n, norms_out = 0, []
    try:
        for batch in _batches(data, progress, desc):
            batch = move_to(batch, device)
            B = batch_size(batch)
            if B is None:
                raise ValueError("a batch holds no tensor with a batch dimension")
            norms = torch.zeros(B, dtype=torch.float32, device=device) if mode == NORM else None
            while True:
                try:
                    capture.run_batch(batch, B, loss_fn, norms)
                    break
                except Demote as e:
                    # Nothing of this batch was accumulated yet (hooks raise during the forward):
                    # move the module's parameters to the fallback and redo the batch.
                    capture.demote(e.layer)
            n += B
            if norms is not None:
                norms_out.append(norms)
    finally:
        capture.remove()
    if n == 0 and not allow_empty:
        raise ValueError("data yielded no batches")
    return n, norms_out


def fisher_diagonal(
    model: nn.Module,
    data: Iterable,
    loss_fn: LossFn | None = None,
    *,
    mode: str = "per_sample",
    params: Iterable | None = None,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher information (importance) of the model's parameters over a data set.

    Args:
        model: any nn.Module (run in eval mode; its training flag is restored).
        data: iterable of batches; each batch goes to ``loss_fn(model, batch)``.
        loss_fn: ``loss_fn(model, batch) -> Tensor[B]``, per-sample losses; default: cross-entropy
            for ``(x, y)`` batches, per-sample mean token NLL for causal-LM dicts with ``labels``.
        mode: ``"per_sample"``: the empirical Fisher F = (1/N) sum_i (grad_theta l_i)^2 over the N
            samples, exact, without storing per-sample gradients. ``"per_batch"``: SSD's
            importance (Foster et al., AAAI 2024), I = (1/M) sum_m (grad_theta mean_{i in m} l_i)^2
            over the M minibatches, exactly as the SSD reference code computes it.
        params: parameter names or Parameters to compute (default: all with requires_grad).
        progress: show a progress bar.

    Under torchrun (unlearnx.distributed) every rank must call it with the same `data`; each rank
    takes every world_size-th batch and the sums are all-reduced, so every rank returns the
    one-process result (up to fp32 summation order).

    Returns:
        dict name -> fp32 tensor shaped like the parameter, on its device.
    """
    loss_fn = _check_common(model, data, loss_fn)
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")
    wanted = _select_params(model, params)
    acc = _zeros_like_params(wanted)
    ctx = current_context()
    data = owned_items(data, ctx)
    with _stats_mode(model, wanted):
        if mode == "per_batch":
            m = 0
            for names, grads in _per_batch_gradients(model, data, loss_fn, wanted, progress, "fisher (per batch)"):
                for name, g in zip(names, grads):
                    if g is not None:
                        g = g.float()
                        acc[name].addcmul_(g, g)
                m += 1
            count = m
        else:
            count, _ = _per_sample_pass(model, data, loss_fn, wanted, SQ, progress, "fisher (per sample)", acc,
                                        allow_empty=True)
    count = _reduce_count(acc, count, ctx)
    for t in acc.values():
        t.div_(count)
    return acc


def grad_saliency(
    model: nn.Module,
    data: Iterable,
    loss_fn: LossFn | None = None,
    *,
    params: Iterable | None = None,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """SalUn's weight saliency: |sum over batches of grad_theta (mean loss of the batch)|.

    Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency", ICLR
    2024: gradients of the forget loss at the original model (eval mode), summed over the
    forget loader's minibatches, then the absolute value. The sign of the loss (SalUn uses -CE)
    does not matter after the absolute value.

    Under torchrun: batches are shared out and the signed sums all-reduced before the absolute
    value, as in `fisher_diagonal`.

    Returns:
        dict name -> fp32 tensor shaped like the parameter.
    """
    loss_fn = _check_common(model, data, loss_fn)
    wanted = _select_params(model, params)
    acc = _zeros_like_params(wanted)
    ctx = current_context()
    data = owned_items(data, ctx)
    with _stats_mode(model, wanted):
        m = 0
        for names, grads in _per_batch_gradients(model, data, loss_fn, wanted, progress, "saliency"):
            for name, g in zip(names, grads):
                if g is not None:
                    acc[name].add_(g.float())
            m += 1
    _reduce_count(acc, m, ctx)
    for t in acc.values():
        t.abs_()
    return acc


def per_sample_grad_norms(
    model: nn.Module,
    data: Iterable,
    loss_fn: LossFn | None = None,
    *,
    params: Iterable | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """L2 norm of each sample's loss gradient: ||grad_theta l_i||_2 over the chosen parameters.

    Returns:
        fp32 tensor [N], in data order, on the model's device. Computed without per-sample
        gradients in memory for the supported layers (Gram form for Linear layers when
        2 T^2 < d_in d_out).
    """
    loss_fn = _check_common(model, data, loss_fn)
    wanted = _select_params(model, params)
    with _stats_mode(model, wanted):
        _, norms = _per_sample_pass(model, data, loss_fn, wanted, NORM, progress, "per-sample grad norms")
    return torch.cat(norms).sqrt_()
