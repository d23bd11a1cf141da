"""SSD and LFSSD: selective synaptic dampening, a retraining-free one-shot edit of the weights.

Foster, Schoepf, Brintrup, "Fast Machine Unlearning Without Retraining Through Selective Synaptic
Dampening", AAAI 2024 (SSD); Foster, Schoepf, Brintrup, "Loss-Free Machine Unlearning", ICLR 2024
Tiny Papers (LFSSD); Schoepf, Foster, Brintrup, "Parameter-tuning-free data entry error unlearning with
adaptive selective synaptic dampening", arXiv:2402.10098, 2024 (ASSD).

The importance over the full training set D = D_f ∪ D_r depends only on θ_o and D, not on the
request, so it is computed once and cached: `full_importance` keeps the last `_CACHE_SIZE` results
in memory, keyed by a SHA-256 of the model's parameters and buffers, of D's inputs and labels (in
order), the batch size, the shuffling seed and the loss. A later request on the same model and data
(another forget set drawn from the same D, same order) reuses it; `clear_importance_cache()` frees
it. Each entry holds one fp32 tensor per parameter (the size of the model in fp32).
"""
from __future__ import annotations

import hashlib
import math
from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from unlearnx._modes import training_mode
from unlearnx.data.datasets import inputs_of, labels_of
from unlearnx.methods.registry import UnlearningMethod, register_method
from unlearnx.methods.budget import check_set, validate_check, validate_forget_target, walk_budget
from unlearnx.methods.training import dataset_of, model_device, union_loader
from unlearnx.ops import ssd_dampen_
from unlearnx.stats import fisher_diagonal

__all__ = ["SSD", "LFSSD", "ASSD", "SSDBudget", "BUDGET_GRID", "full_importance", "forget_importance",
           "clear_importance_cache", "adaptive_alpha"]

_CACHE_SIZE = 2
_CACHE: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
_LOSSES = ("cross_entropy", "output_norm")


def clear_importance_cache() -> None:
    """Drop every cached full-data importance."""
    _CACHE.clear()


def _hash_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _cache_key(model: nn.Module, forget, retain, batch_size: int, seed: int, loss: str) -> str:
    h = hashlib.sha256(f"{loss}|{batch_size}|{seed}".encode())
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(name.encode())
        _hash_tensor(h, t)
    for data, name in ((forget, "forget"), (retain, "retain")):
        ds = dataset_of(data, name)
        _hash_tensor(h, inputs_of(ds))
        _hash_tensor(h, labels_of(ds))
    return h.hexdigest()


def _output_norm_importance(model: nn.Module, loader, *, progress: bool) -> dict[str, torch.Tensor]:
    """LFSSD's importance: (1/M) Σ_m |∇θ mean_{i∈m} ‖f_θ(x_i)‖²| over the M minibatches, eval mode.

    A plain loop: unlearnx.stats accumulates squared gradients only, and LFSSD needs |g| of the
    batch-mean gradient (one backward per batch, as the LFSSD reference code).
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    acc = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()}
    device = model_device(model)
    batches = 0
    with training_mode(model):
        for batch in tqdm(loader, desc="lfssd importance", disable=not progress, leave=False):
            x = batch[0].to(device)
            loss = model(x).float().pow(2).sum(1).mean()
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (name, _), g in zip(params.items(), grads):
                if g is not None:
                    acc[name].add_(g.float().abs())
            batches += 1
    if batches == 0:
        raise ValueError("data yielded no batches")
    return {n: t.div_(batches) for n, t in acc.items()}


def _importance(model, loader, loss: str, progress: bool) -> dict[str, torch.Tensor]:
    if loss == "cross_entropy":
        return fisher_diagonal(model, loader, mode="per_batch", progress=progress)
    return _output_norm_importance(model, loader, progress=progress)


def forget_importance(model: nn.Module, forget, *, loss: str = "cross_entropy", progress: bool = False):
    """I_f over the batches of `forget` (a DataLoader): SSD's (1/M) Σ_m (∇θ mean_m CE)² (loss
    "cross_entropy", unlearnx.stats.fisher_diagonal mode="per_batch", eval mode), or LFSSD's
    (1/M) Σ_m |∇θ mean_m ‖f(x)‖²| (loss "output_norm"). Returns name -> fp32 tensor."""
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
    return _importance(model, forget, loss, progress)


def full_importance(model: nn.Module, forget, retain, *, batch_size: int = 128, seed: int = 0,
                    loss: str = "cross_entropy", cache: bool = True, progress: bool = False):
    """I_D over D = D_f ∪ D_r (`unlearnx.methods.training.union_loader`: batches of `batch_size`,
    shuffled with `seed`), as `forget_importance`. Cached (see the module docstring) when `cache`.

    Returns (name -> fp32 tensor, whether it came from the cache). Cached tensors are shared:
    do not modify them.
    """
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
    key = _cache_key(model, forget, retain, batch_size, seed, loss) if cache else None
    if key is not None and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key], True
    loader = union_loader(forget, retain, batch_size=batch_size, seed=seed)
    imp = _importance(model, loader, loss, progress)
    if key is not None:
        _CACHE[key] = imp
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return imp, False


@register_method("ssd")
class SSD(UnlearningMethod):
    """SSD (selective synaptic dampening): no training; one importance pass over D_f, one (cached)
    over D, and one elementwise edit of every parameter:

        I = (1/M) Σ_m (∇θ mean_{i∈m} CE(f_θ(x_i), y_i))²        (model in eval mode, batches of 128)
        where I_f > α·I_D:   θ ← θ · min(λ·I_D / I_f, 1)           (never amplifies)

    (unlearnx.ops.ssd_dampen_). Defaults α 10, λ 1 (the paper's ResNet-18 values; ViT uses α 5). On
    small models, e.g. a ~15k-parameter CNN on digits, the same α 10 / λ 1 are kept: they dampen a
    few percent of the weights (log["dampened_fraction"]). log["full_importance_cached"]: whether
    I_D came from the cache (the timed run then excludes its pass over D).
    """

    paper = ("Foster, Schoepf, Brintrup, 'Fast Machine Unlearning Without Retraining Through Selective "
             "Synaptic Dampening', AAAI 2024")
    defaults = {"alpha": 10.0, "lam": 1.0, "batch_size": 128, "cache": True}
    loss = "cross_entropy"

    def selection_alpha(self, names, fgt, full, forget, retain) -> float:
        """α of the selection rule I_f > α·I_D (SSD: the `alpha` hyper-parameter). names: the parameter
        names; fgt, full: I_f and I_D in that order."""
        return float(self.hparams["alpha"])

    def dampening_lam(self) -> float:
        """λ of the dampening θ ← θ·min(λ·I_D/I_f, 1) (SSD: the `lam` hyper-parameter); read after
        `selection_alpha`."""
        return float(self.hparams["lam"])

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        full, cached = full_importance(model, forget, retain, batch_size=hp["batch_size"], seed=seed,
                                       loss=self.loss, cache=hp["cache"], progress=progress)
        fgt = forget_importance(model, forget, loss=self.loss, progress=progress)
        names = list(fgt)
        alpha = self.selection_alpha(names, [fgt[n] for n in names], [full[n] for n in names], forget, retain)
        params = dict(model.named_parameters())
        with torch.no_grad():
            count = ssd_dampen_([params[n] for n in names], [fgt[n] for n in names], [full[n] for n in names],
                                alpha=alpha, lam=self.dampening_lam())
        total = sum(fgt[n].numel() for n in names)
        return {"dampened": int(count), "dampened_fraction": int(count) / max(total, 1),
                "full_importance_cached": cached, "alpha": alpha}


@register_method("lfssd")
class LFSSD(SSD):
    """LFSSD (loss-free SSD): SSD with no labels; the importance is the mean over minibatches of the
    ABSOLUTE gradient of the batch-mean squared L2 norm of the model's output,

        I = (1/M) Σ_m |∇θ mean_{i∈m} ‖f_θ(x_i)‖²|              (eval mode, batches of 128)

    on D_f and (cached) on D, then the same dampening as SSD. Defaults α 10, λ 1 (as SSD).
    """

    paper = "Foster, Schoepf, Brintrup, 'Loss-Free Machine Unlearning', ICLR 2024 Tiny Papers"
    loss = "output_norm"


def adaptive_alpha(forget_importance, full_importance, *, n_forget: int, n_total: int) -> tuple[float, float]:
    """ASSD's selection weighting: α = the p-th percentile (linear interpolation, as numpy) of the
    relative importances r = I_f / I_D over every parameter entry where r is finite, with

        p = 100 − ln(1 + 100 · |D_f| / |D|)

    (a 1 % forget share selects above the 99.31st percentile, 10 % above the 97.60th).
    forget_importance, full_importance: lists of fp32 tensors of equal shapes. Returns (α, p).
    """
    if isinstance(n_forget, bool) or not isinstance(n_forget, int) or n_forget < 1:
        raise ValueError(f"n_forget must be an integer >= 1, got {n_forget!r}")
    if isinstance(n_total, bool) or not isinstance(n_total, int) or n_total < n_forget:
        raise ValueError(f"n_total must be an integer >= n_forget={n_forget}, got {n_total!r}")
    if len(forget_importance) != len(full_importance) or not forget_importance:
        raise ValueError("forget_importance and full_importance must be non-empty lists of equal length")
    ratios = []
    for f, d in zip(forget_importance, full_importance):
        if f.shape != d.shape:
            raise ValueError(f"importance shapes differ: {tuple(f.shape)} vs {tuple(d.shape)}")
        r = (f.double() / d.double()).reshape(-1)
        ratios.append(r[torch.isfinite(r)].cpu())
    r = torch.cat(ratios)
    if r.numel() == 0:
        raise ValueError("no parameter has a finite I_f / I_D (is the full importance all zero?)")
    p = 100.0 - math.log1p(100.0 * n_forget / n_total)
    return float(np.percentile(r.numpy(), p)), p


@register_method("assd")
class ASSD(SSD):
    """ASSD (adaptive SSD): SSD with the selection weighting α derived from the request instead of
    tuned: α = the p-th percentile of I_f/I_D over all parameters, p = 100 − ln(1 + 100·|D_f|/|D|)
    (`adaptive_alpha`); the importances, the selection I_f > α·I_D and the dampening
    θ ← θ·min(λ·I_D/I_f, 1) are SSD's (unlearnx.ops.ssd_dampen_), λ 1. The percentile rule is the one
    of the authors' notebook (the paper states it as "a percentile of the relative importances");
    it dampens roughly the top ln(1 + 100·share) % of the weights by relative importance.
    log["alpha"], log["percentile"]: the values used.
    """

    paper = ("Schoepf, Foster, Brintrup, 'Parameter-tuning-free data entry error unlearning with adaptive "
             "selective synaptic dampening', arXiv:2402.10098, 2024")
    defaults = {"lam": 1.0, "batch_size": 128, "cache": True}

    def selection_alpha(self, names, fgt, full, forget, retain) -> float:
        n_f = len(dataset_of(forget, "forget"))
        n = n_f + len(dataset_of(retain, "retain"))
        alpha, self._percentile = adaptive_alpha(fgt, full, n_forget=n_f, n_total=n)
        return alpha

    def run(self, model, *, forget, retain, seed, progress):
        log = super().run(model, forget=forget, retain=retain, seed=seed, progress=progress)
        return {**log, "percentile": self._percentile}


# SSDBudget's (α, λ) grid, ordered from the mildest edit (fewest weights dampened, least) to the most
# aggressive: α from 100 down to 1 at SSD's λ 1, then, at α 1, stronger dampening λ 0.5 .. 0.1 (the
# SSD paper's own range: λ 1 for ResNet-18, 0.1 for its face data set).
BUDGET_GRID = tuple((a, 1.0) for a in (100.0, 50.0, 30.0, 20.0, 10.0, 5.0, 3.0, 2.0, 1.0)) + \
    ((1.0, 0.5), (1.0, 0.2), (1.0, 0.1))


@register_method("ssd_budget")
class SSDBudget(SSD):
    """SSD with (α, λ) chosen by a retain-accuracy budget (unlearnx's rule for SSD's seed sensitivity):
    the most aggressive entry of BUDGET_GRID (α 100 → 1 at λ 1, then λ 0.5, 0.2, 0.1 at α 1) whose
    dampened model keeps the accuracy on a check set within `max_ra_drop` points of the undampened
    model's, walking the grid until the first entry over the budget. The check set is a seeded
    `check_fraction` of D_r (the only data an unlearner holds besides D_f; the test set is never
    read), or `check=`, a labelled Dataset the caller trusts to be clean (Python API). Corrective
    unlearning needs the latter: there D_r still holds the unidentified poison, so removing a
    backdoor *lowers* the accuracy on a D_r split and a D_r budget stops the dampening early
    (docs/benchmarks.md, BadNets). A request whose forget importance is weak thus still gets dampened as far as the budget
    allows. Importances and dampening are SSD's; each trial is one elementwise pass plus one forward
    pass over the check set. When even the mildest entry breaks the budget, it is used anyway and
    log["budget_met"] is False. log["alpha"], log["lam"]; log["trials"]: [(α, λ, check accuracy,
    forget accuracy)]; log["check_accuracy"]: before dampening; log["check_set"]: "retain" or "given".

    forget_target (a percentage, for class-wise requests; default None): the rule becomes "the
    mildest entry whose accuracy on D_f is <= forget_target" (e.g. 10: the class is forgotten), the
    budget then reported (log["budget_met"]: its check-accuracy drop within `max_ra_drop`) rather than
    enforced: where the forget importance is weak the budget alone stops before the class is gone
    (docs/benchmarks.md, "SSD's α"). When no entry reaches the target, the budget rule above decides
    and log["forgot"] is False. Not for random forgetting, where Retrain itself classifies D_f at
    test accuracy.
    """

    paper = ("Foster, Schoepf, Brintrup, 'Fast Machine Unlearning Without Retraining Through Selective "
             "Synaptic Dampening', AAAI 2024; (α, λ) by a retain-accuracy budget (unlearnx)")
    defaults = {"batch_size": 128, "cache": True, "max_ra_drop": 2.0, "check_fraction": 0.2, "check": None,
                "forget_target": None}

    def validate(self):
        validate_check(self.hparams["check"], self.hparams["check_fraction"])
        validate_forget_target(self.hparams["forget_target"])

    def run(self, model, *, forget, retain, seed, progress):
        from unlearnx.eval.classification import accuracy

        check, source = check_set(self.hparams["check"], self.hparams["check_fraction"], retain, seed)
        self._trial = (model, check, accuracy, dataset_of(forget, "forget"))
        log = super().run(model, forget=forget, retain=retain, seed=seed, progress=progress)
        extra = {} if self.hparams["forget_target"] is None else {"forgot": self._forgot}
        return {**log, "lam": self._lam, "trials": self._trials, "budget_met": self._met,
                "check_accuracy": self._base, "check_set": source, **extra}

    def dampening_lam(self) -> float:
        return self._lam

    def selection_alpha(self, names, fgt, full, forget, retain) -> float:
        model, check, accuracy, forget_ds = self._trial
        target = self.hparams["forget_target"]
        params = dict(model.named_parameters())
        saved = [params[n].detach().clone() for n in names]
        self._base = accuracy(model, check)

        def trial(entry):
            alpha, lam = entry
            ssd_dampen_([params[n] for n in names], fgt, full, alpha=alpha, lam=lam)
            acc = accuracy(model, check)
            f_acc = accuracy(model, forget_ds) if target is not None else None
            for n, t in zip(names, saved):
                params[n].copy_(t)
            return acc, f_acc, None

        with torch.no_grad():
            (alpha, self._lam), _, trials, self._met, self._forgot = walk_budget(
                BUDGET_GRID, trial, base_acc=self._base, max_drop=self.hparams["max_ra_drop"], forget_target=target)
        self._trials = [(a, lam, acc, f_acc) for (a, lam), acc, f_acc in trials]
        return alpha
