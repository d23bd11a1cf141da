"""Per-token and per-sequence quantities the LLM unlearning losses are built from.

Batches are those of unlearnx.data.lm_batches: input_ids, attention_mask, labels [B, L] with
labels = -100 off the answer. Token t's label is scored by the logits at t-1, so labels are shifted
left by one (a -100 column appended) and scored against the unsliced logits [B, L, V] with
`unlearnx.ops.token_stats` (no log_softmax over the vocabulary is materialized in the forward).

    logp[b, t] = log p_theta(labels[b, t+1] | tokens <= t)        mask[b, t] = labels[b, t+1] != -100
    S(x, y)    = -sum_t logp[b, t]            (sequence NLL, what NPO/DPO compare)
    NLL        = -sum_{b,t} logp / sum mask   (mean token NLL over the batch, the HF causal-LM loss)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearnx.data.lm_batches import IGNORE_INDEX
from unlearnx.ops.token_stats import token_stats

__all__ = ["shifted_labels", "forward_logits", "answer_logprobs", "sequence_logprob", "mean_nll",
           "mean_token_prob", "kl_to_reference"]


def shifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """labels [B, L] -> next-token targets [B, L]: labels[:, 1:] with a final -100 column."""
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)


def forward_logits(model, batch: dict) -> torch.Tensor:
    """logits [B, L, V] of a causal LM on a batch (labels are not passed: no HF loss is computed)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out if isinstance(out, torch.Tensor) else out.logits


def answer_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p of the next answer token: (logp [B, L] fp32, 0 off the answer; mask [B, L] bool)."""
    target = shifted_labels(labels)
    logp, _, _ = token_stats(logits, target)
    return logp, target != IGNORE_INDEX


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor, *, normalize: bool = False) -> torch.Tensor:
    """log p(y | x) = sum_t logp [B] (normalize=True: divided by |y|, the per-token mean)."""
    logp, mask = answer_logprobs(logits, labels)
    total = logp.sum(1)
    return total / mask.sum(1).clamp(min=1) if normalize else total


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token NLL over every answer token of the batch (the Hugging Face causal-LM loss)."""
    logp, mask = answer_logprobs(logits, labels)
    return -logp.sum() / mask.sum().clamp(min=1)


def mean_token_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(1/|y|) sum_t p(y_t) per sample [B]: the mean per-token probability FLAT compares."""
    logp, mask = answer_logprobs(logits, labels)
    return (logp.exp() * mask).sum(1) / mask.sum(1).clamp(min=1)


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean over answer positions of KL(p_ref || p_theta), each a sum over the vocabulary.

    The retain-side KL of GradDiff/NPO "KL" variants (Maini et al., 2024); needs full reference
    logits, hence a live reference model.
    """
    mask = shifted_labels(labels) != IGNORE_INDEX
    logp = logits[mask].float().log_softmax(-1)
    ref = ref_logits[mask].float().log_softmax(-1)
    return F.kl_div(logp, ref, log_target=True, reduction="sum") / mask.sum().clamp(min=1)
