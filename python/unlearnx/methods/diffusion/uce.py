"""UCE: Unified Concept Editing (Gandikota et al., "Unified Concept Editing in Diffusion Models",
WACV 2024), closed-form edit of the cross-attention key/value projections (Eq. 7 of the paper).

For each cross-attention projection W ∈ {to_k, to_v} (W_old its current weight, [d_out, d_in]):

    W = (Σ_{i∈E} v_i* c_iᵀ + Σ_{j∈P} W_old c_j c_jᵀ + λ W_old) (Σ_{i∈E} c_i c_iᵀ + Σ_{j∈P} c_j c_jᵀ + λ I)⁻¹

with v_i* = W_old c_i*: edited embeddings c_i are mapped to where W_old maps the anchor's embeddings
c_i*, preserved embeddings c_j keep their outputs, λ ties W to W_old. It is the minimizer of
Σ_E ‖W c_i − v_i*‖² + Σ_P ‖W c_j − W_old c_j‖² + λ ‖W − W_old‖²_F (tested against a least-squares
solve).

Embeddings (columns c): the text encoder's output vectors of the prompts. Edited: each forget prompt's
vectors from its first concept token to the end of the (padded) sequence — the encoder is causal, so
those are the positions that carry the concept, as UCE's code takes the tokens from the concept on;
anchors c_i*: the anchor prompt's vectors at the same positions (default anchor "": the
unconditional prompt, UCE's choice for erasing). Preserved: every position of every retain prompt.
λ default 0.1. No training; data-free.
"""
from __future__ import annotations

import torch

from unlearnx.diffusion.adapters import cross_attention_modules
from unlearnx.methods.diffusion.base import DiffusionMethod, concept_token_positions, concept_words
from unlearnx.methods.registry import register_method

__all__ = ["UCE", "uce_closed_form"]


def uce_closed_form(w_old: torch.Tensor, edit: torch.Tensor, anchor: torch.Tensor, preserve: torch.Tensor | None,
                    lam: float = 0.1) -> torch.Tensor:
    """UCE's Eq. 7 for one projection.

    w_old [d_out, d_in]; edit, anchor [n_E, d_in] (rows c_i, c_i*); preserve [n_P, d_in] or None;
    lam λ > 0. Computed in float64; returns W [d_out, d_in] in w_old's dtype.
    """
    if w_old.dim() != 2:
        raise ValueError(f"w_old must be a matrix [d_out, d_in], got shape {list(w_old.shape)}")
    d_in = w_old.shape[1]
    for name, m in (("edit", edit), ("anchor", anchor), ("preserve", preserve)):
        if m is not None and (m.dim() != 2 or m.shape[1] != d_in):
            raise ValueError(f"{name} must be [n, {d_in}], got shape {list(m.shape)}")
    if edit.shape != anchor.shape:
        raise ValueError(f"edit and anchor must have the same shape, got {list(edit.shape)} and {list(anchor.shape)}")
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam!r}")
    W = w_old.double()
    C, Cs = edit.double(), anchor.double()
    lhs = (W @ Cs.T) @ C + lam * W                    # Σ_E v_i* c_iᵀ + λ W_old
    rhs = C.T @ C + lam * torch.eye(d_in, dtype=torch.float64, device=W.device)
    if preserve is not None and preserve.shape[0]:
        P = preserve.double()
        lhs = lhs + (W @ P.T) @ P                     # Σ_P W_old c_j c_jᵀ
        rhs = rhs + P.T @ P
    # W = lhs · rhs⁻¹, solved as rhsᵀ Xᵀ = lhsᵀ (rhs is symmetric positive definite)
    return torch.linalg.solve(rhs, lhs.T).T.to(w_old.dtype)


@register_method("uce", task="diffusion")
class UCE(DiffusionMethod):
    """UCE closed-form erasure (see the module docstring)."""

    model_kinds = ("text",)
    kind_reason = "it edits the cross-attention key/value projections"

    paper = "Gandikota et al., 'Unified Concept Editing in Diffusion Models', WACV 2024"
    requires = ("forget",)
    defaults = {"lam": 0.1, "anchor": "", "concept": None, "preserve": True}

    def validate(self):
        if not self.hparams["lam"] > 0:
            raise ValueError(f"lam must be > 0, got {self.hparams['lam']!r}")

    @torch.no_grad()
    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        self.check_model_kind(model)
        prompts = self.forget_conditions(model, forget)
        kept = self.retain_conditions(model, retain, prompts) if hp["preserve"] else []
        words = hp["concept"].lower().split() if hp["concept"] else concept_words(prompts, kept)
        positions = concept_token_positions(model, prompts, words)
        emb = model.encode(prompts)                                    # [n, L, D]
        anc = model.encode([hp["anchor"]] * len(prompts))
        rows_e, rows_a = [], []
        for i, pos in enumerate(positions):
            start = min(pos) if pos else 0
            rows_e.append(emb[i, start:])
            rows_a.append(anc[i, start:])
        edit, anchor = torch.cat(rows_e), torch.cat(rows_a)
        preserve = model.encode(kept).flatten(0, 1) if kept else None
        edited = []
        for name, attn in cross_attention_modules(model.unet).items():
            for proj in ("to_k", "to_v"):
                lin = getattr(attn, proj)
                lin.weight.copy_(uce_closed_form(lin.weight, edit, anchor, preserve, hp["lam"]))
                edited.append(f"{name}.{proj}.weight")
        return {"edited": edited, "concept_words": words, "n_edit_vectors": int(edit.shape[0]),
                "n_preserve_vectors": 0 if preserve is None else int(preserve.shape[0])}
