"""Parametric (intrinsic) evaluation of unlearning with concept vectors (Hong et al., 2024,
"Intrinsic Evaluation of Unlearning Using Parametric Knowledge Traces", arXiv:2406.11614; the
ConceptVectors benchmark).

An MLP layer writes sum_j a_j v_j into the residual stream, v_j the j-th value vector (column j of
Llama/Mistral/Qwen's `down_proj.weight` [H, I]; row j of GPT-2's Conv1D `c_proj.weight` [I, H];
column j of expert e of a fused MoE `experts.down_proj` [E, H, I]). Projected to the vocabulary,
logits_j = W_U v_j (W_U the unembedding [V, H]; Geva et al., 2022), a concept vector ranks the
concept's tokens at the top. Here a vector's concept score is the mean z-score of the concept
tokens in its projection,

    s_j = mean_{t in concept} (logits_j[t] - mean(logits_j)) / std(logits_j),

`locate_concept_vectors` keeps the `top_n` vectors of highest s_j in the original model (with
their top-k projected tokens), and after unlearning `concept_vector_drift` reports for each one
the cosine between its original and current value, the overlap |topk_before & topk_after| / k of
its projected tokens, and the current concept score. The paper finds that fine-tuning methods
barely move these vectors (cosine ~1, overlap ~1) while ablating them removes the knowledge;
`ablate_concept_vectors` is that ablation (the `concept_vector_ablation` method).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["ConceptVector", "value_vector_matrices", "concept_token_ids", "locate_concept_vectors",
           "concept_vector_drift", "ablate_concept_vectors"]

_DOWN_NAMES = ("down_proj", "w2", "fc2", "dense_4h_to_h", "c_proj")


@dataclass(frozen=True)
class ConceptVector:
    """One located value vector: `param` (parameter name), `expert` (index into a fused expert
    tensor, or None), `index` (the MLP neuron j), `score` (concept score s_j), `top_tokens` (top-k
    projected token ids, best first) and `vector` (its value [H], float32 on the CPU)."""

    param: str
    expert: int | None
    index: int
    score: float
    top_tokens: tuple[int, ...]
    vector: torch.Tensor


def _unembedding(model: nn.Module) -> torch.Tensor:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is None or not hasattr(out, "weight"):
        raise ValueError("model: has no output embedding (get_output_embeddings()) to project value vectors with")
    return out.weight


def value_vector_matrices(model: nn.Module) -> list[tuple[str, torch.Tensor, str]]:
    """Every MLP output matrix with the layout of its value vectors: (parameter name, parameter,
    layout), layout "cols" ([H, I], vectors are columns: nn.Linear down_proj), "rows" ([I, H]:
    GPT-2's Conv1D c_proj) or "experts" ([E, H, I]: fused MoE experts.down_proj)."""
    hidden = _unembedding(model).shape[1]
    found = []
    for mod_name, module in model.named_modules():
        leaf = mod_name.rsplit(".", 1)[-1]
        if leaf not in _DOWN_NAMES or "attn" in mod_name or "attention" in mod_name:
            # MoE experts modules hold the fused tensors as parameters named down_proj.
            if mod_name.endswith("experts") and isinstance(getattr(module, "down_proj", None), nn.Parameter):
                p = module.down_proj
                if p.dim() == 3 and p.shape[1] == hidden:
                    found.append((f"{mod_name}.down_proj", p, "experts"))
            continue
        w = getattr(module, "weight", None)
        if not isinstance(w, nn.Parameter) or w.dim() != 2:
            continue
        if type(module).__name__ == "Conv1D" and w.shape[1] == hidden:
            found.append((f"{mod_name}.weight", w, "rows"))
        elif isinstance(module, nn.Linear) and w.shape[0] == hidden:
            found.append((f"{mod_name}.weight", w, "cols"))
    if not found:
        raise ValueError("model: found no MLP output projection (down_proj / c_proj / experts.down_proj)")
    return found


def _vectors(param: torch.Tensor, layout: str) -> list[tuple[int | None, torch.Tensor]]:
    """[(expert, [N, H] value vectors)] of one matrix."""
    w = param.detach().float()
    if layout == "cols":
        return [(None, w.t())]
    if layout == "rows":
        return [(None, w)]
    return [(e, w[e].t()) for e in range(w.shape[0])]


def concept_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """Token ids of `words`, each encoded alone and after a space (both word-start forms of
    byte-level / sentencepiece vocabularies), without special tokens; deduplicated, in order."""
    if isinstance(words, str) or not words or not all(isinstance(w, str) and w.strip() for w in words):
        raise ValueError("words: expected a non-empty list of non-empty str")
    ids: list[int] = []
    for w in words:
        for form in (w, " " + w):
            ids += tokenizer(form, add_special_tokens=False)["input_ids"]
    return list(dict.fromkeys(ids))


def _check_tokens(token_ids, vocab: int) -> torch.Tensor:
    if isinstance(token_ids, (str, bytes)) or not token_ids:
        raise ValueError("concept_tokens: expected a non-empty list of token ids")
    t = torch.as_tensor(list(token_ids), dtype=torch.long)
    if t.dim() != 1 or (t < 0).any() or (t >= vocab).any():
        raise ValueError(f"concept_tokens: token ids must lie in [0, {vocab})")
    return t


@torch.no_grad()
def _scores(vectors: torch.Tensor, unembed: torch.Tensor, tokens: torch.Tensor, top_k: int):
    logits = vectors.to(unembed.device, torch.float32) @ unembed.float().t()  # [N, V]
    z = (logits - logits.mean(1, keepdim=True)) / logits.std(1, keepdim=True).clamp_min(1e-12)
    return z[:, tokens.to(z.device)].mean(1).cpu(), logits.topk(top_k, dim=1).indices.cpu()


@torch.no_grad()
def locate_concept_vectors(model: nn.Module, concept_tokens: Sequence[int], *, top_n: int = 10,
                           top_k: int = 50, chunk: int = 4096) -> list[ConceptVector]:
    """The `top_n` value vectors of highest concept score s_j (module doc), best first.

    concept_tokens: token ids of the concept (see `concept_token_ids`); top_k: projected tokens
    kept per vector; chunk: value vectors projected at once (bounds memory at chunk x V floats)."""
    for name, v in (("top_n", top_n), ("top_k", top_k), ("chunk", chunk)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: must be an int >= 1, got {v!r}")
    unembed = _unembedding(model)
    tokens = _check_tokens(concept_tokens, unembed.shape[0])
    top_k = min(top_k, unembed.shape[0])
    candidates = []  # (score, param, expert, index, top tokens, vector)
    for name, param, layout in value_vector_matrices(model):
        for expert, vecs in _vectors(param, layout):
            for start in range(0, vecs.shape[0], chunk):
                block = vecs[start:start + chunk]
                s, top = _scores(block, unembed, tokens, top_k)
                best = s.topk(min(top_n, len(s))).indices
                candidates += [(float(s[i]), name, expert, start + int(i), tuple(top[i].tolist()),
                                block[i].cpu().clone()) for i in best]
    candidates.sort(key=lambda c: -c[0])
    return [ConceptVector(param=n, expert=e, index=j, score=s, top_tokens=t, vector=v)
            for s, n, e, j, t, v in candidates[:top_n]]


def _current(model: nn.Module, cv: ConceptVector) -> torch.Tensor:
    layouts = {name: (p, layout) for name, p, layout in value_vector_matrices(model)}
    if cv.param not in layouts:
        raise ValueError(f"vectors: parameter {cv.param!r} is not an MLP output matrix of this model")
    p, layout = layouts[cv.param]
    w = p.detach().float()
    if layout == "cols":
        return w[:, cv.index]
    if layout == "rows":
        return w[cv.index]
    return w[cv.expert, :, cv.index]


@torch.no_grad()
def concept_vector_drift(model: nn.Module, vectors: Sequence[ConceptVector], concept_tokens: Sequence[int], *,
                         top_k: int | None = None) -> dict:
    """How much each located concept vector moved in `model` (the unlearned one).

    Returns {"cosine": mean, "topk_overlap": mean, "score_before": mean, "score_after": mean,
    "per_vector": [{"param", "expert", "index", "cosine", "topk_overlap", "score_before",
    "score_after", "top_tokens_after"}]}. cosine = cos(v_before, v_after); topk_overlap =
    |top-k tokens before & after| / k with k = len(top_tokens) unless given."""
    if not vectors or not all(isinstance(v, ConceptVector) for v in vectors):
        raise ValueError("vectors: expected a non-empty list of ConceptVector (from locate_concept_vectors)")
    unembed = _unembedding(model)
    tokens = _check_tokens(concept_tokens, unembed.shape[0])
    rows = []
    for cv in vectors:
        k = len(cv.top_tokens) if top_k is None else top_k
        after = _current(model, cv)
        s, top = _scores(after[None], unembed, tokens, k)
        before = cv.vector.to(after.device)
        cos = float(torch.nn.functional.cosine_similarity(before, after, dim=0, eps=1e-12))
        overlap = len(set(cv.top_tokens[:k]) & set(top[0].tolist())) / k
        rows.append({"param": cv.param, "expert": cv.expert, "index": cv.index, "cosine": cos,
                     "topk_overlap": overlap, "score_before": cv.score, "score_after": float(s[0]),
                     "top_tokens_after": top[0].tolist()})
    return {key: float(np.mean([r[key] for r in rows])) for key in ("cosine", "topk_overlap", "score_before",
                                                                    "score_after")} | {"per_vector": rows}


@torch.no_grad()
def ablate_concept_vectors(model: nn.Module, vectors: Sequence[ConceptVector], *, mode: str = "zero",
                           noise_scale: float = 1.0, seed: int = 0) -> nn.Module:
    """Ablate the located concept vectors in place: "zero" sets each to 0 (the neuron no longer
    writes to the residual stream); "noise" replaces it with Gaussian noise of the same per-entry
    standard deviation times `noise_scale` (seeded; the global RNG is untouched). Returns `model`."""
    if mode not in ("zero", "noise"):
        raise ValueError(f"mode: must be 'zero' or 'noise', got {mode!r}")
    if not vectors or not all(isinstance(v, ConceptVector) for v in vectors):
        raise ValueError("vectors: expected a non-empty list of ConceptVector")
    layouts = {name: (p, layout) for name, p, layout in value_vector_matrices(model)}
    gen = torch.Generator().manual_seed(seed)
    for cv in vectors:
        if cv.param not in layouts:
            raise ValueError(f"vectors: parameter {cv.param!r} is not an MLP output matrix of this model")
        p, layout = layouts[cv.param]
        view = p[:, cv.index] if layout == "cols" else p[cv.index] if layout == "rows" else p[cv.expert, :, cv.index]
        if mode == "zero":
            view.zero_()
        else:
            std = float(view.float().std()) * noise_scale
            view.copy_((torch.randn(view.shape, generator=gen) * std).to(view.dtype))
    return model
