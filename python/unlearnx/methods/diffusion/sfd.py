"""SFD: Score Forgetting Distillation (Chen, Zhang & Zhou, ICLR 2025, "Score Forgetting Distillation:
A Swift, Data-Free Method for Machine Unlearning in Diffusion Models", arXiv 2409.11219).

Data-free: the pretrained ε-model φ (frozen teacher) is distilled into a ONE-STEP generator G_θ while
the forget condition's score is aligned with a safe ("override") condition's. Three networks, all
initialised from φ (Sec. 3; Fig. 2 of the paper):

* generator (θ): x_g = G_θ(z, c) = (x_init − σ_init ε_θ(x_init, c, t_init)) / sqrt(ᾱ_init),
  x_init = σ_init z, z ~ N(0, I), σ_init = sqrt(1 − ᾱ_{t_init}): the x̂_0-prediction of the network
  at the fixed timestep t_init from pure (scaled) noise;
* fake score network (ψ): the score of the generator's own distribution, fitted on generated
  samples with the denoising loss (x_g stop-gradient, x_t = sqrt(ᾱ_t) x_g + σ_t ε):
      L_ψ = λ_r E_{c ∈ C_r} ‖ε − ε_ψ(x_t, c, t)‖² + λ_f E_{c_f} ‖ε − ε_ψ(x_t, c_f, t)‖²;
* teacher (φ): frozen; f_φ(x_t, c) = x̂_0 of ε_φ (optionally classifier-free guided, w).

Generator loss: Score identity Distillation's (SiD; Zhou et al., ICML 2024, the α-weighted
model-based loss SFD builds on), with f the x̂_0 predictions and per-sample normaliser
ω = mean|f_φ − x_g| (stop-gradient):
    d = f_φ(x_t, c_φ) − f_ψ(x_t, c_ψ),   L_SiD(x_g; c_φ, c_ψ) = dᵀ [(f_φ(x_t, c_φ) − x_g) − α d] / ω
    L_θ = λ_r E_{c ∈ C_r} L_SiD(G_θ(z, c); c, c)  +  λ_f E_{c_f} L_SiD(G_θ(z, c_f); c_o, c_f)
the second term is SFD's score-forgetting term: for the forget condition c_f the generator is
pulled toward the teacher's score of the OVERRIDE (safe) condition c_o ("cross-class score
distillation"), while the retain conditions are distilled unchanged. The gradient flows into θ
through x_g and x_t, i.e. through both score networks' inputs (their weights stay fixed in this
step). ψ and θ are updated alternately, one step each per iteration (as in the authors' reference
code). t ~ U{t_min, …, t_max − 1}. Equation numbers: the paper's own numbering was not available
to re-check here; the losses follow its Sec. 3 (Fig. 2) and the authors' reference implementation
(github.com/tqch/score-forgetting-distillation, read, not copied).

What is returned: ``model.unet`` holds the generator's weights θ. G_θ is a one-step sampler at
t_init: generate with :func:`one_step_sample` (the paper's use). θ is trained only at t = t_init,
so the multi-step `unlearnx.diffusion.sample` run on the same weights is NOT the paper's
generator (docs/diffusion-erasure.md measures both on the tiny model).

Override condition c_o: ``anchor=`` (one condition for every forget condition), ``override=`` (text
models: the concept's words in each forget prompt replaced by this phrase, the SD experiments'
"concept_to_forget -> concept_to_override", e.g. "brad pitt" -> "a middle aged man"), or by default
as Concept Ablation's anchors (`concept_anchors`: the prompt without the concept's words, or the
first retain class of a class model; the CIFAR-10 config overrides with one fixed class too).
Retain conditions C_r: the conditions of ``retain`` (only they are read: data-free), or for a
class model without retain every class but the forget ones.

Paper / reference code, CIFAR-10 DDPM (T = 1000): α 1.2, t_init 440, t ∈ [38, 712), Adam lr 1e-5
(both networks, β = (0, 0.999)), gradient values clipped at 1, λ_r 1, λ_f 0.01, batch 128, 50k
iterations, no guidance; Stable Diffusion: α 1, t_init 625, lr 1e-6 (G) / 3e-6 (ψ), λ_f 1, CFG 4.5.
Tiny-model defaults here: lr 1e-4 (G) and 1e-3 (ψ), 60 iterations, batch 8 + 8, λ_f 1; α, t_init,
t range, Adam β and the clipping are the paper's. Deviations: losses are means over pixels (the
reference code sums; Adam is scale invariant, only the value clip sees the difference); the teacher's
guidance is the only guidance (SiD-LSG's guidance of the fake network is not implemented); with
lora=True the generator trains a LoRA adapter (teacher = same UNet, adapter disabled: no copy) and
the fake network a LoRA adapter on its own copy; with full fine-tuning three UNets are in memory
(generator, frozen teacher copy, fake network).
"""
from __future__ import annotations

import copy
import math

import torch

from unlearnx._modes import training_mode
from unlearnx.diffusion import DiffusionModel, noisy_latents
from unlearnx.diffusion.adapters import TrainableUNet
from unlearnx.methods.diffusion.base import LORA_DEFAULTS, DiffusionMethod, concept_words
from unlearnx.methods.diffusion.concept_ablation import concept_anchors
from unlearnx.methods.diffusion.gradients import predicted_x0
from unlearnx.methods.registry import register_method

__all__ = ["SFD", "generator_x0", "one_step_sample", "sid_generator_loss"]

_PAPER = ("Chen, Zhang & Zhou, 'Score Forgetting Distillation: A Swift, Data-Free Method for Machine Unlearning "
          "in Diffusion Models', ICLR 2025")


def _check_t_init(model, t_init) -> int:
    T = model.num_train_timesteps
    if isinstance(t_init, bool) or not isinstance(t_init, int) or not 0 < t_init < T:
        raise ValueError(f"t_init must be an integer timestep in [1, {T - 1}], got {t_init!r}")
    return t_init


def generator_x0(model: DiffusionModel, z: torch.Tensor, emb: torch.Tensor, t_init: int) -> torch.Tensor:
    """SFD's one-step generator G(z, c): x̂_0 of ``model`` at timestep t_init from x_init = σ_init z,
    σ_init = sqrt(1 − ᾱ_{t_init}) (gradient kept: the generator step backpropagates through it)."""
    t = torch.full((z.shape[0],), t_init, device=z.device, dtype=torch.long)
    a = model.scheduler.alphas_cumprod.to(z.device, torch.float32)[t_init]
    x_init = (1 - a).sqrt() * z
    return predicted_x0(model, x_init, t, model.predict_noise(x_init, t, emb))


def sid_generator_loss(f_real: torch.Tensor, f_fake: torch.Tensor, x_g: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-sample SiD generator loss (see the module docstring), means over pixels:
    (f_φ − f_ψ) · [(f_φ − x_g) − α (f_φ − f_ψ)] / ω,  ω = mean|f_φ − x_g| (stop-gradient, ≥ 1e-5).
    Returns Tensor [B]."""
    dims = tuple(range(1, x_g.dim()))
    with torch.no_grad():
        omega = (f_real - x_g).abs().float().mean(dims).clamp_min(1e-5)
    d = f_real - f_fake
    return (d * ((f_real - x_g) - alpha * d)).float().mean(dims) / omega


@torch.no_grad()
def one_step_sample(model: DiffusionModel, conditions, *, t_init: int = 440, seed: int = 0, batch_size: int = 128,
                    decode: bool = True) -> torch.Tensor:
    """Images from SFD's one-step generator: G(z, c) for z ~ N(0, I) drawn from a CPU generator seeded
    by `seed` (one image per condition; `t_init` must be the run's, ``result.log["t_init"]``).
    Returns [N, C, H, W] in [0, 1] on the model's device (latents when decode=False)."""
    conditions = model.check_conditions(conditions)
    _check_t_init(model, t_init)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    z = torch.randn((len(conditions), *model.latent_shape), generator=torch.Generator().manual_seed(seed))
    outs = []
    with training_mode(model.unet, False):
        for lo in range(0, len(conditions), batch_size):
            conds = conditions[lo:lo + batch_size]
            x0 = generator_x0(model, z[lo:lo + batch_size].to(model.device), model.encode(conds), t_init)
            outs.append(model.to_images(x0) if decode else x0)
    return torch.cat(outs)


def override_prompts(forget_prompts, retain_prompts, override: str) -> list[str]:
    """Each forget prompt with its run of concept words (`concept_words`) replaced by `override`."""
    words = set(concept_words(forget_prompts, retain_prompts))
    out = []
    for p in forget_prompts:
        kept, replaced = [], False
        for w in p.split():
            if w.lower().strip(".,;:!?") in words:
                if not replaced:
                    kept.append(override)
                    replaced = True
            else:
                kept.append(w)
                replaced = False
        out.append(" ".join(kept))
    return out


@register_method("sfd", task="diffusion")
class SFD(DiffusionMethod):
    """SFD: score forgetting distillation into a one-step generator (see the module docstring)."""

    paper = _PAPER
    requires = ("forget",)
    defaults = {"iterations": 60, "lr": 1e-4, "fake_lr": 1e-3, "batch_size": 8, "alpha": 1.2, "t_init": 440,
                "t_min": 38, "t_max": 712, "forget_weight": 1.0, "guidance_scale": 1.0, "grad_clip": 1.0,
                "anchor": None, "override": None, "part": "all", **LORA_DEFAULTS}

    def validate(self):
        hp = self.hparams
        if hp["iterations"] < 1:
            raise ValueError(f"iterations must be >= 1, got {hp['iterations']!r}")
        if hp["fake_lr"] <= 0:
            raise ValueError(f"fake_lr must be > 0, got {hp['fake_lr']!r}")
        if hp["t_init"] < 1:
            raise ValueError(f"t_init must be >= 1, got {hp['t_init']!r}")
        if hp["t_min"] >= hp["t_max"]:
            raise ValueError(f"t_min must be < t_max, got t_min={hp['t_min']!r}, t_max={hp['t_max']!r}")
        if hp["grad_clip"] <= 0:
            raise ValueError(f"grad_clip must be > 0, got {hp['grad_clip']!r}")
        if hp["anchor"] is not None and hp["override"] is not None:
            raise ValueError("give at most one of anchor= and override=")
        if hp["override"] is not None and (not isinstance(hp["override"], str) or not hp["override"].strip()):
            raise ValueError(f"override must be a non-empty string (a phrase for the concept), got {hp['override']!r}")

    def _anchors(self, model, forget_conds, retain_conds) -> list:
        hp = self.hparams
        if hp["override"] is not None:
            if model.kind != "text":
                raise ValueError("override= replaces words of prompts: text-conditional models only "
                                 "(use anchor=<class id> for a class model)")
            return override_prompts(forget_conds, retain_conds, hp["override"])
        return concept_anchors(model, forget_conds, retain_conds, hp["anchor"])

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        T = model.num_train_timesteps
        t_init = _check_t_init(model, hp["t_init"])
        if hp["t_max"] > T:
            raise ValueError(f"t_max must be <= the model's {T} training timesteps, got {hp['t_max']!r}")
        targets = self.forget_conditions(model, forget)
        kept = self.retain_conditions(model, retain, targets)
        if not kept:
            if model.kind != "class":
                raise ValueError("sfd on a text-conditional model needs retain= with prompts other than the forget "
                                 "ones (the concepts distilled unchanged; only their prompts are read)")
            kept = [c for c in range(model.num_classes) if c not in targets]
        anchors = self._anchors(model, targets, kept)
        # ψ starts from the teacher: copy the UNet before the generator's adapter / training touches it
        fake = DiffusionModel(copy.deepcopy(model.unet), model.scheduler, text_encoder=model.text_encoder,
                              tokenizer=model.tokenizer, vae=model.vae,
                              num_classes=model.num_classes if model.kind == "class" else None).to(model.device)
        gen_tr = TrainableUNet(model, hp["part"], lora=hp["lora"], rank=hp["lora_rank"], teacher=True)
        fake_tr = TrainableUNet(fake, "all", lora=hp["lora"], rank=hp["lora_rank"])
        opt_g = torch.optim.Adam(gen_tr.params, lr=hp["lr"], betas=(0.0, 0.999), eps=1e-8)
        opt_f = torch.optim.Adam(fake_tr.params, lr=hp["fake_lr"], betas=(0.0, 0.999), eps=1e-8)
        gen = torch.Generator().manual_seed(seed)
        B, dev, shape = hp["batch_size"], model.device, model.latent_shape
        w, alpha, lam_f = hp["guidance_scale"], hp["alpha"], hp["forget_weight"]

        def draw(conds):
            return [conds[i] for i in torch.randint(len(conds), (B,), generator=gen).tolist()]

        def randn():
            return torch.randn((B, *shape), generator=gen).to(dev)

        def timesteps():
            return torch.randint(hp["t_min"], hp["t_max"], (B,), generator=gen).to(dev)

        def teacher_x0(x_t, t, emb, emb_null):
            eps = gen_tr.teacher_noise(x_t, t, emb, grad_input=True)
            if w != 1.0:
                eps_u = gen_tr.teacher_noise(x_t, t, emb_null, grad_input=True)
                eps = eps_u + w * (eps - eps_u)
            return predicted_x0(model, x_t, t, eps)

        log = {"fake_loss": [], "retain_loss": [], "forget_loss": []}
        try:
            with training_mode(model.unet, True), training_mode(fake.unet, True):
                for it in range(hp["iterations"]):
                    cr, pick = draw(kept), torch.randint(len(targets), (B,), generator=gen).tolist()
                    cf, co = [targets[i] for i in pick], [anchors[i] for i in pick]
                    with torch.no_grad():
                        emb_r, emb_f, emb_o = model.encode(cr), model.encode(cf), model.encode(co)
                        emb_null = model.encode(model.null_conditions(B)) if w != 1.0 else None
                    # ψ step: denoising loss on the generator's samples (retain and forget conditions)
                    for p in fake_tr.params:
                        p.requires_grad_(True)
                    lf_total = 0.0
                    for emb, lam in ((emb_r, 1.0), (emb_f, lam_f)):
                        if lam == 0:
                            continue
                        with torch.no_grad():
                            x_g = generator_x0(model, randn(), emb, t_init)
                        x_t, t, eps = noisy_latents(model, x_g, timesteps(), randn())
                        loss = (fake.predict_noise(x_t, t, emb) - eps).pow(2).mean()
                        (lam * loss).backward()
                        lf_total += lam * loss.item()
                    torch.nn.utils.clip_grad_value_(fake_tr.params, hp["grad_clip"])
                    opt_f.step()
                    opt_f.zero_grad(set_to_none=True)
                    # θ step: SiD loss; forget: teacher at the override condition, fake at the forget one
                    for p in fake_tr.params:
                        p.requires_grad_(False)
                    parts = {}
                    for name, emb_g, emb_phi, lam in (("retain", emb_r, emb_r, 1.0), ("forget", emb_f, emb_o, lam_f)):
                        if lam == 0:
                            parts[name] = 0.0
                            continue
                        x_g = generator_x0(model, randn(), emb_g, t_init)
                        x_t, t, _ = noisy_latents(model, x_g, timesteps(), randn())
                        f_real = teacher_x0(x_t, t, emb_phi, emb_null)
                        f_fake = predicted_x0(model, x_t, t, fake.predict_noise(x_t, t, emb_g))
                        loss = sid_generator_loss(f_real, f_fake, x_g, alpha).mean()
                        (lam * loss).backward()
                        parts[name] = loss.item()
                    torch.nn.utils.clip_grad_value_(gen_tr.params, hp["grad_clip"])
                    opt_g.step()
                    opt_g.zero_grad(set_to_none=True)
                    if not all(math.isfinite(v) for v in (lf_total, *parts.values())):
                        raise FloatingPointError(f"sfd: non-finite loss at iteration {it + 1} "
                                                 f"(fake {lf_total}, generator {parts}); lower lr / fake_lr")
                    log["fake_loss"].append(lf_total)
                    log["retain_loss"].append(parts["retain"])
                    log["forget_loss"].append(parts["forget"])
                    if progress and (it + 1) % 20 == 0:
                        print(f"sfd it {it + 1}/{hp['iterations']} fake {lf_total:.4f} retain {parts['retain']:.4f} "
                              f"forget {parts['forget']:.4f}", flush=True)
        finally:
            info = gen_tr.finish()
            fake_tr.finish()
            for p in fake.unet.parameters():
                p.requires_grad_(False)
        return {**log, **info, "t_init": t_init, "one_step": True, "targets": targets,
                "anchors": sorted(set(map(str, anchors))), "retain_conditions": len(kept)}
