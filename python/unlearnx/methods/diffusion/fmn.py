"""Forget-Me-Not (Zhang et al., "Forget-Me-Not: Learning to Forget in Text-to-Image Diffusion
Models", CVPR Workshops 2024), attention re-steering.

On images of the concept (D_f) noised at random t, with the concept prompts as condition, minimize
the cross-attention scores of the concept's tokens over every cross-attention layer ℓ of the UNet
(Sec. 3, "Attention Re-steering"):

    L = Σ_ℓ ‖ A_ℓ[:, :, :, T_c] ‖²  (mean over batch, heads and pixels; summed over the concept tokens T_c)

with A_ℓ = softmax(Q Kᵀ / sqrt(d)) the attention probabilities of layer ℓ (captured with a diffusers
attention processor, unlearnx.diffusion.attention). The concept tokens are the words of the forget
prompts absent from the retain prompts (e.g. the style name), or `concept` when given.

Paper: 35 steps, lr 2e-6 on SD 1.5's UNet ("only_optimize_ca" trains the cross-attention). Tiny
defaults here: 35 steps (the paper's), lr 1e-3 (tiny UNets trained at 1e-3), cross-attention
projections trained (to_q and to_k: the only weights the attention scores depend on), batch 16.
"""
from __future__ import annotations

import itertools

import torch

from unlearnx._modes import training_mode
from unlearnx.diffusion import diffusion_loader, noisy_latents
from unlearnx.diffusion.adapters import TrainableUNet
from unlearnx.diffusion.attention import capture_cross_attention
from unlearnx.methods.diffusion.base import LORA_DEFAULTS, DiffusionMethod, concept_token_positions, concept_words
from unlearnx.methods.registry import register_method

__all__ = ["ForgetMeNot", "concept_attention_loss"]


def concept_attention_loss(maps: list[torch.Tensor], positions: list[list[int]]) -> torch.Tensor:
    """Σ_ℓ mean_{b, heads, pixels} Σ_{j ∈ T_c(b)} A_ℓ[b, h, p, j]² for maps [B, heads, N, L] per layer."""
    B = len(positions)
    sel = torch.zeros(B, maps[0].shape[-1], dtype=maps[0].dtype, device=maps[0].device)
    for b, pos in enumerate(positions):
        sel[b, pos] = 1.0
    total = 0.0
    for a in maps:
        total = total + (a.pow(2) * sel[:, None, None, :]).sum(-1).mean()
    return total


@register_method("fmn", task="diffusion")
class ForgetMeNot(DiffusionMethod):
    """Forget-Me-Not attention re-steering (see the module docstring)."""

    model_kinds = ("text",)
    kind_reason = "it re-steers cross-attention to concept tokens"

    paper = ("Zhang et al., 'Forget-Me-Not: Learning to Forget in Text-to-Image Diffusion Models', "
             "CVPR Workshops 2024")
    requires = ("forget",)
    defaults = {"steps": 35, "lr": 1e-3, "batch_size": 16, "concept": None, **LORA_DEFAULTS}

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        self.check_model_kind(model)
        prompts = self.forget_conditions(model, forget)
        if hp["concept"] is not None:
            if not isinstance(hp["concept"], str):
                raise ValueError(f"concept must be a string of the concept's words, got {hp['concept']!r}")
            words = hp["concept"].lower().split()
        else:
            words = concept_words(prompts, self.retain_conditions(model, retain, prompts))
        tr = TrainableUNet(model, "xattn", lora=hp["lora"], rank=hp["lora_rank"])
        opt = torch.optim.Adam(tr.params, lr=hp["lr"])
        batches = itertools.cycle(diffusion_loader(forget, batch_size=hp["batch_size"], seed=seed))
        losses = []
        try:
            with training_mode(model.unet, True), capture_cross_attention(model.unet) as maps:
                for step in range(hp["steps"]):
                    x, conds = next(batches)
                    positions = concept_token_positions(model, conds, words)
                    if not any(positions):
                        raise ValueError(f"no token of the concept words {words} occurs in the forget prompts")
                    x_t, t, _ = noisy_latents(model, model.to_latents(x.to(model.device)))
                    maps.clear()
                    model.predict_noise(x_t, t, model.encode(conds))
                    loss = concept_attention_loss(maps, positions)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    losses.append(loss.item())
                    if progress and (step + 1) % 10 == 0:
                        print(f"fmn step {step + 1}/{hp['steps']} attention {loss:.4f}", flush=True)
        finally:
            info = tr.finish()
        return {"loss": losses, "concept_words": words, **info}
