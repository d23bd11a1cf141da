"""Batched greedy decoding with a KV cache and stop strings, and the ROUGE-L scores built on it.

`greedy_generate` left-pads the prompts of a batch (so every row's next token is read from the
last column), runs the prompt once, then feeds one token per step with the model's KV cache
(`cache` in transformers 5, `past_key_values` before). Position ids are computed from the
attention mask, so a left-padded row gets exactly the positions it would have alone. A row stops at <eos>, at `max_new_tokens`, or as soon
as its decoded text contains a stop string (the text is cut before it); the batch stops when
every row has. Models whose forward takes no cache argument are re-run on the whole sequence
each step (same tokens, slower).

ROUGE uses Google's `rouge_score` package, as TOFU and MUSE do: TOFU reports ROUGE-L recall
with the Porter stemmer, MUSE ROUGE-L F1 without it.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from unlearnx._modes import training_mode
from unlearnx.distributed.context import current as current_context
from unlearnx.distributed.reduce import gather_ordered, owned, owned_count
from unlearnx.eval.llm.scoring import _check_batch_size, _device

__all__ = ["greedy_generate", "cut_at_stop", "rouge_l"]


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """(text before the earliest stop string, whether one was found)."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError("prompts: expected a non-empty sequence of str")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}]: expected str, got {type(p).__name__}")
    return list(prompts)


@torch.no_grad()
def greedy_generate(model: torch.nn.Module, tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
                    stop_strings: Sequence[str] = (), batch_size: int = 32, progress: bool = False) -> list[str]:
    """Greedy continuations of `prompts` (each encoded with <bos>), decoded without special tokens.

    Args:
        model: a causal LM taking input_ids, attention_mask, position_ids, use_cache and, for
            the cached path, its KV cache (Hugging Face models do).
        tokenizer: needs pad and eos tokens (e.g. from `build_tokenizer`).
        max_new_tokens: tokens generated at most per prompt.
        stop_strings: generation of a row stops once its text contains one; the returned text
            ends just before the earliest one.
        batch_size: prompts per batch (sorted by length to limit padding; output in input order).
    Returns:
        one string per prompt, not stripped.
    """
    from tqdm import tqdm

    prompts = _check_prompts(prompts)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be an int >= 1, got {max_new_tokens!r}")
    if isinstance(stop_strings, str) or not all(isinstance(s, str) and s for s in stop_strings):
        raise ValueError("stop_strings: expected a sequence of non-empty str")
    _check_batch_size(batch_size)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad is None or eos is None:
        raise ValueError("tokenizer: needs pad and eos tokens")
    device = _device(model)
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    ctx = current_context()
    starts = range(0, len(order), batch_size)
    mine: dict[int, str] = {}
    with training_mode(model):
        # Under torchrun each rank decodes the batches it owns (the one-process batches, hence the same
        # texts); the texts are then gathered into prompt order on every rank.
        for _, start in tqdm(owned(starts, ctx), total=owned_count(len(starts), ctx), desc="generate",
                             disable=not progress):
            idx = order[start:start + batch_size]
            texts = _greedy_batch(model, tokenizer, [encoded[i] for i in idx], max_new_tokens, tuple(stop_strings),
                                  pad, eos, device)
            for i, t in zip(idx, texts):
                mine[i] = t
    return gather_ordered(mine, ctx)


def _cache_argument(model) -> str | None:
    # transformers 5 names the KV cache `cache` (in and out); 4.x names it `past_key_values`.
    params = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def _greedy_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, stop_strings: tuple[str, ...],
                  pad: int, eos: int, device) -> list[str]:
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    b = len(prompts)
    generated = torch.empty((b, 0), dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    texts = [""] * b
    cache_arg = _cache_argument(model)
    past = None
    step_ids, step_pos = input_ids, positions
    for _ in range(max_new_tokens):
        if past is None:
            out = model(input_ids=torch.cat([input_ids, generated], 1), attention_mask=attention,
                        position_ids=torch.cat([positions, positions[:, -1:] + 1 + torch.arange(
                            generated.shape[1], device=device)], 1), use_cache=True)
        else:
            out = model(input_ids=step_ids, attention_mask=attention, position_ids=step_pos,
                        use_cache=True, **{cache_arg: past})
        past = getattr(out, cache_arg, None) if cache_arg else None
        logits = out if isinstance(out, torch.Tensor) else out.logits
        nxt = logits[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        generated = torch.cat([generated, nxt[:, None]], 1)
        attention = torch.cat([attention, (~done).long()[:, None]], 1)
        step_ids, step_pos = nxt[:, None], step_pos[:, -1:] + 1
        done |= nxt == eos
        if stop_strings:
            for r in range(b):
                if not done[r]:
                    texts[r], hit = cut_at_stop(tokenizer.decode(generated[r], skip_special_tokens=True), stop_strings)
                    if hit:
                        done[r] = True
        if bool(done.all()):
            break
    out_texts = []
    for r in range(b):
        row = generated[r].tolist()
        if eos in row:
            row = row[:row.index(eos)]
        out_texts.append(cut_at_stop(tokenizer.decode(row, skip_special_tokens=True), stop_strings)[0])
    return out_texts


def rouge_l(predictions: Sequence[str], references: Sequence[str], *, use_stemmer: bool,
            kind: str) -> list[float]:
    """Per-item ROUGE-L (longest common subsequence) of prediction vs reference, rouge_score package.

    kind: "recall" = LCS / |reference| (TOFU, with use_stemmer=True), "fmeasure" = F1 (MUSE,
    use_stemmer=False), or "precision".
    """
    from rouge_score import rouge_scorer

    if kind not in ("recall", "precision", "fmeasure"):
        raise ValueError(f"kind: must be 'recall', 'precision' or 'fmeasure', got {kind!r}")
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"predictions, references: need equal non-zero lengths, got {len(predictions)} "
                         f"and {len(references)}")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    return [float(getattr(scorer.score(ref, pred)["rougeL"], kind)) for pred, ref in zip(predictions, references)]
