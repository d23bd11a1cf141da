"""SPM, the semipermeable membrane (Lyu et al., CVPR 2024, "One-dimensional Adapter to Rule Them All:
Concepts, Diffusion Models and Erasing Applications").

A 1-dimensional adapter (the membrane) on every cross-attention key/value projection W (Sec. 3.1):
    h = W x + γ · u (vᵀ x),   u ∈ R^{d_out} (zero-initialized), v ∈ R^{d_in}
trained, with the UNet frozen, by ESD-style erasure plus latent anchoring (Sec. 3.2, Eq. 3-5):
    L_erase  = ‖ ε_θ'(x_t, c_tar, t) − sg[ ε_θ(x_t, c_sur, t) − η (ε_θ(x_t, c_tar, t) − ε_θ(x_t, c_sur, t)) ] ‖²
    L_anchor = E_{c_anc} ‖ ε_θ'(x_t, c_anc, t) − sg[ ε_θ(x_t, c_anc, t) ] ‖²
    L = L_erase + λ L_anchor
θ' the model with the membrane, θ without (the same UNet with γ = 0: no copy); c_sur the surrogate
("" by default, as ESD), c_anc the anchor concepts (here the retain conditions; the paper samples
them from a vocabulary). x_t: forget / retain images noised (the paper's latents are the model's).
Facilitated transport at inference (Sec. 3.3): the membrane's strength follows the prompt's
similarity to the erased concept, per prompt b,
    s_b = max_{j, k} cos(e_{b,j}, e*_k),   γ_b = clip((s_b − τ) / (1 − τ), 0, 1)
e_{b,j} the prompt's token embeddings (the K/V projections' input), e*_k the concept's token
embeddings in the forget prompts. The paper's rate is a function of the same similarity; its exact
form is replaced by this linear ramp, with τ the largest similarity any retain prompt reaches (so
retain prompts pass the membrane untouched, γ = 0) unless given.
Paper (SD 1.4): rank 1, η 1, thousands of iterations (its lr / λ values were not re-checked here).
Tiny-model defaults: lr 1e-2 (only 2·(d_in + d_out) weights per layer), 100 steps, batch 8, λ 1, η 1.
Text models only (the membrane reads the text embedding). The adapter stays in the UNet after
`run` (it is the method's result; `spm_membranes(unet)` lists them).
"""
from __future__ import annotations

import torch
from torch import nn

from unlearnx._modes import training_mode
from unlearnx.diffusion import denoise_mse, noisy_latents
from unlearnx.diffusion.adapters import cross_attention_modules
from unlearnx.methods.diffusion.base import DiffusionMethod, concept_token_positions, concept_words
from unlearnx.methods.diffusion.esd import esd_target
from unlearnx.methods.diffusion.gradients import cycle_batches
from unlearnx.methods.registry import register_method

__all__ = ["SPM", "SPMLinear", "spm_membranes", "transport_rate"]


def transport_rate(x: torch.Tensor, concept: torch.Tensor, tau: float) -> torch.Tensor:
    """γ_b = clip((max_{j,k} cos(x_{b,j}, concept_k) − τ) / (1 − τ), 0, 1); x [B, L, D], concept [K, D] -> [B]."""
    if x.dim() != 3 or concept.dim() != 2 or x.shape[-1] != concept.shape[-1]:
        raise ValueError(f"x must be [B, L, D] and concept [K, D], got {tuple(x.shape)} and {tuple(concept.shape)}")
    if not tau < 1.0:
        raise ValueError(f"tau must be < 1, got {tau!r}")
    sim = torch.einsum("bld,kd->blk", nn.functional.normalize(x.float(), dim=-1),
                       nn.functional.normalize(concept.float(), dim=-1))
    s = sim.flatten(1).amax(1)
    return ((s - tau) / (1 - tau)).clamp(0.0, 1.0)


class SPMLinear(nn.Module):
    """W x + γ(x) u (vᵀ x) around a Linear W (see the module docstring). ``mode``: "transport"
    (γ from the input's similarity to ``concept``), "on" (γ = 1, training), "off" (γ = 0)."""

    def __init__(self, base: nn.Linear, concept: torch.Tensor, tau: float = 0.0, *, generator=None):
        super().__init__()
        self.base = base
        self.u = nn.Parameter(torch.zeros(base.out_features, device=base.weight.device))
        self.v = nn.Parameter(torch.randn(base.in_features, generator=generator).to(base.weight.device)
                              / base.in_features ** 0.5)
        self.register_buffer("concept", concept.detach().clone())
        self.tau = float(tau)
        self.mode = "transport"

    def forward(self, x):
        out = self.base(x)
        if self.mode == "off":
            return out
        delta = (x @ self.v).unsqueeze(-1) * self.u
        if self.mode == "on":
            return out + delta
        gamma = transport_rate(x, self.concept, self.tau).to(out.dtype)
        return out + gamma.view(-1, *([1] * (out.dim() - 1))) * delta


def spm_membranes(unet: nn.Module) -> list[SPMLinear]:
    return [m for m in unet.modules() if isinstance(m, SPMLinear)]


def _set_mode(unet, mode):
    for m in spm_membranes(unet):
        m.mode = mode


@register_method("spm", task="diffusion")
class SPM(DiffusionMethod):
    """SPM (see the module docstring: 1-dim membrane, erasure + latent anchoring, facilitated transport)."""

    model_kinds = ("text",)
    kind_reason = "the membrane sits on the cross-attention"

    paper = "Lyu et al., 'One-dimensional Adapter to Rule Them All: Concepts, Diffusion Models and Erasing Applications', CVPR 2024"
    requires = ("forget", "retain")
    defaults = {"steps": 100, "lr": 1e-2, "batch_size": 8, "anchor_weight": 1.0, "negative_guidance": 1.0,
                "surrogate": "", "tau": None}

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        self.check_model_kind(model)
        targets = self.forget_conditions(model, forget)
        anchors = self.retain_conditions(model, retain, targets)
        if not anchors:
            raise ValueError("spm needs retain data with prompts other than the forget ones (latent anchoring)")
        unet = model.unet
        if spm_membranes(unet):
            raise ValueError("the UNet already carries SPM membranes")
        words = concept_words(targets, anchors)
        with torch.no_grad():
            emb = model.encode(targets)
            pos = concept_token_positions(model, targets, words)
            concept = torch.cat([emb[b, p] for b, p in enumerate(pos) if p])
            if hp["tau"] is None:
                probe = transport_rate(model.encode(anchors), concept, 0.0)
                tau = min(float(probe.max()), 0.99)
            else:
                tau = float(hp["tau"])
        gen = torch.Generator().manual_seed(seed)
        unet.requires_grad_(False)
        params = []
        for attn in cross_attention_modules(unet).values():
            for proj in ("to_k", "to_v"):
                mem = SPMLinear(getattr(attn, proj), concept, tau, generator=gen)
                setattr(attn, proj, mem)
                params += [mem.u, mem.v]
        opt = torch.optim.Adam(params, lr=hp["lr"])
        f_iter = cycle_batches(forget, batch_size=hp["batch_size"], seed=seed)
        r_iter = cycle_batches(retain, batch_size=hp["batch_size"], seed=seed + 1)
        log = {"erase_loss": [], "anchor_loss": []}
        with training_mode(unet, True):
            for step in range(hp["steps"]):
                xf, cf = next(f_iter)
                xr, cr = next(r_iter)
                xt_f, t_f, _ = noisy_latents(model, model.to_latents(xf))
                xt_r, t_r, _ = noisy_latents(model, model.to_latents(xr))
                emb_f, emb_r = model.encode(cf), model.encode(cr)
                emb_s = model.encode([hp["surrogate"]] * len(cf))
                _set_mode(unet, "off")
                with torch.no_grad():
                    target = esd_target(model.predict_noise(xt_f, t_f, emb_s), model.predict_noise(xt_f, t_f, emb_f),
                                        hp["negative_guidance"])
                    anchor_target = model.predict_noise(xt_r, t_r, emb_r)
                _set_mode(unet, "on")
                le = denoise_mse(model, model.predict_noise(xt_f, t_f, emb_f), target, t_f)
                la = denoise_mse(model, model.predict_noise(xt_r, t_r, emb_r), anchor_target, t_r)
                loss = le + hp["anchor_weight"] * la
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                log["erase_loss"].append(le.item())
                log["anchor_loss"].append(la.item())
                if progress and (step + 1) % 25 == 0:
                    print(f"spm step {step + 1} erase {le:.4f} anchor {la:.4f}", flush=True)
        _set_mode(unet, "transport")
        for p in params:
            p.requires_grad_(False)
        return {**log, "concept_words": words, "tau": tau, "trainable_params": sum(p.numel() for p in params)}
