"""Class unlearning via concepts and data poisoning.

Chang, Zhu, Xu, Liu, Zhou, "Class Machine Unlearning for Complex Data via Concepts Inference and Data
Poisoning", arXiv:2405.15662, 2024.

The pipeline of the paper: (1) a post-hoc concept bottleneck model (PCBM; Yuksekgonul et al., ICLR
2023) on the model's embeddings, (2) Integrated Gradients (Sundararajan et al. 2017, via Captum) to
find the concepts that carry the class to forget, (3) unlearning by training on the forget data
poisoned with random or with targeted labels. What unlearnx fixes where the paper's data set gives
concepts that a built-in data set does not have is written in `ConceptPoison`'s docstring.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unlearnx.data.datasets import RelabeledDataset, labels_of
from unlearnx.eval.classification import model_outputs
from unlearnx.methods.model_parts import output_linear, split_model
from unlearnx.methods.random_labels import RL
from unlearnx.methods.registry import register_method
from unlearnx.methods.training import as_loader, dataset_of, fit, make_optimizer, seeded

__all__ = ["ConceptPoison", "PosthocCBM", "concept_bank", "fit_pcbm", "concept_attributions", "forget_concepts",
           "logits_without", "validate_concept_hparams", "CONCEPT_DEFAULTS", "LABEL_MODES"]

LABEL_MODES = ("random", "targeted")


def concept_bank(embeddings: torch.Tensor, labels: torch.Tensor, *, per_class: int, seed: int):
    """Concept vectors from the embeddings themselves (no concept annotations needed): for every class
    k, k-means with `per_class` centres on the embeddings of class k; concept j is the unit vector
    c_j = (m_j − μ)/‖m_j − μ‖ from the mean embedding μ of all data to centre m_j (a CAV-style
    direction). Returns (C [J, d], μ [d], owner [J]: the class each concept was found in).
    """
    from sklearn.cluster import KMeans

    if per_class < 1:
        raise ValueError(f"concepts_per_class must be >= 1, got {per_class}")
    mu = embeddings.mean(0)
    vecs, owner = [], []
    for k in labels.unique().tolist():
        e = embeddings[labels == k].double().numpy()
        n = min(per_class, len(e))
        centres = KMeans(n_clusters=n, n_init=3, random_state=seed).fit(e).cluster_centers_
        vecs.append(torch.from_numpy(centres).float() - mu)
        owner += [k] * n
    c = torch.cat(vecs)
    return c / c.norm(dim=1, keepdim=True).clamp_min(1e-12), mu, torch.tensor(owner)


class PosthocCBM(nn.Module):
    """PCBM: concept scores s = C(e − μ) [B, J] (projection of the embedding on each concept),
    then an interpretable linear head g(s) = W s + b [B, K]. `forward` takes concept scores."""

    def __init__(self, concepts: torch.Tensor, mu: torch.Tensor, num_classes: int):
        super().__init__()
        self.register_buffer("concepts", concepts)
        self.register_buffer("mu", mu)
        self.head = nn.Linear(concepts.shape[0], num_classes)

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        return (embeddings - self.mu) @ self.concepts.T

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return self.head(scores)


def fit_pcbm(pcbm: PosthocCBM, embeddings: torch.Tensor, labels: torch.Tensor, *, epochs: int, lr: float,
             l1: float, seed: int) -> float:
    """Train the PCBM head on (scores(e), y) with CE + l1·(½‖W‖₁ + ½‖W‖²) (PCBM's elastic net, ratio
    0.5), full-batch Adam. Returns the PCBM's training accuracy."""
    s = pcbm.scores(embeddings)
    opt = torch.optim.Adam(pcbm.head.parameters(), lr=lr)
    with seeded(seed):
        for _ in range(epochs):
            w = pcbm.head.weight
            loss = F.cross_entropy(pcbm(s), labels) + l1 * (0.5 * w.abs().sum() + 0.5 * w.pow(2).sum())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((pcbm(s).argmax(1) == labels).float().mean())


def concept_attributions(pcbm: PosthocCBM, scores: torch.Tensor, target: int, *, steps: int) -> torch.Tensor:
    """Mean Integrated-Gradients attribution [J] of every concept to class `target` over the rows of
    `scores` [B, J]: IG_j(s) = s_j · ∫₀¹ ∂g_target(α s)/∂s_j dα (baseline s = 0, i.e. the mean
    embedding), `steps` Gauss-Legendre points (captum.attr.IntegratedGradients)."""
    from captum.attr import IntegratedGradients

    attr = IntegratedGradients(pcbm).attribute(scores, baselines=torch.zeros_like(scores), target=int(target),
                                               n_steps=steps)
    return attr.mean(0).detach()


# The concept-inference hyper-parameters, shared by the classifier and the LLM variants.
CONCEPT_DEFAULTS = {"labels": "random", "concepts_per_class": 5, "top_concepts": 5, "ig_steps": 50,
                    "pcbm_epochs": 300, "pcbm_lr": 0.05, "pcbm_l1": 1e-3}


def validate_concept_hparams(hp: dict) -> None:
    """The concept-inference hyper-parameters shared by the classifier and the LLM variants."""
    if hp["labels"] not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {hp['labels']!r}")
    for key in ("concepts_per_class", "top_concepts", "ig_steps", "pcbm_epochs"):
        if hp[key] < 1:
            raise ValueError(f"{key} must be >= 1, got {hp[key]!r}")
    if hp["pcbm_lr"] <= 0:
        raise ValueError(f"pcbm_lr must be > 0, got {hp['pcbm_lr']!r}")


def forget_concepts(e_f: torch.Tensor, y_f: torch.Tensor, e_r: torch.Tensor, y_r: torch.Tensor, num_classes: int,
                    *, hp: dict, seed: int):
    """Steps 1-2 of the paper on embeddings: the concept bank and PCBM fitted on D = D_f ∪ D_r, then
    per forget class c the `top_concepts` concepts with the largest mean IG attribution to c over its
    forget rows. Returns (pcbm, concept scores of D_f [|D_f|, J], {c: [concept indices]}, log with
    "concepts", "concept_owner_match" (fraction of the found concepts that came from c's own k-means),
    "pcbm_accuracy")."""
    emb, lab = torch.cat([e_f, e_r]), torch.cat([y_f, y_r])
    concepts, mu, owner = concept_bank(emb, lab, per_class=hp["concepts_per_class"], seed=seed)
    pcbm = PosthocCBM(concepts, mu, num_classes)
    with seeded(seed):
        pcbm.head.reset_parameters()
    pcbm_acc = fit_pcbm(pcbm, emb, lab, epochs=hp["pcbm_epochs"], lr=hp["pcbm_lr"], l1=hp["pcbm_l1"], seed=seed)
    s_f = pcbm.scores(e_f)
    found, match = {}, []
    for c in sorted(y_f.unique().tolist()):
        rows = (y_f == c).nonzero().squeeze(1)
        attr = concept_attributions(pcbm, s_f[rows], c, steps=hp["ig_steps"])
        top = attr.argsort(descending=True)[: min(hp["top_concepts"], len(attr))]
        found[c] = top.tolist()
        match.append(float((owner[top] == c).float().mean()))
    log = {"concepts": found, "concept_owner_match": float(np.mean(match)), "pcbm_accuracy": pcbm_acc}
    return pcbm, s_f, found, log


@torch.no_grad()
def logits_without(pcbm: PosthocCBM, scores: torch.Tensor, concepts: list[int]) -> torch.Tensor:
    """PCBM logits [B, K] with `concepts` set to their baseline 0: what the rows look like once the
    concepts that make them forget-class rows are removed (the targeted label's class)."""
    s = scores.clone()
    s[:, concepts] = 0.0
    return pcbm(s)


@register_method("concept_poison")
class ConceptPoison(RL):
    """Concept-based class unlearning by data poisoning:

    1. embeddings e = extractor(x) of D (unlearnx.methods.model_parts.split_model: everything before
       the last nn.Linear); a concept bank C (`concept_bank`: `concepts_per_class` k-means directions
       per class; the paper's concept sets are annotated, the built-in data sets have none) and a
       PCBM g(C(e − μ)) fitted on D (`fit_pcbm`);
    2. the forget concepts: the `top_concepts` concepts with the largest mean Integrated-Gradients
       attribution to the forget class over D_f (`concept_attributions`, Captum);
    3. poisoned labels for D_f:
       labels="random":   ỹ ~ U(classes other than the forget classes), fresh per sample (seeded);
       labels="targeted": ỹ = argmax_{k ∉ forget classes} g_k(s with the forget concepts set to their
                          baseline 0): the class the sample resembles once the concepts that make it a
                          forget-class sample are removed;
    4. unlearning: RL's loop with these labels, i.e. each epoch one pass over the poisoned D_f, then one
       over D_r with true labels (SGD m 0.9, wd 5e-4; RL's defaults 10 epochs, lr 0.013, batch 64).

    log: "concepts" (the forget concepts), "concept_owner_match" (the fraction of them found in the
    forget class's own k-means: 1.0 means IG points at the class's own concepts), "pcbm_accuracy",
    "poison_label_counts". Random labels exclude the forget classes (drawing the true class would
    undo the poisoning); with several forget classes each sample uses its own class's concepts.
    """

    paper = ("Chang, Zhu, Xu, Liu, Zhou, 'Class Machine Unlearning for Complex Data via Concepts Inference and "
             "Data Poisoning', arXiv:2405.15662, 2024")
    defaults = {**RL.defaults, **CONCEPT_DEFAULTS}

    def validate(self):
        validate_concept_hparams(self.hparams)

    def poison_labels(self, model, forget_ds, retain_ds, seed):
        """(poisoned labels [|D_f|], log) for D_f, steps 1-3 of the class docstring."""
        hp = self.hparams
        extractor, _ = split_model(model)
        e_f, y_f = model_outputs(extractor, forget_ds)
        e_r, y_r = model_outputs(extractor, retain_ds)
        e_f, e_r = e_f.flatten(1).float().cpu(), e_r.flatten(1).float().cpu()
        y_f, y_r = y_f.cpu(), y_r.cpu()
        num_classes = output_linear(model)[2].out_features
        forget_classes = sorted(y_f.unique().tolist())
        allowed = torch.tensor([k for k in range(num_classes) if k not in forget_classes])
        if len(allowed) == 0:
            raise ValueError("the forget set holds every class; nothing is left to poison towards")
        pcbm, s_f, found, log = forget_concepts(e_f, y_f, e_r, y_r, num_classes, hp=hp, seed=seed)
        new = torch.empty_like(y_f)
        g = torch.Generator().manual_seed(seed)
        for c in forget_classes:
            rows = (y_f == c).nonzero().squeeze(1)
            if hp["labels"] == "random":
                new[rows] = allowed[torch.randint(len(allowed), (len(rows),), generator=g)]
            else:
                new[rows] = allowed[logits_without(pcbm, s_f[rows], found[c])[:, allowed].argmax(1)]
        log["poison_label_counts"] = torch.bincount(new, minlength=num_classes).tolist()
        return new, log

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        forget_ds, retain_ds = dataset_of(forget, "forget"), dataset_of(retain, "retain")
        if labels_of(forget_ds).numel() == 0:
            raise ValueError("forget: the forget set is empty")
        labels, log = self.poison_labels(model, forget_ds, retain_ds, seed)
        poisoned = as_loader(RelabeledDataset(forget_ds, labels), batch_size=hp["batch_size"], seed=seed,
                             name="forget")

        def ce(model, x, y, epoch):
            return F.cross_entropy(model(x), y)

        opt = make_optimizer(model.parameters(), "sgd", lr=hp["lr"], momentum=hp["momentum"],
                             weight_decay=hp["weight_decay"])
        losses = fit(model, lambda epoch: [("forget", poisoned, ce), ("retain", retain, ce)], epochs=hp["epochs"],
                     optimizer=opt, progress=progress, desc=self.name)
        return {**losses, **log}
