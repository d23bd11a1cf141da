"""Capturing the UNet's cross-attention probabilities through diffusers attention processors.

``capture_cross_attention(unet)`` installs, on every cross-attention layer, a processor that
computes the attention probabilities softmax(q kᵀ / sqrt(d)) with the layer's own projections
(``attn.get_attention_scores``, differentiable) and stores them, then delegates the layer's output
to the processor that was there before, so the model's outputs are unchanged. Used by
Forget-Me-Not's attention re-steering loss; the original processors are restored on exit.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from unlearnx.diffusion.adapters import cross_attention_modules

__all__ = ["capture_cross_attention"]


class _CaptureProcessor:
    def __init__(self, inner, store: list):
        self.inner = inner
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        h = hidden_states
        if h.ndim == 4:
            b, c, hh, ww = h.shape
            h = h.view(b, c, hh * ww).transpose(1, 2)
        if attn.group_norm is not None:
            h = attn.group_norm(h.transpose(1, 2)).transpose(1, 2)
        ctx = encoder_hidden_states if encoder_hidden_states is not None else h
        if attn.norm_cross and encoder_hidden_states is not None:
            ctx = attn.norm_encoder_hidden_states(ctx)
        q = attn.head_to_batch_dim(attn.to_q(h))
        k = attn.head_to_batch_dim(attn.to_k(ctx))
        probs = attn.get_attention_scores(q, k, None)  # [B * heads, N_pixels, L_tokens]
        self.store.append(probs.view(-1, attn.heads, *probs.shape[1:]))
        return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                          attention_mask=attention_mask, temb=temb, **kwargs)


@contextmanager
def capture_cross_attention(unet: torch.nn.Module):
    """``with capture_cross_attention(unet) as maps:`` every forward inside appends, per
    cross-attention layer, its probabilities [B, heads, N_pixels, L_tokens] to the list ``maps``
    (clear it between forwards). Raises ValueError if the UNet has no cross-attention."""
    mods = cross_attention_modules(unet)
    if not mods:
        raise ValueError("the UNet has no cross-attention layer (a class-conditional UNet2DModel?)")
    store: list[torch.Tensor] = []
    old = {n: m.processor for n, m in mods.items()}
    try:
        for n, m in mods.items():
            m.set_processor(_CaptureProcessor(old[n], store))
        yield store
    finally:
        for n, m in mods.items():
            m.set_processor(old[n])
