"""Metrics for diffusion unlearning (UnlearnCanvas's definitions; docs/diffusion.md).

Generations are classified by evaluators trained in the same run (unlearnx.models resnet_tiny via
:func:`train_evaluator`); UnlearnCanvas itself uses a fine-tuned ViT-Large, so absolute numbers are
comparable only within one run (always report Retrain beside them).

* Style erasure (domain "style"): UA = share of generations from the target style's prompts
  (every object) that the style evaluator does NOT classify as the target style; IRA = style
  accuracy on generations of the other styles' prompts (every object); CRA = object accuracy on
  those same retained-style generations. Object erasure swaps the roles of the two evaluators.
* Class-wise (class-conditional digits): UA = share of generations for the forgotten class not
  classified as it; retain accuracy = classifier accuracy on the generations of the other classes.
* Evaluator-feature FID: the Fréchet distance between Gaussians fitted to the evaluator's
  penultimate features (the input of its last Linear layer) of generations and of real images —
  NOT Inception FID: named ``fid_evaluator`` everywhere.
* Efficiency: :func:`change_storage` (parameters / tensors / bytes that differ from the original).
"""
from __future__ import annotations

import torch
from torch import nn

from unlearnx._modes import training_mode
from unlearnx.eval.features import evaluator_features, fid_evaluator, frechet_distance

__all__ = ["train_evaluator", "evaluator_predict", "evaluator_features", "frechet_distance", "fid_evaluator",
           "canvas_prompt_grid", "canvas_metrics", "class_metrics", "change_storage", "peak_memory_bytes"]


def train_evaluator(train, test, *, num_classes: int, in_channels: int, epochs: int = 15, seed: int = 0,
                    width: int = 16, lr: float = 0.05) -> tuple[nn.Module, float]:
    """A resnet_tiny classifier (global average pooling: shapes are recognised wherever they are)
    trained with unlearnx's train_classifier (SGD, cosine) on `train` (TensorDataset image, label);
    returns (model, held-out accuracy on `test` in [0, 1])."""
    from unlearnx.methods.training import train_classifier
    from unlearnx.models import resnet_tiny

    torch.manual_seed(seed)
    clf = resnet_tiny(num_classes, in_channels=in_channels, width=width)
    train_classifier(clf, train, epochs=epochs, lr=lr, batch_size=32, seed=seed, progress=False)
    x, y = test.tensors
    acc = float((evaluator_predict(clf, x) == y).float().mean())
    return clf, acc


@torch.no_grad()
def evaluator_predict(clf: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """argmax class of each image [N, C, H, W] (CPU LongTensor [N])."""
    dev = next(clf.parameters()).device
    with training_mode(clf, False):
        return torch.cat([clf(images[i:i + batch_size].to(dev)).argmax(1).cpu()
                          for i in range(0, len(images), batch_size)])


def canvas_prompt_grid(styles, objects, n_per_prompt: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Prompts "a {object} in {style} style" for every (style, object), each `n_per_prompt` times,
    with their style ids and object ids."""
    from unlearnx.data.canvas import canvas_prompt

    prompts, sids, oids = [], [], []
    for si, s in enumerate(styles):
        for oi, o in enumerate(objects):
            prompts += [canvas_prompt(o, s)] * n_per_prompt
            sids += [si] * n_per_prompt
            oids += [oi] * n_per_prompt
    return prompts, torch.tensor(sids), torch.tensor(oids)


def canvas_metrics(model, *, style_clf: nn.Module, object_clf: nn.Module, styles, objects, target,
                   domain: str = "style", n_per_prompt: int = 8, steps: int = 20, guidance_scale: float = 3.0,
                   seed: int = 0, real=None, return_images: bool = False, images: torch.Tensor | None = None,
                   sampler=None) -> dict:
    """UA / IRA / CRA (percent) of a text-conditional canvas model for erasing `target` (a style or an
    object name, `domain` "style" | "object"), from `n_per_prompt` generations of every prompt.

    target: one name, or a list of names erased together (sequential erasure): then UA is over the
    generations of every listed concept (equal counts: the mean of the per-concept UAs, given as
    ``ua_per_target`` {name: UA}), and IRA / CRA / FID are over the generations of the others.
    real: optional CanvasDataset; then ``fid_evaluator`` = evaluator-feature FID (style evaluator for
    style erasure, object evaluator for object erasure) of the retained-concept generations vs the
    real images of the retained concepts. return_images adds "images", "prompts" to the result.
    images: generations of `canvas_prompt_grid(styles, objects, n_per_prompt)` already sampled from
    `model` (e.g. the "images" of an earlier call): scored again without sampling.
    sampler: how to generate, ``sampler(model, conditions, seed=seed) -> images`` (default: guided
    DDIM `sample` with `steps` and `guidance_scale`; e.g. SFD's one-step generator).
    """
    from unlearnx.diffusion import sample

    if domain not in ("style", "object"):
        raise ValueError(f"domain must be 'style' or 'object', got {domain!r}")
    names = list(styles) if domain == "style" else list(objects)
    targets = [target] if isinstance(target, str) else list(target)
    if not targets or len(set(targets)) != len(targets) or any(t not in names for t in targets):
        raise ValueError(f"target {target!r} is not one of (or a list of distinct) {domain}s {names}")
    prompts, sids, oids = canvas_prompt_grid(styles, objects, n_per_prompt)
    if images is None:
        images = (sample(model, prompts, steps=steps, guidance_scale=guidance_scale, seed=seed) if sampler is None
                  else sampler(model, prompts, seed=seed)).cpu()
    elif len(images) != len(prompts):
        raise ValueError(f"images: expected {len(prompts)} generations (n_per_prompt x styles x objects), "
                         f"got {len(images)}")
    ps, po = evaluator_predict(style_clf, images), evaluator_predict(object_clf, images)
    tis = torch.tensor([names.index(t) for t in targets])
    own_ids, own_pred = (sids, ps) if domain == "style" else (oids, po)
    other_ids, other_pred = (oids, po) if domain == "style" else (sids, ps)
    forget = torch.isin(own_ids, tis)
    out = {
        "ua": 100.0 * float((own_pred[forget] != own_ids[forget]).float().mean()),
        "ira": 100.0 * float((own_pred[~forget] == own_ids[~forget]).float().mean()),
        "cra": 100.0 * float((other_pred[~forget] == other_ids[~forget]).float().mean()),
        "n_generations": len(prompts),
    }
    if not isinstance(target, str):
        out["ua_per_target"] = {t: 100.0 * float((own_pred[own_ids == i] != i).float().mean())
                                for t, i in zip(targets, tis.tolist())}
    if real is not None:
        real_own = real.style_ids if domain == "style" else real.object_ids
        clf = style_clf if domain == "style" else object_clf
        out["fid_evaluator"] = fid_evaluator(clf, images[~forget], real.images[~torch.isin(real_own, tis)])
    if return_images:
        out["images"], out["prompts"] = images, prompts
    return out


def class_metrics(model, *, classifier: nn.Module, forget_classes, n_per_class: int = 32, steps: int = 20,
                  guidance_scale: float = 3.0, seed: int = 0, real=None, sampler=None) -> dict:
    """Class-wise forgetting on a class-conditional model: UA = % of generations for the forgotten
    classes not classified as their class; retain_acc = % of generations of the other classes
    classified as their class; per_class accuracies; fid_evaluator vs `real` (TensorDataset of
    images, labels) of the retained classes when given; `sampler` as in `canvas_metrics`."""
    from unlearnx.diffusion import sample

    forget_classes = sorted({int(c) for c in forget_classes})
    classes = list(range(model.num_classes))
    if not forget_classes or not set(forget_classes) <= set(classes):
        raise ValueError(f"forget_classes must be a non-empty subset of {classes}, got {forget_classes}")
    labels = torch.tensor([c for c in classes for _ in range(n_per_class)])
    images = (sample(model, labels.tolist(), steps=steps, guidance_scale=guidance_scale, seed=seed)
              if sampler is None else sampler(model, labels.tolist(), seed=seed)).cpu()
    pred = evaluator_predict(classifier, images)
    f = torch.isin(labels, torch.tensor(forget_classes))
    out = {"ua": 100.0 * float((pred[f] != labels[f]).float().mean()),
           "retain_acc": 100.0 * float((pred[~f] == labels[~f]).float().mean()),
           "per_class_acc": {c: 100.0 * float((pred[labels == c] == c).float().mean()) for c in classes}}
    if real is not None:
        x, y = real.tensors
        keep = ~torch.isin(y, torch.tensor(forget_classes))
        out["fid_evaluator"] = fid_evaluator(classifier, images[~f], x[keep])
    return out


@torch.no_grad()
def change_storage(original: nn.Module, unlearned: nn.Module) -> dict:
    """What storing the unlearning change costs: parameters that differ (count, tensors, bytes of
    those values) between two modules, e.g. two UNets.

    Parameters are matched by name. A method may also wrap layers (SPM's membranes put a Linear under
    ``.base`` and add small ``u``, ``v`` vectors): an unlearned parameter with no same-named, same-shaped
    original is matched to an unclaimed original with the same shape and identical values (the weight
    only moved, nothing to store) and otherwise counts whole, as added storage. ``total_params`` is the
    original's size; ``added_params`` the part of ``changed_params`` that is new parameters."""
    a, b = dict(original.named_parameters()), dict(unlearned.named_parameters())
    n = tensors = nbytes = added = 0
    moved = []
    for k, q in b.items():
        p = a.get(k)
        if p is None or p.shape != q.shape:
            moved.append(k)
            continue
        diff = int((p != q.to(p.device)).sum())
        if diff:
            n, tensors, nbytes = n + diff, tensors + 1, nbytes + diff * q.element_size()
    unclaimed = [k for k, p in a.items() if k not in b or b[k].shape != p.shape]
    for k in moved:
        q = b[k]
        match = next((j for j in unclaimed if a[j].shape == q.shape and torch.equal(a[j], q.to(a[j].device))), None)
        if match is not None:
            unclaimed.remove(match)
            continue
        n, tensors, nbytes, added = n + q.numel(), tensors + 1, nbytes + q.numel() * q.element_size(), added + q.numel()
    return {"changed_params": n, "changed_tensors": tensors, "changed_bytes": nbytes,
            "total_params": sum(p.numel() for p in a.values()), "added_params": added}


def peak_memory_bytes(device) -> int | None:
    """Peak allocated CUDA memory since the last reset on a CUDA device; None on CPU (not measured)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


@torch.no_grad()
def guidance_alignment(model, original, images: torch.Tensor, conditions, *, t: torch.Tensor,
                       noise: torch.Tensor) -> float:
    """How much of the original model's guidance direction for `conditions` the model keeps:

        a = Σ ⟨ε_θ(x_t, c) − ε_o(x_t, ∅), d⟩ / Σ ‖d‖²,   d = ε_o(x_t, c) − ε_o(x_t, ∅)

    over x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε of `images` at fixed `t`, `noise` (ε_o: the original
    model). 1 = conditional behaviour unchanged, 0 = the condition acts like the empty one (UCE's
    anchor), −η = ESD's target. A cheap, sampling-free measure of a concept's removal used by the
    tests on models too small for evaluator-level UA.
    """
    from unlearnx.diffusion import noisy_latents

    x0 = original.to_latents(images)
    x_t, t, _ = noisy_latents(original, x0, t, noise)
    e0 = original.predict_noise(x_t, t, original.encode(original.null_conditions(len(images))))
    d = original.predict_noise(x_t, t, original.encode(conditions)) - e0
    m = model.predict_noise(x_t, t, model.encode(conditions)) - e0
    return float((m * d).sum() / (d * d).sum())


__all__.append("guidance_alignment")
