"""ECO prompt guards: inference-time unlearning with embedding-corrupted prompts, weights untouched.

Liu, Wang, Flanigan, Liu, "Large Language Model Unlearning via Embedding-Corrupted Prompts",
NeurIPS 2024. A prompt classifier flags prompts about the forget target; the token embeddings of a
flagged prompt are corrupted, e' = corrupt(e; s), with a strength s found offline by zeroth-order
search so that the corrupted model's forget-set metric matches a surrogate unlearning target:

    s* = argmin_s | m(M_corrupt(s), D_forget) - v_target |                                      (ECO)

m = the TOFU answer probability, mean_i exp(-avgNLL_i) over the forget answers (teacher-forced,
every forget prompt corrupted). v_target: a value the user gives (`target`), the metric of a
retain oracle on the forget set (`oracle`), or the metric of the unmodified model on a surrogate
set of the same kind it never saw (`surrogate`; the paper's surrogate retain value). m(s) falls
with s, so s* is found by bracketing and bisection with the model as a black box (`search_strength`).

Pieces, each usable alone:

    corrupt_embeddings     the corruption modes on the prompt positions of [B, L, H] embeddings
    PromptClassifier       logistic regression on prompt features, thresholded for a target FPR
    fit_prompt_classifier  trains it on forget vs retain prompt features (held-out threshold)
    search_strength        bracketing + bisection of a decreasing black-box metric onto a target
    ECOGuard               the wrapper: forward / generate classify each prompt and corrupt only the
                           flagged ones (inside the forward, through an embedding hook)
    build_eco_guard        all of the above from a model, forget and retain data
    ECO                    the registered causal-LM method "eco": its result model is the guard

Prompt features (the classifier's input): by default the target model's own hidden states of
`layer`, mean-pooled over the prompt tokens (no extra model, no extra dependency); or, with
`embed(texts) -> [B, D]`, an external sentence encoder on the decoded prompt text.

What "the prompt" of an input is: `prompt_mask` when the caller gives it; otherwise the tokens up to
and including the first occurrence of the guard's `prompt_suffix` (the token ids that end every
template prompt, e.g. "\\nAnswer:", derived from the training data), or every attended token when
the suffix is absent. A forward with a non-empty KV cache continues a prompt already seen: it is
passed through untouched (the cache already holds the corrupted prompt).
"""
from __future__ import annotations

import contextlib
import math
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from unlearnx._modes import training_mode
from unlearnx.data.lm_batches import IGNORE_INDEX, QADataset, pad_batch
from unlearnx.methods.llm.base import LLMMethod, as_lm_dataset
from unlearnx.methods.registry import register_method

__all__ = ["CORRUPTIONS", "corrupt_embeddings", "PromptClassifier", "fit_prompt_classifier", "search_strength",
           "ECOGuard", "build_eco_guard", "forget_probability", "ECO"]

CORRUPTIONS = ("rand_noise_first_n", "zero_out_top_k", "noise")
_STATE_FILE, _CONFIG_FILE = "eco_guard.safetensors", "eco_guard.json"
_FORMAT_VERSION = 1
_SETTINGS = ("mode", "strength", "n_dims", "seed", "layer")


def _check_mode(mode) -> None:
    if mode not in CORRUPTIONS:
        raise ValueError(f"mode: must be one of {CORRUPTIONS}, got {mode!r}")


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: must be an int >= {low}, got {value!r}")


def _check_number(name: str, value, low: float = 0.0, high: float = math.inf, *, open_low: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or value > high or (open_low and value == low):
        side = ">" if open_low else ">="
        raise ValueError(f"{name}: must be a finite number {side} {low}" + (f" and <= {high}" if high < math.inf
                                                                              else "") + f", got {value!r}")


# ------------------------------------------------------------------------------------------------
# Corruption
# ------------------------------------------------------------------------------------------------

def corrupt_embeddings(embeds: torch.Tensor, mask: torch.Tensor, *, mode: str, strength: float, n_dims: int = 1,
                       seed: int = 0) -> torch.Tensor:
    """A corrupted copy of token embeddings at the positions of `mask` (ECO's corruption functions).

    embeds [B, L, H] float; mask [B, L] bool (True = a flagged prompt token). For each row r with
    masked tokens e_1..e_n (in order):

        "rand_noise_first_n":  e_t[:n_dims] += strength * z_t,  z_t ~ N(0, I_{n_dims})
        "noise":               e_t         += strength * z_t,  z_t ~ N(0, I_H)
        "zero_out_top_k":      e_t[j] = 0 for the k = round(strength) dims j of largest |e_t[j]|

    The noise of row r is drawn from a generator seeded with `seed` for that row alone, so a prompt
    is corrupted the same way whatever the batch, its position in it, or the padding. Unmasked
    positions are returned bit-identical.
    """
    if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3 or not embeds.is_floating_point():
        raise ValueError(f"embeds: expected a floating [B, L, H] tensor, got "
                         f"{tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(embeds.shape[:2]):
        raise ValueError(f"mask: expected a bool tensor of shape {tuple(embeds.shape[:2])}")
    _check_mode(mode)
    _check_number("strength", strength)
    _check_int("n_dims", n_dims, 1)
    _check_int("seed", seed, 0)
    hidden = embeds.shape[-1]
    out = embeds.clone()
    if strength == 0:
        return out
    for r in range(embeds.shape[0]):
        pos = mask[r].nonzero().squeeze(1)
        if pos.numel() == 0:
            continue
        e = out[r, pos]  # [n, H]
        if mode == "zero_out_top_k":
            k = min(hidden, int(round(strength)))
            if k > 0:
                top = e.abs().topk(k, dim=-1).indices
                e = e.scatter(-1, top, 0.0)
        else:
            width = min(n_dims, hidden) if mode == "rand_noise_first_n" else hidden
            gen = torch.Generator(device="cpu").manual_seed(seed)
            z = torch.randn(pos.numel(), width, generator=gen, dtype=torch.float32).to(e.device, e.dtype)
            e = torch.cat([e[:, :width] + strength * z, e[:, width:]], dim=1)
        out[r, pos] = e
    return out


# ------------------------------------------------------------------------------------------------
# Prompt classifier
# ------------------------------------------------------------------------------------------------

class PromptClassifier(nn.Module):
    """Logistic regression on standardized prompt features: p(forget | x) = sigmoid(w . (x - mu)/sd + b).

    A prompt is flagged when p > threshold. Buffers: mean [D], std [D], weight [D], bias [1],
    threshold [1] (all float32), so the state dict holds everything the guard needs.
    """

    def __init__(self, dim: int):
        super().__init__()
        _check_int("dim", dim, 1)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("weight", torch.zeros(dim))
        self.register_buffer("bias", torch.zeros(1))
        self.register_buffer("threshold", torch.full((1,), 0.5))  # [1], not 0-d: fingerprints view bytes

    @property
    def dim(self) -> int:
        return self.weight.numel()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, D] -> p(forget) [B] float32."""
        if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features: expected [B, {self.dim}], got "
                             f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)}")
        x = (features.float().to(self.mean.device) - self.mean) / self.std
        return torch.sigmoid(x @ self.weight + self.bias)

    def flag(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, D] -> bool [B]: p(forget) > threshold."""
        return self(features) > self.threshold


def _auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """ROC AUC = P(score_pos > score_neg) + 0.5 P(equal) (Mann-Whitney), from 1-D score tensors."""
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def _fpr_threshold(negatives: torch.Tensor, target_fpr: float) -> float:
    """The smallest observed score t with #{neg > t} / n <= target_fpr (flag: score > t)."""
    s = negatives.double().sort().values
    n = s.numel()
    allowed = int(math.floor(target_fpr * n))  # negatives that may sit above the threshold
    return float(s[n - 1 - allowed])


def fit_prompt_classifier(forget_features: torch.Tensor, retain_features: torch.Tensor, *, holdout: float = 0.25,
                          target_fpr: float = 0.05, weight_decay: float = 1e-3, steps: int = 100,
                          seed: int = 0) -> tuple[PromptClassifier, dict]:
    """Train a `PromptClassifier` on forget (label 1) vs retain (label 0) prompt features.

    forget_features [Nf, D], retain_features [Nr, D]. A seeded `holdout` fraction of each class is
    kept out of training; the classifier minimizes the class-balanced logistic loss plus
    weight_decay * ||w||^2 (full-batch L-BFGS, `steps` iterations) on the rest, and its threshold is
    set on the held-out retain prompts so that their false-positive rate is at most `target_fpr`.
    Returns (classifier, stats) with stats = {"auc", "tpr", "fpr"} on the held-out prompts and the
    counts used.
    """
    for name, f in (("forget_features", forget_features), ("retain_features", retain_features)):
        if not isinstance(f, torch.Tensor) or f.dim() != 2 or f.shape[0] < 2:
            raise ValueError(f"{name}: expected a [N >= 2, D] tensor")
        if not torch.isfinite(f).all():
            raise ValueError(f"{name}: contains NaN or Inf")
    if forget_features.shape[1] != retain_features.shape[1]:
        raise ValueError(f"retain_features: dimension {retain_features.shape[1]} differs from forget_features' "
                         f"{forget_features.shape[1]}")
    _check_number("holdout", holdout, 0.0, 0.9, open_low=True)
    _check_number("target_fpr", target_fpr, 0.0, 1.0)
    _check_number("weight_decay", weight_decay)
    _check_int("steps", steps, 1)
    gen = torch.Generator().manual_seed(seed)

    def split(x):
        perm = torch.randperm(x.shape[0], generator=gen)
        k = min(x.shape[0] - 1, max(1, round(holdout * x.shape[0])))
        return x[perm[k:]].float(), x[perm[:k]].float()

    f_tr, f_ho = split(forget_features.cpu())
    r_tr, r_ho = split(retain_features.cpu())
    x = torch.cat([f_tr, r_tr])
    y = torch.cat([torch.ones(len(f_tr)), torch.zeros(len(r_tr))])
    # Class-balanced weights: one forget author against many retain authors must not be ignored.
    sample_w = torch.where(y == 1, 0.5 / len(f_tr), 0.5 / len(r_tr))
    clf = PromptClassifier(x.shape[1])
    clf.mean.copy_(x.mean(0))
    clf.std.copy_(x.std(0, unbiased=False).clamp(min=1e-6))
    xs = (x - clf.mean) / clf.std
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (sample_w * nn.functional.binary_cross_entropy_with_logits(xs @ w + b, y, reduction="none")).sum()
        loss = loss + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        clf.weight.copy_(w)
        clf.bias.copy_(b)
        pos, neg = clf(f_ho), clf(r_ho)
        clf.threshold.fill_(_fpr_threshold(neg, target_fpr))
        stats = {"auc": _auc(pos, neg), "tpr": int((pos > clf.threshold).sum()) / len(pos),
                 "fpr": int((neg > clf.threshold).sum()) / len(neg), "threshold": float(clf.threshold),
                 "train": [len(f_tr), len(r_tr)], "holdout": [len(f_ho), len(r_ho)]}
    return clf, stats


# ------------------------------------------------------------------------------------------------
# Zeroth-order strength search
# ------------------------------------------------------------------------------------------------

def search_strength(metric: Callable[[float], float], target: float, *, initial: float = 1.0,
                    max_strength: float = 1e4, steps: int = 16, tol: float = 0.02,
                    progress: bool = True) -> tuple[float, list[tuple[float, float]]]:
    """Find s >= 0 with metric(s) ~= target for a non-increasing black-box `metric` (ECO's offline step).

    Zeroth order: only metric values are used. Bracketing: s_hi = initial, doubled (capped at
    `max_strength`) until metric(s_hi) <= target; then bisection on [s_lo, s_hi] for `steps`
    halvings or until |metric(s) - target| <= tol * max(|target|, 1e-12). Returns (s, trace), s the
    evaluated point with the smallest |metric - target| among those with metric <= target (the
    forget metric must reach the target). When even max_strength does not reach it (the metric
    saturates above the target), s is the smallest evaluated strength whose metric is within
    tol (relative) of the lowest value seen. trace = every (s, metric(s)) evaluated, in order.
    """
    from tqdm import tqdm

    if not callable(metric):
        raise TypeError("metric: must be callable as metric(strength) -> float")
    _check_number("target", target)
    _check_number("initial", initial, open_low=True)
    _check_number("max_strength", max_strength, open_low=True)
    _check_int("steps", steps, 1)
    _check_number("tol", tol)
    trace: list[tuple[float, float]] = []
    bar = tqdm(desc="eco strength search", disable=not progress)

    def evaluate(s: float) -> float:
        v = float(metric(s))
        if not math.isfinite(v):
            raise FloatingPointError(f"metric: returned {v} at strength {s}")
        trace.append((s, v))
        bar.set_postfix(strength=f"{s:.4g}", metric=f"{v:.4g}")
        bar.update()
        return v

    def close(v: float) -> bool:
        return abs(v - target) <= tol * max(abs(target), 1e-12)

    try:
        if evaluate(0.0) <= target or close(trace[-1][1]):
            return 0.0, trace
        lo, hi = 0.0, min(initial, max_strength)
        while evaluate(hi) > target and not close(trace[-1][1]) and hi < max_strength:
            lo, hi = hi, min(2 * hi, max_strength)
        if trace[-1][1] > target and not close(trace[-1][1]):
            # Unreachable within max_strength: the metric saturated above the target. Take the
            # weakest corruption within tol of the lowest value seen, not needlessly the strongest.
            floor = min(v for _, v in trace)
            return min(s for s, v in trace if v - floor <= tol * max(abs(floor), 1e-12)), trace
        for _ in range(steps):
            if close(trace[-1][1]):
                break
            mid = 0.5 * (lo + hi)
            if evaluate(mid) > target:
                lo = mid
            else:
                hi = mid
    finally:
        bar.close()
    reached = [(abs(v - target), s) for s, v in trace if v <= target or close(v)]
    return min(reached)[1], trace


# ------------------------------------------------------------------------------------------------
# The guard
# ------------------------------------------------------------------------------------------------

def _cache_length(cache) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return int(cache[0][0].shape[-2]) if len(cache) else 0  # legacy tuple-of-tuples caches


class ECOGuard(nn.Module):
    """A causal LM behind an ECO prompt guard (Liu et al., NeurIPS 2024); the model's weights never change.

    forward(input_ids [B, L], attention_mask [B, L], ...) and generate(...) classify each prompt;
    flagged prompts' token embeddings are corrupted (`corrupt_embeddings` with this guard's mode,
    strength, n_dims, seed) inside the model's forward through a hook on its input embeddings;
    unflagged prompts go through the untouched model. Per-sample: in a mixed batch only the flagged
    rows are corrupted. Continuation calls (a non-empty KV cache) are passed through: the cache
    already holds the corrupted prompt, and generated tokens are never corrupted.

    Args:
        model: a transformers causal LM (get_input_embeddings, output_hidden_states).
        classifier: a fitted `PromptClassifier`.
        mode, strength, n_dims, seed: the corruption (see `corrupt_embeddings`).
        layer: the hidden-state index (into output_hidden_states, -1 = last) whose mean over the
            prompt tokens is the classifier's input; unused with `embed`.
        prompt_suffix: token ids that end a prompt (see the module doc), or () for "whole input".
        embed: optional external encoder embed(list[str]) -> [B, D]; needs `tokenizer` to decode.
    """

    def __init__(self, model: nn.Module, classifier: PromptClassifier, *, mode: str = "rand_noise_first_n",
                 strength: float = 0.0, n_dims: int = 1, seed: int = 0, layer: int = -1,
                 prompt_suffix: Sequence[int] = (), embed: Callable | None = None, tokenizer=None):
        super().__init__()
        if not isinstance(model, nn.Module) or not hasattr(model, "get_input_embeddings"):
            raise TypeError(f"model: expected a transformers causal LM (nn.Module with get_input_embeddings), "
                            f"got {type(model).__name__}")
        if not isinstance(classifier, PromptClassifier):
            raise TypeError(f"classifier: expected a PromptClassifier, got {type(classifier).__name__}")
        if embed is not None and not callable(embed):
            raise TypeError("embed: must be callable as embed(list[str]) -> Tensor [B, D]")
        if embed is not None and tokenizer is None:
            raise ValueError("tokenizer: required with embed= (prompts are decoded to text for the encoder)")
        self.model = model
        self.classifier = classifier
        # The settings live in int64 buffers (the strength as its float64 bits) so that the state
        # dict, and every fingerprint of it (eval caches), changes with them and dtype casts do not.
        self.register_buffer("settings", torch.zeros(len(_SETTINGS), dtype=torch.int64))
        self.register_buffer("prompt_suffix_ids", torch.zeros(0, dtype=torch.int64))
        self.mode, self.strength, self.n_dims, self.seed, self.layer = mode, strength, n_dims, seed, layer
        self.prompt_suffix = prompt_suffix
        self.embed, self.tokenizer = embed, tokenizer

    @property
    def mode(self) -> str:
        return CORRUPTIONS[int(self.settings[0])]

    @mode.setter
    def mode(self, value: str) -> None:
        _check_mode(value)
        self.settings[0] = CORRUPTIONS.index(value)

    @property
    def strength(self) -> float:
        return struct.unpack("<d", struct.pack("<q", int(self.settings[1])))[0]

    @strength.setter
    def strength(self, value: float) -> None:
        _check_number("strength", value)
        self.settings[1] = struct.unpack("<q", struct.pack("<d", float(value)))[0]

    @property
    def n_dims(self) -> int:
        return int(self.settings[2])

    @n_dims.setter
    def n_dims(self, value: int) -> None:
        _check_int("n_dims", value, 1)
        self.settings[2] = value

    @property
    def seed(self) -> int:
        return int(self.settings[3])

    @seed.setter
    def seed(self, value: int) -> None:
        _check_int("seed", value, 0)
        self.settings[3] = value

    @property
    def layer(self) -> int:
        return int(self.settings[4])

    @layer.setter
    def layer(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"layer: must be an int hidden-state index, got {value!r}")
        self.settings[4] = value

    @property
    def prompt_suffix(self) -> tuple[int, ...]:
        return tuple(self.prompt_suffix_ids.tolist())

    @prompt_suffix.setter
    def prompt_suffix(self, value: Sequence[int]) -> None:
        if isinstance(value, (str, bytes)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            raise ValueError(f"prompt_suffix: expected a sequence of token ids, got {value!r}")
        self.prompt_suffix_ids = torch.tensor(list(value), dtype=torch.int64, device=self.settings.device)

    # ---- transformers plumbing the eval code and generate() rely on ---------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def generation_config(self):
        return self.model.generation_config

    @property
    def device(self):
        return next(self.model.parameters()).device

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    # ---- prompts and flags ------------------------------------------------------------------------
    def prompt_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L] bool: the prompt tokens of each row (see the module doc), attended tokens only."""
        attended = attention_mask.bool()
        k = len(self.prompt_suffix)
        if k == 0 or input_ids.shape[1] < k:
            return attended
        suffix = self.prompt_suffix_ids.to(input_ids.device)
        hits = (input_ids.unfold(1, k, 1) == suffix).all(-1) & attended.unfold(1, k, 1).all(-1)  # [B, L-k+1]
        found = hits.any(1)
        end = hits.int().argmax(1) + k  # exclusive end of the first occurrence
        upto = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < end[:, None]
        return attended & torch.where(found[:, None], upto, torch.ones_like(upto))

    def _check_inputs(self, input_ids, attention_mask):
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (
                torch.int64, torch.int32):
            raise ValueError("input_ids: ECOGuard needs integer token ids [B, L] (inputs_embeds alone cannot be "
                             "classified)")
        if attention_mask is None:
            return torch.ones_like(input_ids)
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)}")
        return attention_mask

    def _resolve_prompt_mask(self, prompt_mask, input_ids, attention_mask) -> torch.Tensor:
        if prompt_mask is None:
            return self.prompt_mask(input_ids, attention_mask)
        if not isinstance(prompt_mask, torch.Tensor) or prompt_mask.shape != input_ids.shape:
            raise ValueError(f"prompt_mask: expected a [B, L] tensor of shape {tuple(input_ids.shape)}")
        return prompt_mask.bool().to(input_ids.device) & attention_mask.bool()

    def _features_from_hidden(self, hidden_states, mask: torch.Tensor) -> torch.Tensor:
        if not -len(hidden_states) <= self.layer < len(hidden_states):
            raise ValueError(f"layer: {self.layer} out of range for {len(hidden_states)} hidden-state layers")
        h = hidden_states[self.layer].float()
        m = mask.unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1).clamp(min=1)

    @torch.no_grad()
    def prompt_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, D] classifier input of each row's prompt (clean model; hidden states or `embed`)."""
        attention_mask = self._check_inputs(input_ids, attention_mask)
        mask = self._resolve_prompt_mask(prompt_mask, input_ids, attention_mask)
        if self.embed is not None:
            texts = [self.tokenizer.decode(row[m].tolist(), skip_special_tokens=True)
                     for row, m in zip(input_ids.cpu(), mask.cpu())]
            feats = self.embed(texts)
            if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or feats.shape[0] != len(texts):
                raise ValueError(f"embed: must return a [B, D] tensor for B={len(texts)} texts")
            return feats.float()
        # Only the prompt is run: a causal model's prompt states do not depend on what follows.
        width = int(mask.sum(1).max()) if mask.any() else 1
        ids, att = input_ids[:, :width], attention_mask[:, :width]
        if not bool((mask[:, width:] == 0).all()):  # left padding or a mask that is not a prefix
            ids, att = input_ids, attention_mask
        out = self.model(input_ids=ids, attention_mask=att, output_hidden_states=True, use_cache=False)
        return self._features_from_hidden(out.hidden_states, mask[:, :ids.shape[1]])

    def flag(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """bool [B]: which prompts the classifier flags."""
        return self.classifier.flag(self.prompt_features(input_ids, attention_mask, prompt_mask)).to(input_ids.device)

    def _resolve_flags(self, flags, batch: int, device) -> torch.Tensor | None:
        if flags is None:
            return None
        if isinstance(flags, bool):
            return torch.full((batch,), flags, dtype=torch.bool, device=device)
        if not isinstance(flags, torch.Tensor) or flags.dtype != torch.bool or flags.shape != (batch,):
            raise ValueError(f"flags: expected None, a bool, or a bool tensor of shape ({batch},)")
        return flags.to(device)

    @contextlib.contextmanager
    def _corrupting(self, mask: torch.Tensor):
        """Corrupt the next input-embedding call at `mask` [B, L] (the prompt's uncached forward) once."""
        fired = []

        def hook(module, args, output):
            if fired:
                return None  # decoding steps after the prefill: never corrupted
            if tuple(output.shape[:2]) != tuple(mask.shape):
                raise RuntimeError(f"ECOGuard: the prompt forward embedded {tuple(output.shape[:2])} tokens, "
                                   f"expected {tuple(mask.shape)} (chunked prefill is not supported)")
            fired.append(True)
            return corrupt_embeddings(output, mask, mode=self.mode, strength=self.strength, n_dims=self.n_dims,
                                      seed=self.seed)

        handle = self.model.get_input_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    # ---- forward / generate -----------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cache=None, *, prompt_mask: torch.Tensor | None = None, flags=None, **kwargs):
        """The model's forward with flagged prompts corrupted; returns the model's output object.

        input_ids [B, L] (required: prompts are classified from tokens); attention_mask [B, L];
        cache: the KV cache (transformers 5 name; `past_key_values` in kwargs works too).
        prompt_mask [B, L] bool overrides the prompt detection; flags (bool or bool [B]) overrides
        the classifier (e.g. flags=True measures the corruption alone). Other kwargs go to the model.
        """
        if cache is not None:
            kwargs["cache"] = cache
        if _cache_length(kwargs.get("cache", kwargs.get("past_key_values"))) > 0:
            # A continuation (its attention_mask also covers the cached positions): pass through.
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        attention_mask = self._check_inputs(input_ids, attention_mask)
        mask = self._resolve_prompt_mask(prompt_mask, input_ids, attention_mask)
        flags = self._resolve_flags(flags, input_ids.shape[0], input_ids.device)
        out = None
        if flags is None:
            has_cache = kwargs.get("cache", kwargs.get("past_key_values")) is not None
            if self.embed is None and not has_cache:
                # One clean pass gives both the hidden states to classify and, if nothing is flagged,
                # the answer itself: unflagged batches cost one forward and are bit-identical.
                wanted = kwargs.pop("output_hidden_states", False)
                out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                                 **kwargs)
                flags = self.classifier.flag(self._features_from_hidden(out.hidden_states, mask).detach())
                flags = flags.to(input_ids.device)
                if not wanted:
                    out.hidden_states = None
                kwargs["output_hidden_states"] = wanted
            else:
                flags = self.flag(input_ids, attention_mask, mask)
        if not bool(flags.any()):
            return out if out is not None else self.model(input_ids=input_ids, attention_mask=attention_mask,
                                                          **kwargs)
        with self._corrupting(mask & flags[:, None]):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 prompt_mask: torch.Tensor | None = None, flags=None, **kwargs):
        """`model.generate` with flagged prompts corrupted in the prefill only (KV-cache decoding)."""
        attention_mask = self._check_inputs(input_ids, attention_mask)
        mask = self._resolve_prompt_mask(prompt_mask, input_ids, attention_mask)
        flags = self._resolve_flags(flags, input_ids.shape[0], input_ids.device)
        if flags is None:
            flags = self.flag(input_ids, attention_mask, mask)
        if not bool(flags.any()):
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        with self._corrupting(mask & flags[:, None]):
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    # ---- persistence -------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        """Everything but the model and the classifier's tensors (JSON-able)."""
        return {"format_version": _FORMAT_VERSION, "mode": self.mode, "strength": self.strength,
                "n_dims": self.n_dims, "seed": self.seed, "layer": self.layer,
                "prompt_suffix": list(self.prompt_suffix), "features": "embed" if self.embed else "hidden",
                "feature_dim": self.classifier.dim}

    def save(self, directory) -> Path:
        """Write the guard state (not the model) to `directory`: eco_guard.safetensors (classifier
        tensors) and eco_guard.json (corruption and prompt settings), each atomically."""
        from unlearnx.report.io import atomic_write_bytes, atomic_write_json, safetensors_bytes

        directory = Path(directory)
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self.classifier.state_dict().items()}
        atomic_write_bytes(directory / _STATE_FILE, safetensors_bytes(tensors))
        atomic_write_json(directory / _CONFIG_FILE, self.config_dict())
        return directory

    @classmethod
    def load(cls, directory, model: nn.Module, *, embed: Callable | None = None, tokenizer=None) -> ECOGuard:
        """Rebuild a saved guard around `model` (the same model it was fitted on); `embed` and
        `tokenizer` again when it was fitted with an external encoder."""
        from safetensors.torch import load_file

        from unlearnx.report.io import read_json

        directory = Path(directory)
        config = read_json(directory / _CONFIG_FILE)
        if config is None or not (directory / _STATE_FILE).is_file():
            raise FileNotFoundError(f"directory: no saved ECO guard in {directory}")
        if config.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"directory: unsupported ECO guard format {config.get('format_version')!r}")
        if (config["features"] == "embed") != (embed is not None):
            raise ValueError(f"embed: the guard was fitted with {config['features']!r} features; "
                             + ("pass the same embed= callable" if embed is None else "do not pass embed="))
        classifier = PromptClassifier(config["feature_dim"])
        classifier.load_state_dict(load_file(str(directory / _STATE_FILE)))
        device = next(model.parameters()).device
        return cls(model, classifier.to(device), mode=config["mode"], strength=config["strength"],
                   n_dims=config["n_dims"], seed=config["seed"], layer=config["layer"],
                   prompt_suffix=config["prompt_suffix"], embed=embed, tokenizer=tokenizer)


# ------------------------------------------------------------------------------------------------
# Fitting
# ------------------------------------------------------------------------------------------------

def _prompt_batches(dataset, batch_size: int):
    """Prompt-only batches of a QADataset: input_ids/attention_mask of the tokens with label -100."""
    feats = [{"input_ids": [t for t, lab in zip(f["input_ids"], f["labels"]) if lab == IGNORE_INDEX]}
             for f in (dataset[i] for i in range(len(dataset)))]
    for f in feats:
        f["labels"] = [IGNORE_INDEX] * len(f["input_ids"])
    for s in range(0, len(feats), batch_size):
        b = pad_batch(feats[s:s + batch_size], pad_token_id=dataset.pad_token_id)
        yield b["input_ids"], b["attention_mask"]


def _common_prompt_suffix(datasets) -> tuple[int, ...]:
    """The longest token suffix shared by every prompt of `datasets` (the template's prompt tail)."""
    prompts = [[t for t, lab in zip(f["input_ids"], f["labels"]) if lab == IGNORE_INDEX]
               for d in datasets for f in (d[i] for i in range(len(d)))]
    suffix: list[int] = []
    for tokens in zip(*(reversed(p) for p in prompts)):
        if len(set(tokens)) != 1:
            break
        suffix.insert(0, tokens[0])
    return tuple(suffix)


def _suffix_recovers_prompts(guard: ECOGuard, datasets, batch_size: int) -> bool:
    """Whether the suffix rule finds exactly the prompt (label -100 part) of every full QA example."""
    for d in datasets:
        for s in range(0, len(d), batch_size):
            b = d.collate([d[i] for i in range(s, min(len(d), s + batch_size))])
            want = (b["labels"] == IGNORE_INDEX) & b["attention_mask"].bool()
            if not torch.equal(guard.prompt_mask(b["input_ids"], b["attention_mask"]), want):
                return False
    return True


@torch.no_grad()
def forget_probability(model, dataset, *, batch_size: int = 32) -> float:
    """m(model, D) = mean_i exp(-avgNLL_i) over the answers of a QADataset (TOFU's probability)."""
    from unlearnx.models.lm_training import answer_nll

    device = next(model.parameters()).device
    vals = []
    for s in range(0, len(dataset), batch_size):
        b = dataset.collate([dataset[i] for i in range(s, min(len(dataset), s + batch_size))])
        b = {k: v.to(device) for k, v in b.items()}
        vals.append(torch.exp(-answer_nll(model, b)).cpu())
    return float(torch.cat(vals).double().mean())


class _AllFlagged(nn.Module):
    """The guard with every prompt flagged: the corrupted model whose forget metric ECO calibrates."""

    def __init__(self, guard: ECOGuard):
        super().__init__()
        self.guard = guard

    def forward(self, **kwargs):
        return self.guard(flags=True, **kwargs)


def _as_qa(data, name: str, template, tokenizer):
    ds = as_lm_dataset(data, name, tokenizer, template)
    if not isinstance(ds, QADataset):
        raise TypeError(f"{name}: ECO needs question/answer data (a QADataset or QA items), got {type(ds).__name__}")
    return ds


def build_eco_guard(model: nn.Module, forget, retain, *, tokenizer=None, mode: str = "rand_noise_first_n",
                    n_dims: int = 1, layer: int | None = None, target: float | None = None,
                    oracle: nn.Module | None = None, surrogate=None, embed: Callable | None = None,
                    holdout: float = 0.25, target_fpr: float = 0.05, weight_decay: float = 1e-3,
                    classifier_steps: int = 100, strength_init: float = 1.0, max_strength: float = 1e4,
                    search_steps: int = 16, tol: float = 0.02, batch_size: int = 32, seed: int = 0,
                    progress: bool = True) -> tuple[ECOGuard, dict]:
    """Fit an ECO guard around `model` (left unchanged); returns (guard, log).

    forget, retain, surrogate: QADatasets or QA items (tokenized with `tokenizer`). Steps:
    1. prompt suffix: the token tail shared by every forget/retain prompt, kept only if it recovers
       each example's prompt exactly (else prompts are whole inputs);
    2. classifier: `fit_prompt_classifier` on forget vs retain prompt features;
    3. target v: `target`, else m(oracle, forget), else m(model, surrogate) (exactly one is needed);
    4. strength: `search_strength` of s -> m(guard at s, every forget prompt flagged) onto v.
    log: classifier stats, target and its source, strength, the search trace, the prompt suffix.
    """
    from unlearnx.data.lm_batches import QATemplate

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    given = [name for name, v in (("target", target), ("oracle", oracle), ("surrogate", surrogate)) if v is not None]
    if len(given) != 1:
        raise ValueError("target, oracle, surrogate: give exactly one source of the unlearning target (a value, "
                         f"a retain-oracle model, or never-seen QA items of the forget kind); got {given or 'none'}")
    if target is not None:
        _check_number("target", target)
    if oracle is not None and not isinstance(oracle, nn.Module):
        raise TypeError(f"oracle: expected a torch.nn.Module, got {type(oracle).__name__}")
    _check_mode(mode)
    _check_int("batch_size", batch_size, 1)
    if retain is None:
        raise ValueError("retain: ECO trains its prompt classifier on forget vs retain prompts; give retain=")
    template = QATemplate()
    forget_ds = _as_qa(forget, "forget", template, tokenizer)
    retain_ds = _as_qa(retain, "retain", template, tokenizer)
    with training_mode(model):
        guard = ECOGuard(model, PromptClassifier(1), mode=mode, n_dims=n_dims, seed=seed,
                         layer=-1 if layer is None else layer, embed=embed,
                         tokenizer=tokenizer)
        guard.prompt_suffix = _common_prompt_suffix([forget_ds, retain_ds])
        if not _suffix_recovers_prompts(guard, [forget_ds, retain_ds], batch_size):
            guard.prompt_suffix = ()

        def features(ds):
            return torch.cat([guard.prompt_features(ids.to(guard.device), att.to(guard.device)).cpu()
                              for ids, att in _prompt_batches(ds, batch_size)])

        classifier, stats = fit_prompt_classifier(features(forget_ds), features(retain_ds), holdout=holdout,
                                                  target_fpr=target_fpr, weight_decay=weight_decay,
                                                  steps=classifier_steps, seed=seed)
        guard.classifier = classifier.to(guard.device)

        if target is None:
            if oracle is not None:
                target, source = forget_probability(oracle.eval(), forget_ds, batch_size=batch_size), "oracle"
            else:
                surrogate_ds = _as_qa(surrogate, "surrogate", template, tokenizer)
                target, source = forget_probability(model, surrogate_ds, batch_size=batch_size), "surrogate"
        else:
            source = "given"

        flagged = _AllFlagged(guard)

        def metric(s: float) -> float:
            guard.strength = s
            return forget_probability(flagged, forget_ds, batch_size=batch_size)

        hi = min(max_strength, float(model.get_input_embeddings().weight.shape[1])) if mode == "zero_out_top_k" \
            else max_strength
        strength, trace = search_strength(metric, target, initial=min(strength_init, hi), max_strength=hi,
                                          steps=search_steps, tol=tol, progress=progress)
        guard.strength = float(strength)
    after = dict(trace)[strength]
    log = {"classifier": stats, "target": float(target), "target_source": source, "strength": float(strength),
           "forget_metric_before": trace[0][1], "forget_metric_after": after,
           "target_reached": after <= target or abs(after - target) <= tol * max(abs(target), 1e-12),
           "search_trace": [list(t) for t in trace], "prompt_suffix": list(guard.prompt_suffix), "steps": 0}
    return guard, log


# ------------------------------------------------------------------------------------------------
# The registered method
# ------------------------------------------------------------------------------------------------

@register_method("eco", task="causal_lm")
class ECO(LLMMethod):
    """ECO prompts: a guard (prompt classifier + embedding corruption of calibrated strength) around
    the unchanged model; `run` returns the `ECOGuard` as the result model. See `build_eco_guard`.

    Hyper-parameters: mode "rand_noise_first_n" | "zero_out_top_k" | "noise"; n_dims (noised dims
    of rand_noise_first_n) 1; layer None = -1 (the hidden states pooled for the classifier); target | oracle |
    surrogate (exactly one: the unlearning target value, a retain-oracle model, or never-seen QA
    items of the forget kind); embed (optional external encoder); holdout 0.25 and target_fpr 0.05
    (threshold on held-out retain prompts); weight_decay 1e-3 and classifier_steps 100 (L-BFGS);
    strength_init 1.0, max_strength 1e4, search_steps 16, tol 0.02 (strength search); batch_size 32.
    """

    paper = ("Liu, Wang, Flanigan, Liu, 'Large Language Model Unlearning via Embedding-Corrupted Prompts', "
             "NeurIPS 2024")
    requires = ("forget", "retain")
    trains = False
    defaults = {"mode": "rand_noise_first_n", "n_dims": 1, "layer": None, "target": None, "oracle": None,
                "surrogate": None, "embed": None, "holdout": 0.25, "target_fpr": 0.05, "weight_decay": 1e-3,
                "classifier_steps": 100, "strength_init": 1.0, "max_strength": 1e4, "search_steps": 16,
                "tol": 0.02, "batch_size": 32}

    def validate(self) -> None:
        hp = self.hparams
        _check_mode(hp["mode"])
        if hp["layer"] is not None and (isinstance(hp["layer"], bool) or not isinstance(hp["layer"], int)):
            raise ValueError(f"layer must be None (the last hidden state) or an int hidden-state index, "
                             f"got {hp['layer']!r}")
        given = [k for k in ("target", "oracle", "surrogate") if hp[k] is not None]
        if len(given) != 1:
            raise ValueError("target, oracle, surrogate: give exactly one source of the unlearning target, got "
                             f"{given or 'none'}")

    def apply(self, model, forget, progress, *, retain=None, tokenizer=None):
        """Fit the guard on `forget` vs `retain` (QADatasets); returns the ECOGuard around `model`."""
        guard, self.log = build_eco_guard(model, forget, retain, tokenizer=tokenizer, seed=getattr(self, "seed", 0),
                                          progress=progress, **self.hparams)
        return guard
