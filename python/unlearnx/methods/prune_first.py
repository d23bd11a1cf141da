"""OMP prune-first: magnitude-prune the model, retrain it sparse, then run any unlearning method on it.

Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023.
"""
from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Mapping

import torch
import torch.nn.functional as F
import torch.optim.optimizer as optim_hooks
from torch import nn

from unlearnx.methods import registry
from unlearnx.methods.masking import MaskedOptimizer, magnitude_prune, masks_by_param
from unlearnx.methods.registry import UnlearningMethod, register_method
from unlearnx.methods.training import dataset_of, fit, make_optimizer, method_loaders, union_loader
from unlearnx.ops.select import masked_restore_

__all__ = ["PruneFirst", "keep_pruned"]

_NOT_AFTER = frozenset({"prune_first", "retrain"})  # retrain re-initialises: no sparse model left


@contextlib.contextmanager
def keep_pruned(model: nn.Module, masks: Mapping[str, torch.Tensor]):
    """Within the block, every optimizer step of ANY optimizer over the model's masked parameters keeps
    the pruned entries (mask False) exactly 0: masked gradients are zeroed before the step, and after
    it the entries and their optimizer state (momentum, Adam moments) are reset to 0, through
    torch's global optimizer step hooks and `MaskedOptimizer(originals="zeros").restore`. Lets a
    method build its own optimizer and still run on the sparse model. On exit, the masked entries of
    the parameters the model then has under the masks' names are zeroed again (a method may replace
    a parameter object, e.g. Boundary expand's widened output layer).
    """
    by_param = masks_by_param(model, masks)
    ids = {id(p): (p, m) for p, m in by_param.items()}
    wrappers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def owned(opt):
        if opt not in wrappers:
            pairs = {ids[id(p)][0]: ids[id(p)][1] for g in opt.param_groups for p in g["params"] if id(p) in ids}
            wrappers[opt] = MaskedOptimizer(opt, pairs, originals="zeros", mask_grads=False) if pairs else None
        return wrappers[opt]

    def pre(opt, args, kwargs):
        wrapper = owned(opt)
        if wrapper is not None:
            with torch.no_grad():
                pairs = [(p.grad, m) for p, m in zip(wrapper._params, wrapper.masks) if p.grad is not None]
                if pairs:
                    masked_restore_([g for g, _ in pairs], [m for _, m in pairs])

    def post(opt, args, kwargs):
        wrapper = owned(opt)
        if wrapper is not None:
            wrapper.restore()

    handles = [optim_hooks.register_optimizer_step_pre_hook(pre), optim_hooks.register_optimizer_step_post_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        params = dict(model.named_parameters())
        with torch.no_grad():
            names = [n for n in masks if n in params and params[n].shape == masks[n].shape]
            masked_restore_([params[n].data for n in names], [masks[n] for n in names])


@register_method("prune_first")
class PruneFirst(UnlearningMethod):
    """OMP prune-first: (1) global unstructured magnitude pruning of the conv (and, with
    `include_linear`, linear) weights at `sparsity` (unlearnx.methods.masking.magnitude_prune);
    (2) `prune_epochs` of SGD on D = D_f ∪ D_r with the pruned weights kept exactly 0
    (`MaskedOptimizer(originals="zeros")`) — the sparse model the request is then served on;
    (3) the registered method `then` with `then_hparams`, pruned weights still exactly 0
    (`keep_pruned`). The result has exactly round(sparsity·N) zero weights among the N prunable ones.

    Defaults: sparsity 0.95 (the paper's OMP rate); conv + linear weights (the reference code prunes
    conv weights only: include_linear=False); then FT with its defaults. The paper rewinds the
    pruned model to early-training weights before retraining on D; no such checkpoint exists at
    unlearning time, so step (2) fine-tunes the pruned original (5 epochs, lr 0.01, momentum 0.9,
    wd 5e-4). Steps (1)-(2) are model preparation in the paper; log["prune_seconds"] times them so
    the unlearning time of step (3) alone is log["then_seconds"].
    """

    paper = "Jia et al., 'Model Sparsity Can Simplify Machine Unlearning', NeurIPS 2023 (OMP prune-first)"
    defaults = {"sparsity": 0.95, "include_linear": True, "prune_epochs": 5, "prune_lr": 0.01, "momentum": 0.9,
                "weight_decay": 5e-4, "batch_size": 64, "then": "ft", "then_hparams": {}}

    def validate(self):
        hp = self.hparams
        if not 0.0 <= hp["sparsity"] < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {hp['sparsity']!r}")
        if hp["prune_lr"] <= 0:
            raise ValueError(f"prune_lr must be > 0, got {hp['prune_lr']!r}")
        then = registry.get(hp["then"])
        if then.name in _NOT_AFTER:
            raise ValueError(f"then must be an unlearning method other than {sorted(_NOT_AFTER)}, got {hp['then']!r}")
        if not isinstance(hp["then_hparams"], Mapping):
            raise ValueError(f"then_hparams must be a mapping of {then.name}'s hyper-parameters, got {hp['then_hparams']!r}")
        self.then = then(**hp["then_hparams"])  # validates them with the method's own checks

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        start = time.perf_counter()
        types = (nn.Conv2d, nn.Linear) if hp["include_linear"] else (nn.Conv2d,)
        masks = magnitude_prune(model, hp["sparsity"], module_types=types)
        log = {}
        if hp["prune_epochs"] > 0:
            opt = MaskedOptimizer(make_optimizer(model.parameters(), "sgd", lr=hp["prune_lr"], momentum=hp["momentum"],
                                                 weight_decay=hp["weight_decay"]),
                                  masks_by_param(model, masks), originals="zeros")
            data = union_loader(forget, retain, batch_size=hp["batch_size"], seed=seed)

            def ce(model, x, y, epoch):
                return F.cross_entropy(model(x), y)

            log.update(fit(model, lambda epoch: [("prune_retrain", data, ce)], epochs=hp["prune_epochs"],
                           optimizer=opt, progress=progress, desc="prune-first retrain"))
        log["prune_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        loaders = method_loaders(self.then.hparams, dataset_of(forget, "forget"), dataset_of(retain, "retain"),
                                 seed=seed)
        with keep_pruned(model, masks):
            then_log = self.then.run(model, forget=loaders["forget"], retain=loaders["retain"], seed=seed,
                                     progress=progress)
        log["then_seconds"] = time.perf_counter() - start
        kept = sum(int(m.sum()) for m in masks.values())
        log["sparsity"] = 1.0 - kept / sum(m.numel() for m in masks.values())
        return {**log, **{f"{self.then.name}/{k}": v for k, v in then_log.items()}}
