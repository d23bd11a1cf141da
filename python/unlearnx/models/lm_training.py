"""Fine-tuning and scoring utilities for causal LMs on QA / text batches.

Batches are those of `unlearnx.data.lm_batches` (input_ids, attention_mask, labels [B, L], labels
-100 where no loss is taken). Token t's label is predicted from the logits at position t-1:

    nll[b, t] = -log softmax(logits[b, t])[labels[b, t + 1]]        t = 0 .. L-2

`answer_nll` reduces it per sample over answer tokens; `finetune_lm` is the plain PyTorch loop
that builds the target model (TOFU fine-tunes the base model on the full authors set with AdamW,
weight decay 0.01, one epoch of linear warm-up, then linear decay; Maini et al., 2024).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from unlearnx._modes import training_mode
from unlearnx.data.lm_batches import IGNORE_INDEX, QATemplate

__all__ = ["token_nll", "answer_nll", "finetune_lm", "generate_answers", "LengthGroupedBatches"]


def _logits(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.logits


def _check_batch(batch) -> None:
    if not isinstance(batch, dict) or not {"input_ids", "attention_mask", "labels"} <= batch.keys():
        raise ValueError("batch: expected a dict with input_ids, attention_mask and labels "
                         "(from unlearnx.data.lm_batches)")
    shapes = {k: tuple(batch[k].shape) for k in ("input_ids", "attention_mask", "labels")}
    if len(set(shapes.values())) != 1 or batch["input_ids"].dim() != 2:
        raise ValueError(f"batch: input_ids, attention_mask, labels must share one [B, L] shape, got {shapes}")


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood of the next token.

    Args:
        logits: [B, L, V] model outputs.
        labels: [B, L] target ids, -100 where no loss is taken.
    Returns:
        nll [B, L-1] float32 (0 where masked) and mask [B, L-1] bool (True on scored tokens),
        with nll[b, t] = -log p(labels[b, t+1] | tokens <= t).
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(f"logits, labels: expected [B, L, V] and [B, L], got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    # float32 log-softmax: bf16 logits lose the small differences NLL-based metrics compare.
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=IGNORE_INDEX,
                          reduction="none")
    return nll, mask


def answer_nll(model: torch.nn.Module, batch: dict, *, reduction: str = "mean") -> torch.Tensor:
    """Per-sample NLL of the answer tokens (labels != -100), shape [B].

    reduction="mean": (1/|y|) * sum_t -log p(y_t | x, y_<t), the TOFU / MUSE "average NLL"
    (p = exp(-mean NLL) is the per-sample probability); "sum": S(x, y) = -log p(y | x), the
    sequence NLL NPO/DPO compare. Runs the model with gradients enabled; wrap the call in
    `torch.no_grad()` for evaluation.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: must be 'mean' or 'sum', got {reduction!r}")
    _check_batch(batch)
    nll, mask = token_nll(_logits(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])),
                          batch["labels"])
    counts = mask.sum(1)
    if (counts == 0).any():
        raise ValueError("batch: a sample has no answer tokens (all labels are -100)")
    total = (nll * mask).sum(1)
    return total / counts if reduction == "mean" else total


def _check_number(name: str, value, *, low: float, integer: bool = False, strict: bool = False) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int if integer else (int, float))
    if bad or value < low or (strict and value == low):
        kind = "an int" if integer else "a number"
        raise ValueError(f"{name}: must be {kind} {'>' if strict else '>='} {low}, got {value!r}")


class LengthGroupedBatches(Sampler):
    """Batches of examples of similar length, in random order (Hugging Face's `group_by_length`).

    Each epoch: a random permutation of the examples is cut into chunks of `chunk` batches; each
    chunk is sorted by length (stable, so equal lengths keep their random order) and cut into
    batches; the epoch's batches are then shuffled. A batch is padded to its longest example, so
    a data set that mixes short QA items with a few long texts (biographies) costs a few long
    batches per epoch instead of padding most batches to the long length.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator, chunk: int = 50):
        self.lengths, self.batch_size, self.generator, self.chunk = list(lengths), batch_size, generator, chunk

    def _chunks(self) -> list[int]:
        size, n = self.batch_size * self.chunk, len(self.lengths)
        return [min(size, n - start) for start in range(0, n, size)]

    def __len__(self) -> int:
        return sum(-(-c // self.batch_size) for c in self._chunks())

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches, start = [], 0
        for c in self._chunks():
            part = sorted(order[start:start + c], key=lambda i: self.lengths[i])
            batches += [part[k:k + self.batch_size] for k in range(0, c, self.batch_size)]
            start += c
        for k in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[k]


def _example_length(example) -> int:
    if isinstance(example, dict) and "input_ids" in example:
        return len(example["input_ids"])
    raise ValueError("data: group_by_length needs examples that are dicts with input_ids (encoded items)")


def finetune_lm(model: torch.nn.Module, data: Dataset, *, epochs: int, lr: float, batch_size: int,
                seed: int = 0, weight_decay: float = 0.01, warmup_steps: int | None = None,
                max_grad_norm: float | None = 1.0, group_by_length: bool = False,
                progress: bool = True) -> list[float]:
    """Fine-tune `model` on `data` with AdamW and a linear warm-up / linear decay schedule.

    Loss per step: mean token NLL over every scored token of the batch (labels != -100), i.e.
    the Hugging Face causal-LM loss. The learning rate rises linearly from 0 to `lr` over
    `warmup_steps` (default: one epoch, as TOFU) and decays linearly to 0 at the last step.

    Args:
        model: a causal LM taking input_ids and attention_mask (e.g. from `build_lm`).
        data: a dataset with a `collate` method (`QADataset`, `TextDataset`).
        epochs, lr, batch_size: no defaults: TOFU fine-tunes 7B models for 5 epochs at lr 1e-5
            with batch 32, while a tiny model trained from scratch needs ~1e-3 and many epochs.
        seed: seeds the shuffling; on CPU the run is then deterministic.
        weight_decay: AdamW decoupled weight decay (TOFU: 0.01).
        max_grad_norm: global gradient-norm clip, None to disable.
        group_by_length: batch examples of similar length (`LengthGroupedBatches`) instead of
            uniform shuffling: far less padding when a few long texts sit among short QA items.
        progress: show a tqdm bar.
    Returns:
        the training loss of every step (len = epochs * ceil(len(data) / batch_size)).
    The model is left in eval mode.
    """
    from tqdm import tqdm

    if not hasattr(data, "collate") or len(data) == 0:
        raise ValueError("data: expected a non-empty dataset with a collate method (QADataset, TextDataset)")
    _check_number("epochs", epochs, low=1, integer=True)
    _check_number("lr", lr, low=0, strict=True)
    _check_number("batch_size", batch_size, low=1, integer=True)
    _check_number("weight_decay", weight_decay, low=0)
    if max_grad_norm is not None:
        _check_number("max_grad_norm", max_grad_norm, low=0, strict=True)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed: must be an int, got {seed!r}")

    if not isinstance(group_by_length, bool):
        raise ValueError(f"group_by_length: must be a bool, got {group_by_length!r}")
    generator = torch.Generator().manual_seed(seed)
    if group_by_length:
        batches = LengthGroupedBatches([_example_length(data[i]) for i in range(len(data))], batch_size, generator)
        loader = DataLoader(data, batch_sampler=batches, collate_fn=data.collate)
    else:
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=data.collate)
    total = epochs * len(loader)
    warmup_steps = len(loader) if warmup_steps is None else warmup_steps
    _check_number("warmup_steps", warmup_steps, low=0, integer=True)
    warmup_steps = min(warmup_steps, total)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total - step) / max(1, total - warmup_steps))

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    device = next(model.parameters()).device
    losses: list[float] = []
    model.train()
    try:
        with tqdm(total=total, desc="finetune_lm", disable=not progress) as bar:
            for _ in range(epochs):
                for batch in loader:
                    batch = {k: v.to(device) for k, v in batch.items()}
                    nll, mask = token_nll(_logits(model(input_ids=batch["input_ids"],
                                                        attention_mask=batch["attention_mask"])), batch["labels"])
                    loss = (nll * mask).sum() / mask.sum().clamp(min=1)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    losses.append(loss.item())
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
                    bar.update()
    finally:
        model.eval()
    return losses


@torch.no_grad()
def generate_answers(model: torch.nn.Module, tokenizer, questions: Sequence[str], *,
                     template: QATemplate = QATemplate(), max_new_tokens: int = 64, batch_size: int = 32,
                     progress: bool = False) -> list[str]:
    """Greedy answers to `questions`, prompted with `template.prompt(question)`.

    Prompts are left-padded within a batch so generation starts at the same column; decoding
    stops at <eos> or after `max_new_tokens`. Returns the decoded answers without special tokens,
    stripped of surrounding whitespace.
    """
    from tqdm import tqdm

    if isinstance(questions, str) or not all(isinstance(q, str) for q in questions):
        raise TypeError("questions: expected a sequence of str")
    _check_number("max_new_tokens", max_new_tokens, low=1, integer=True)
    _check_number("batch_size", batch_size, low=1, integer=True)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad is None or eos is None:
        raise ValueError("tokenizer: needs pad and eos tokens")
    device = next(model.parameters()).device
    answers: list[str] = []
    with training_mode(model):
        for start in tqdm(range(0, len(questions), batch_size), desc="generate", disable=not progress):
            prompts = [tokenizer(template.prompt(q))["input_ids"] for q in questions[start:start + batch_size]]
            width = max(len(p) for p in prompts)
            input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
            attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
            answers += [s.strip() for s in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]
    return answers
