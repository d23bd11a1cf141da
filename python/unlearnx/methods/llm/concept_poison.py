"""Class unlearning via concepts and data poisoning, for causal LMs.

Chang, Zhu, Xu, Liu, Zhou, "Class Machine Unlearning for Complex Data via Concepts Inference and Data
Poisoning", arXiv:2405.15662, 2024 (the classifier variant and the shared concept inference:
unlearnx.methods.concept_poison).

For an LM a "class" is the subject its QA items are about (a TOFU author: QAItem.subject), and the
"label" of an item is the fact its answer states (QAItem.value). The pipeline is the paper's, on the
LM's representations:

1. embeddings e = the last hidden state averaged over each item's answer positions
   (unlearnx.eval.llm.scoring.hidden_states) for D_f ∪ D_r (retain items with a subject); a concept bank
   of `concepts_per_class` k-means directions per subject and a post-hoc concept bottleneck model
   g(C(e − μ)) predicting the subject (`forget_concepts`);
2. the forget concepts: per forget subject, the `top_concepts` concepts with the largest mean
   Integrated-Gradients attribution (Captum) to it over its forget items;
3. poisoned labels: every forget item gets the value of another subject's item that states the same
   fact (same QAItem.fact, a different value; any retain item when none does), written into the
   item's own answer (`answer.replace(value, other value)`, so only the fact changes):
     labels="random":   the other item drawn uniformly (seeded) among those candidates;
     labels="targeted": the candidate whose subject the PCBM ranks highest once the forget concepts
                        are set to their baseline (`logits_without`): the subject the item resembles
                        when what makes it about the forget subject is removed;
4. unlearning: NLL on the poisoned forget items + alpha · NLL on retain (IdkNLL's loop with the
   poisoned answers in place of refusals; gamma 1, alpha 1).

log: "concepts", "concept_owner_match", "pcbm_accuracy" (as the classifier variant) and
"poison_subject_counts" (how often each subject's values were used).
"""
from __future__ import annotations

import random

import torch

from unlearnx.data.lm_batches import QADataset
from unlearnx.data.text import QAItem
from unlearnx.eval.llm.scoring import hidden_states
from unlearnx.methods.concept_poison import (CONCEPT_DEFAULTS, forget_concepts, logits_without,
                                             validate_concept_hparams)
from unlearnx.methods.llm.base import COMMON_DEFAULTS
from unlearnx.methods.llm.idk import IdkNLL
from unlearnx.methods.registry import register_method

__all__ = ["ConceptPoisonLM", "poisoned_answer"]


def poisoned_answer(item: QAItem, other: QAItem) -> str:
    """`item`'s answer with its fact replaced by `other`'s: the value swapped inside the sentence when
    both values are known and `item`'s appears in its answer; else `other`'s answer with `other`'s
    subject renamed to `item`'s."""
    if item.value and other.value and item.value in item.answer:
        return item.answer.replace(item.value, other.value)
    if other.subject and item.subject:
        return other.answer.replace(other.subject, item.subject)
    return other.answer


@register_method("concept_poison", task="causal_lm")
class ConceptPoisonLM(IdkNLL):
    """Concept-based class (subject) unlearning by poisoning the forget answers (module docstring)."""

    paper = ("Chang, Zhu, Xu, Liu, Zhou, 'Class Machine Unlearning for Complex Data via Concepts Inference and "
             "Data Poisoning', arXiv:2405.15662, 2024")
    defaults = {**COMMON_DEFAULTS, "gamma": 1.0, "alpha": 1.0, "retain_loss": "nll", **CONCEPT_DEFAULTS}

    def validate(self):
        super().validate()
        validate_concept_hparams(self.hparams)

    def substitute_answers(self, model, forget_items, retain_items, *, tokenizer, template, seed):
        hp = self.hparams
        need = "QA items with a subject (QAItem.subject: the class to forget), not bare (question, answer) pairs"
        if not all(isinstance(i, QAItem) and i.subject for i in forget_items):
            raise ValueError(f"forget: method 'concept_poison' needs {need}")
        retain_items = [i for i in retain_items or [] if isinstance(i, QAItem) and i.subject]
        forget_subjects = sorted({i.subject for i in forget_items})
        retain_items = [i for i in retain_items if i.subject not in forget_subjects]
        if not retain_items:
            raise ValueError(f"retain: method 'concept_poison' needs retain {need} about other subjects "
                             "(the classes it poisons towards)")
        subjects = forget_subjects + sorted({i.subject for i in retain_items})
        index = {s: k for k, s in enumerate(subjects)}

        def embed(items):
            ds = QADataset(items, tokenizer, template=template)
            return torch.from_numpy(hidden_states(model, ds.features, pad_token_id=ds.pad_token_id,
                                                  batch_size=hp["batch_size"])).float()

        e_f, e_r = embed(forget_items), embed(retain_items)
        y_f = torch.tensor([index[i.subject] for i in forget_items])
        y_r = torch.tensor([index[i.subject] for i in retain_items])
        pcbm, s_f, found, log = forget_concepts(e_f, y_f, e_r, y_r, len(subjects), hp=hp, seed=seed)
        by_fact: dict[str, list[QAItem]] = {}
        for it in retain_items:
            by_fact.setdefault(it.fact, []).append(it)
        rng = random.Random(seed)
        out, used = [], {}
        for row, it in enumerate(forget_items):
            # a candidate stating the same value would poison nothing (small value pools repeat)
            cands = [c for c in (by_fact.get(it.fact, []) if it.fact else []) if not (it.value and c.value == it.value)]
            cands = cands or [c for c in retain_items if poisoned_answer(it, c) != it.answer]
            if not cands:
                raise ValueError(f"retain: no retain item gives the forget question {it.question!r} another answer")
            if hp["labels"] == "random":
                other = rng.choice(cands)
            else:
                logits = logits_without(pcbm, s_f[row:row + 1], found[index[it.subject]])[0]
                best = max({c.subject for c in cands}, key=lambda s: float(logits[index[s]]))
                other = next(c for c in cands if c.subject == best)
            used[other.subject] = used.get(other.subject, 0) + 1
            out.append(QAItem(question=it.question, answer=poisoned_answer(it, other), subject=it.subject,
                              fact=it.fact))
        log["concepts"] = {subjects[c]: top for c, top in log["concepts"].items()}
        log["poison_subject_counts"] = dict(sorted(used.items()))
        self.concept_log = log
        return out

    def train(self, model, loader, *, progress):
        return {**super().train(model, loader, progress=progress), **self.concept_log}
