"""Teacher-forced per-token statistics of a causal LM, the raw material of every LLM metric.

An item is scored on its labelled tokens only (labels != -100, see `unlearnx.data.lm_batches`):
for a QA item the answer tokens and <eos>, for a plain text every token of tokenizer(text) after
the first (<bos>), no <eos> (as MUSE scores). For each
scored token t of sample i, with logits z at the previous position and V the vocabulary:

    logp[t]    = log softmax(z)[y_t]                       (log-probability of the true token)
    mu[t]      = sum_v p_v log p_v                         (Min-K%++ mean, Zhang et al. 2024)
    var[t]     = sum_v p_v (log p_v)^2 - mu[t]^2           (Min-K%++ variance)
    correct[t] = 1[argmax_v z_v == y_t]                    (exact memorization, extraction strength)

All statistics go through ONE function, `_token_stats`, which uses the native op
`unlearnx.ops.token_stats` when the installed unlearnx has it and an explicit float32
log-softmax otherwise, so switching to the fused kernel needs no change here.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from unlearnx._modes import training_mode
from unlearnx.data.lm_batches import IGNORE_INDEX, QATemplate, encode_qa, encode_text, pad_batch
from unlearnx.data.text import QAItem
from unlearnx.distributed.context import current as current_context
from unlearnx.distributed.reduce import gather_ordered, owned, owned_count

__all__ = ["TokenScores", "encode_items", "score_tokens", "hidden_states"]


def _token_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp_label, mu, var), float32, shaped like `labels`; 0 where labels == -100.

    logits [..., V] are aligned with labels [...] (the caller shifts them). Uses
    `unlearnx.ops.token_stats` when present, else log_softmax in float32.
    """
    from unlearnx import ops

    native = getattr(ops, "token_stats", None)
    if native is not None:
        return native(logits, labels, ignore_index=IGNORE_INDEX)
    logp = logits.float().log_softmax(-1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    var = (p * logp * logp).sum(-1) - mu * mu
    mask = labels != IGNORE_INDEX
    lp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    zero = torch.zeros((), dtype=torch.float32, device=logits.device)
    return torch.where(mask, lp, zero), torch.where(mask, mu, zero), torch.where(mask, var, zero)


@dataclass(frozen=True)
class TokenScores:
    """Per-sample arrays over the scored tokens (sample i has n_i tokens), in input order.

    logp, mu, var: lists of float64 arrays [n_i]; correct: list of bool arrays [n_i].
    """

    logp: list[np.ndarray]
    mu: list[np.ndarray]
    var: list[np.ndarray]
    correct: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.logp)

    def mean_nll(self) -> np.ndarray:
        """[N] average token NLL, -(1/n_i) sum_t logp[t] (TOFU / MUSE "avg loss")."""
        return np.array([-lp.mean() for lp in self.logp])


def encode_items(tokenizer, items: Sequence, *, template: QATemplate = QATemplate(),
                 max_length: int | None = None) -> list[dict[str, list[int]]]:
    """Token ids and labels for scoring: a `QAItem` or (question, answer) pair is encoded with
    `encode_qa` (loss on the answer and <eos>), a str with `encode_text` (loss on every token)."""
    if isinstance(items, (str, QAItem)) or not isinstance(items, Sequence) or len(items) == 0:
        raise ValueError("items: expected a non-empty sequence of QAItem, (question, answer) or str")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, QAItem):
            out.append(encode_qa(tokenizer, item.question, item.answer, template=template, max_length=max_length))
        elif isinstance(item, str):
            out.append(encode_text(tokenizer, item, max_length=max_length))
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(s, str) for s in item):
            out.append(encode_qa(tokenizer, item[0], item[1], template=template, max_length=max_length))
        else:
            raise TypeError(f"items[{i}]: expected a QAItem, a (question, answer) pair of str, or a str")
        if all(t == IGNORE_INDEX for t in out[-1]["labels"]):
            raise ValueError(f"items[{i}]: has no scored token")
    return out


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be an int >= 1, got {batch_size!r}")


def _length_batches(features: Sequence[dict], batch_size: int) -> list[list[int]]:
    # Sorting by length keeps padding (wasted compute) small; results are put back in input order.
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def _device(model: torch.nn.Module):
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def score_tokens(model: torch.nn.Module, features: Sequence[dict], *, pad_token_id: int, batch_size: int = 32,
                 progress: bool = False) -> TokenScores:
    """Teacher-forced statistics of every scored token (see the module doc).

    Args:
        model: a causal LM; `model(input_ids=[B, L], attention_mask=[B, L])` returns logits
            [B, L, V] (a tensor or an object with `.logits`).
        features: encoded items ({"input_ids", "labels"} lists, e.g. from `encode_items`).
        pad_token_id: id used to right-pad a batch (padding never changes a sample's scores).
    """
    from tqdm import tqdm

    if not features:
        raise ValueError("features: empty")
    _check_batch_size(batch_size)
    device = _device(model)
    n = len(features)
    logp, mu, var, correct = [None] * n, [None] * n, [None] * n, [None] * n
    ctx = current_context()
    batches = _length_batches(features, batch_size)
    mine = {}
    with training_mode(model):
        # Under torchrun each rank scores the batches it owns; the per-item values are then gathered
        # into input order on every rank (the same batches as one process, so the same values).
        for _, idx in tqdm(owned(batches, ctx), total=owned_count(len(batches), ctx), desc="score",
                           disable=not progress):
            batch = pad_batch([features[i] for i in idx], pad_token_id=pad_token_id)
            out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            logits = (out if isinstance(out, torch.Tensor) else out.logits)[:, :-1]
            labels = batch["labels"][:, 1:].to(device)
            lp, m, v = _token_stats(logits, labels)
            hit = logits.argmax(-1) == labels
            mask = labels != IGNORE_INDEX
            for row, i in enumerate(idx):
                sel = mask[row]
                mine[i] = (lp[row, sel].double().cpu().numpy(), m[row, sel].double().cpu().numpy(),
                           v[row, sel].double().cpu().numpy(), hit[row, sel].cpu().numpy())
    for i, (lp_i, mu_i, var_i, hit_i) in enumerate(gather_ordered(mine, ctx)):
        logp[i], mu[i], var[i], correct[i] = lp_i, mu_i, var_i, hit_i
    return TokenScores(logp=logp, mu=mu, var=var, correct=correct)


@torch.no_grad()
def hidden_states(model: torch.nn.Module, features: Sequence[dict], *, pad_token_id: int, layer: int = -1,
                  batch_size: int = 32) -> np.ndarray:
    """[N, H] float64: the hidden state of `layer` (index into `output_hidden_states`, -1 = last)
    averaged over each item's scored tokens' input positions (the positions whose next-token
    prediction is scored, i.e. the last prompt token through the second-to-last answer token)."""
    if not features:
        raise ValueError("features: empty")
    _check_batch_size(batch_size)
    device = _device(model)
    ctx = current_context()
    mine = {}
    with training_mode(model):
        for _, idx in owned(_length_batches(features, batch_size), ctx):  # as score_tokens
            batch = pad_batch([features[i] for i in idx], pad_token_id=pad_token_id)
            out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                        output_hidden_states=True)
            states = out.hidden_states
            if not -len(states) <= layer < len(states):
                raise ValueError(f"layer: {layer} out of range for {len(states)} hidden-state layers")
            h = states[layer][:, :-1].float()
            mask = (batch["labels"][:, 1:] != IGNORE_INDEX).to(device)
            pooled = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
            for row, i in enumerate(idx):
                mine[i] = pooled[row].double().cpu().numpy()
    return np.stack(gather_ordered(mine, ctx))
