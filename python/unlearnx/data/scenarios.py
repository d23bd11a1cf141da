"""Forget/retain scenarios of the unlearning literature, on any map-style `(x, y)` Dataset.

Every builder returns a `Scenario`: the full training set D the original model is trained on,
the forget set D_f (what an unlearning request names), the retain set D_r = D \\ D_f (what Retrain
trains on), the test set used for TA, and extra evaluation sets.

- `random_forget`: a seeded random n samples / fraction of D (SalUn, Fan et al. 2024).
- `class_forget`: every sample of the given class(es); the class is removed from the test set.
- `subclass_forget`: one sub-population of a class (a seeded k-means cluster by default).
- `worst_case_forget`: the m samples a trained model keeps fitting best after unlearning them
  (bi-level search, Fan et al. 2024 "Challenging Forgets").
- `badnets_poison`, `interclass_confusion`: corrective unlearning (Goel et al. 2024, "Corrective
  Machine Unlearning"): D is manipulated, and only an identified fraction of the manipulated
  samples is handed over as D_f; the unidentified ones stay in D_r.

Indices in `forget_indices` and `meta` always index into `Scenario.train`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from unlearnx.data.datasets import (
    RelabeledDataset,
    TransformedDataset,
    _check_fraction,
    _check_positive_int,
    check_dataset,
    inputs_of,
    labels_of,
)

__all__ = [
    "Scenario",
    "random_forget",
    "class_forget",
    "subclass_forget",
    "badnets_poison",
    "interclass_confusion",
    "worst_case_forget",
]


@dataclass
class Scenario:
    """One unlearning task.

    train: full training set D (after manipulation for corrective scenarios).
    forget: D_f = Subset(train, forget_indices).  retain: D_r = Subset(train, the other indices).
    test: the test set for TA.  forget_indices: sorted int64 `[|D_f|]` into `train`.
    extra: further evaluation sets by name.  meta: what produced the scenario (indices, classes).
    """

    train: Dataset
    forget: Dataset
    retain: Dataset
    test: Dataset
    forget_indices: torch.Tensor
    name: str
    extra: dict[str, Dataset] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def retain_indices(self) -> torch.Tensor:
        """Sorted int64 indices into `train` of D_r (the complement of `forget_indices`)."""
        mask = torch.ones(len(self.train), dtype=torch.bool)
        mask[self.forget_indices] = False
        return mask.nonzero().squeeze(1)


def _split(train: Dataset, forget_idx: torch.Tensor) -> tuple[Subset, Subset, torch.Tensor]:
    forget_idx = forget_idx.sort().values
    mask = torch.ones(len(train), dtype=torch.bool)
    mask[forget_idx] = False
    retain_idx = mask.nonzero().squeeze(1)
    return Subset(train, forget_idx.tolist()), Subset(train, retain_idx.tolist()), forget_idx


def _subset(data: Dataset, mask: torch.Tensor) -> Subset:
    return Subset(data, mask.nonzero().squeeze(1).tolist())


def _check_retain(n_forget: int, n_train: int) -> None:
    if n_forget == 0:
        raise ValueError("the forget set would be empty")
    if n_forget >= n_train:
        raise ValueError("the forget set would cover the whole training set, leaving no retain set")


def _count(fraction: float, total: int) -> int:
    # At least one sample, so a small identified fraction of a small set still yields a request.
    return max(1, int(np.floor(fraction * total + 0.5)))


def _check_class(value, name: str, present: torch.Tensor) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer class id, got {value!r}")
    if not bool((present == int(value)).any()):
        raise ValueError(f"{name}={value} does not occur in train (classes present: {present.tolist()})")
    return int(value)


def random_forget(
    train: Dataset, test: Dataset, *, fraction: float | None = None, n: int | None = None, seed: int = 0
) -> Scenario:
    """Forget a seeded uniform random subset of D: `n` samples, or round(fraction · |D|).

    Exactly one of `fraction` (in (0, 1)) and `n` must be given.
    """
    check_dataset(train, "train")
    check_dataset(test, "test")
    if (fraction is None) == (n is None):
        raise ValueError("give exactly one of fraction or n")
    total = len(train)
    if fraction is not None:
        k = _count(_check_fraction(fraction, "fraction"), total)
    else:
        k = _check_positive_int(n, "n")
    if k >= total:
        arg = "n" if n is not None else "fraction"
        raise ValueError(f"{arg} selects {k} of {total} samples, leaving no retain set")
    g = torch.Generator().manual_seed(seed)
    forget, retain, idx = _split(train, torch.randperm(total, generator=g)[:k])
    return Scenario(train, forget, retain, test, idx, name=f"random-{k}", meta={"seed": seed, "n": k})


def class_forget(train: Dataset, test: Dataset, *, classes: int | Iterable[int]) -> Scenario:
    """Forget every training sample of `classes` (one id or several).

    The forgotten classes are removed from `test` (so TA measures the remaining classes, as in
    SalUn's class-wise protocol); their test samples go to `extra["forget_test"]` when present.
    """
    check_dataset(train, "train")
    check_dataset(test, "test")
    y = labels_of(train)
    present = y.unique()
    cls = [classes] if isinstance(classes, (int, np.integer)) else list(classes)
    if not cls:
        raise ValueError("classes must name at least one class")
    cls = sorted({_check_class(c, "classes", present) for c in cls})
    cls_t = torch.tensor(cls)
    in_forget = torch.isin(y, cls_t)
    _check_retain(int(in_forget.sum()), len(train))
    forget, retain, idx = _split(train, in_forget.nonzero().squeeze(1))
    y_test = labels_of(test)
    test_forget = torch.isin(y_test, cls_t)
    if bool(test_forget.all()):
        raise ValueError(f"classes={cls} cover the whole test set, leaving nothing for TA")
    extra = {"forget_test": _subset(test, test_forget)} if bool(test_forget.any()) else {}
    name = "class-" + "-".join(map(str, cls))
    return Scenario(train, forget, retain, _subset(test, ~test_forget), idx, name=name, extra=extra,
                    meta={"classes": cls})


def _kmeans_subclasses(x_train: torch.Tensor, x_test: torch.Tensor, n_subclasses: int, seed: int):
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=n_subclasses, n_init=10, random_state=seed)
    a_train = km.fit_predict(x_train.reshape(len(x_train), -1).double().numpy())
    a_test = km.predict(x_test.reshape(len(x_test), -1).double().numpy()) if len(x_test) else np.zeros(0, int)
    # k-means numbers clusters arbitrarily: renumber by decreasing size (ties: earliest first member)
    # so subclass 0 is always the largest sub-population.
    sizes = np.bincount(a_train, minlength=n_subclasses)
    first = np.array([np.flatnonzero(a_train == c)[0] if sizes[c] else len(a_train) for c in range(n_subclasses)])
    order = sorted(range(n_subclasses), key=lambda c: (-sizes[c], first[c]))
    rank = np.empty(n_subclasses, dtype=np.int64)
    rank[order] = np.arange(n_subclasses)
    return torch.from_numpy(rank[a_train]), torch.from_numpy(rank[a_test])


def subclass_forget(
    train: Dataset,
    test: Dataset,
    *,
    class_: int,
    subclass_fn: Callable[[torch.Tensor], bool] | None = None,
    n_subclasses: int = 2,
    subclass: int = 0,
    seed: int = 0,
) -> Scenario:
    """Forget one sub-population of class `class_`.

    Rule: with `subclass_fn`, a sample x of `class_` is in the sub-class when `subclass_fn(x)` is
    true. Without it, the class's training inputs (flattened) are clustered by k-means
    (`n_subclasses` clusters, scikit-learn KMeans, n_init=10, random_state=`seed`), clusters are
    numbered by decreasing size, and sub-class `subclass` is forgotten (0 = largest); test
    samples of the class go to their nearest centroid. The sub-class's test samples are removed
    from `test` and put in `extra["forget_test"]`; the rest of the class's test samples are
    also in `extra["class_retain_test"]` (the class must stay recognisable).
    """
    check_dataset(train, "train")
    check_dataset(test, "test")
    y, y_test = labels_of(train), labels_of(test)
    class_ = _check_class(class_, "class_", y.unique())
    in_class, in_class_test = y == class_, y_test == class_
    cls_idx, cls_test_idx = in_class.nonzero().squeeze(1), in_class_test.nonzero().squeeze(1)
    if subclass_fn is not None:
        if not callable(subclass_fn):
            raise TypeError(f"subclass_fn must be callable, got {type(subclass_fn).__name__}")
        sub_train = torch.tensor([bool(subclass_fn(train[i][0])) for i in cls_idx.tolist()], dtype=torch.bool)
        sub_test = torch.tensor([bool(subclass_fn(test[i][0])) for i in cls_test_idx.tolist()], dtype=torch.bool)
        rule = "subclass_fn"
    else:
        n_subclasses = _check_positive_int(n_subclasses, "n_subclasses")
        if n_subclasses < 2 or n_subclasses > len(cls_idx):
            raise ValueError(f"n_subclasses must be in [2, {len(cls_idx)}] for class {class_}, got {n_subclasses}")
        valid = not isinstance(subclass, bool) and isinstance(subclass, (int, np.integer))
        if not valid or not 0 <= subclass < n_subclasses:
            raise ValueError(f"subclass must be an integer in [0, {n_subclasses}), got {subclass!r}")
        x_all, x_test_all = inputs_of(train), inputs_of(test)
        a_train, a_test = _kmeans_subclasses(x_all[cls_idx], x_test_all[cls_test_idx], n_subclasses, seed)
        sub_train, sub_test = a_train == subclass, a_test == subclass
        rule = f"kmeans(k={n_subclasses}, seed={seed}, subclass={subclass}, 0=largest)"
    if not bool(sub_train.any()):
        raise ValueError(f"the sub-class rule selects no training sample of class_={class_}")
    forget, retain, idx = _split(train, cls_idx[sub_train])
    test_sub = torch.zeros(len(test), dtype=torch.bool)
    test_sub[cls_test_idx[sub_test]] = True
    if bool(test_sub.all()):
        raise ValueError("the sub-class covers the whole test set, leaving nothing for TA")
    extra = {}
    if bool(test_sub.any()):
        extra["forget_test"] = _subset(test, test_sub)
    if bool((in_class_test & ~test_sub).any()):
        extra["class_retain_test"] = _subset(test, in_class_test & ~test_sub)
    return Scenario(train, forget, retain, _subset(test, ~test_sub), idx, name=f"subclass-{class_}",
                    extra=extra, meta={"class": class_, "rule": rule})


def _identify(manipulated: torch.Tensor, identified_fraction: float, g: torch.Generator) -> torch.Tensor:
    k = _count(identified_fraction, len(manipulated))
    return manipulated[torch.randperm(len(manipulated), generator=g)[:k]]


def _bottom_right_trigger(patch: int, value: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def add_trigger(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[..., -patch:, -patch:] = value  # every channel, so the patch is at the maximum everywhere
        return x

    return add_trigger


def badnets_poison(
    train: Dataset,
    test: Dataset,
    *,
    poison_fraction: float = 0.1,
    target_class: int = 0,
    identified_fraction: float = 1.0,
    patch: int = 3,
    seed: int = 0,
) -> Scenario:
    """BadNets poisoning (Gu et al. 2017) as set up for corrective unlearning (Goel et al. 2024).

    round(poison_fraction · |D|) training samples, drawn (seeded) among those whose label is not
    `target_class`, get a `patch`x`patch` trigger at the bottom-right corner of every channel set
    to the maximum pixel value of the training inputs, and the label `target_class`. The forget
    set is a seeded round(identified_fraction · n_poison) (at least 1) of the poisoned samples;
    the retain set is everything else, including the unidentified poisoned samples.

    extra["triggered_test"]: test images whose true class is not the target, with the trigger
    and their clean labels (attack success rate, Acc_corr). extra["clean_test"]: the clean test
    set (Acc_retain). meta: poison_indices, identified_indices, target_class, trigger_value, patch.
    """
    check_dataset(train, "train")
    check_dataset(test, "test")
    poison_fraction = _check_fraction(poison_fraction, "poison_fraction")
    identified_fraction = _check_fraction(identified_fraction, "identified_fraction", high_closed=True)
    patch = _check_positive_int(patch, "patch")
    y = labels_of(train)
    target_class = _check_class(target_class, "target_class", y.unique())
    x = inputs_of(train)
    if x.dim() < 3 or x.shape[-1] < patch or x.shape[-2] < patch:
        raise ValueError(f"patch={patch} needs image inputs [..., H, W] with H, W >= patch, got {tuple(x.shape[1:])}")
    trigger_value = float(x.max())
    candidates = (y != target_class).nonzero().squeeze(1)
    n_poison = _count(poison_fraction, len(train))
    if n_poison > len(candidates):
        raise ValueError(f"poison_fraction={poison_fraction} asks for {n_poison} poisoned samples but only "
                         f"{len(candidates)} are outside target_class")
    g = torch.Generator().manual_seed(seed)
    poison_idx = candidates[torch.randperm(len(candidates), generator=g)[:n_poison]].sort().values
    add_trigger = _bottom_right_trigger(patch, trigger_value)
    labels = y.clone()
    labels[poison_idx] = target_class
    poisoned = RelabeledDataset(TransformedDataset(train, add_trigger, indices=poison_idx), labels)
    identified = _identify(poison_idx, identified_fraction, g)
    _check_retain(len(identified), len(train))
    forget, retain, idx = _split(poisoned, identified)
    not_target = labels_of(test) != target_class
    if not bool(not_target.any()):
        raise ValueError(f"test has no sample outside target_class={target_class} to carry the trigger")
    extra = {
        "triggered_test": TransformedDataset(_subset(test, not_target), add_trigger),
        "clean_test": test,
    }
    meta = {"poison_indices": poison_idx, "identified_indices": idx, "target_class": target_class,
            "trigger_value": trigger_value, "patch": patch, "poison_fraction": poison_fraction,
            "identified_fraction": identified_fraction, "seed": seed}
    name = f"badnets-{poison_fraction:g}-id{identified_fraction:g}"
    return Scenario(poisoned, forget, retain, test, idx, name=name, extra=extra, meta=meta)


def interclass_confusion(
    train: Dataset,
    test: Dataset,
    *,
    classes: tuple[int, int] = (0, 1),
    fraction: float = 0.5,
    identified_fraction: float = 1.0,
    seed: int = 0,
) -> Scenario:
    """Interclass confusion (Goel et al. 2024): swap labels between two classes for part of them.

    For each class c of `classes` = (a, b), a seeded round(fraction · |D_c|) (at least 1) of its
    training samples is relabelled to the other class. The forget set is a seeded
    round(identified_fraction · n_swapped) of the swapped samples; the retain set is everything
    else. extra["confused_test"]: the test samples of a and b (clean labels);
    extra["clean_test"]: the other test samples (when any). meta: swapped_indices, classes.
    """
    check_dataset(train, "train")
    check_dataset(test, "test")
    fraction = _check_fraction(fraction, "fraction", high_closed=True)
    identified_fraction = _check_fraction(identified_fraction, "identified_fraction", high_closed=True)
    try:
        a, b = classes
    except (TypeError, ValueError):
        raise ValueError(f"classes must be a pair of class ids (a, b), got {classes!r}") from None
    y = labels_of(train)
    present = y.unique()
    a, b = _check_class(a, "classes", present), _check_class(b, "classes", present)
    if a == b:
        raise ValueError(f"classes must name two different classes, got {classes!r}")
    g = torch.Generator().manual_seed(seed)
    labels = y.clone()
    swapped = []
    for src, dst in ((a, b), (b, a)):
        members = (y == src).nonzero().squeeze(1)
        chosen = members[torch.randperm(len(members), generator=g)[: _count(fraction, len(members))]]
        labels[chosen] = dst
        swapped.append(chosen)
    swapped_idx = torch.cat(swapped).sort().values
    confused = RelabeledDataset(train, labels)
    identified = _identify(swapped_idx, identified_fraction, g)
    _check_retain(len(identified), len(train))
    forget, retain, idx = _split(confused, identified)
    in_pair = torch.isin(labels_of(test), torch.tensor([a, b]))
    if not bool(in_pair.any()):
        raise ValueError(f"test has no sample of classes {classes!r}")
    extra = {"confused_test": _subset(test, in_pair)}
    if bool((~in_pair).any()):
        extra["clean_test"] = _subset(test, ~in_pair)
    meta = {"swapped_indices": swapped_idx, "identified_indices": idx, "classes": (a, b),
            "fraction": fraction, "identified_fraction": identified_fraction, "seed": seed}
    name = f"confusion-{a}-{b}-id{identified_fraction:g}"
    return Scenario(confused, forget, retain, test, idx, name=name, extra=extra, meta=meta)


def worst_case_forget(
    train: Dataset, test: Dataset, *, model, fraction: float | None = None, n: int | None = None, seed: int = 0,
    progress: bool = True, **selection,
) -> Scenario:
    """Forget the worst-case set of `n` samples (or round(fraction · |D|)) for the trained `model`:
    the samples whose loss stays lowest after unlearning them (Fan et al., "Challenging Forgets",
    ECCV 2024), found by `unlearnx.methods.worst_case.worst_case_forget_indices` (its keyword
    arguments `selection`: outer_steps, inner_epochs, w_lr, theta_lr, gamma, batch_size).
    meta["weights"]: the final sample weights w [|D|].
    """
    from unlearnx.methods.worst_case import worst_case_forget_indices  # data must not import methods eagerly

    check_dataset(train, "train")
    check_dataset(test, "test")
    if (fraction is None) == (n is None):
        raise ValueError("give exactly one of fraction or n")
    k = _count(_check_fraction(fraction, "fraction"), len(train)) if fraction is not None else _check_positive_int(n, "n")
    _check_retain(k, len(train))
    idx, w = worst_case_forget_indices(model, train, k, seed=seed, progress=progress, **selection)
    forget, retain, idx = _split(train, idx)
    return Scenario(train, forget, retain, test, idx, name=f"worst-case-{k}",
                    meta={"seed": seed, "n": k, "weights": w, **selection})
