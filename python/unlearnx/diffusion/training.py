"""Diffusion loss, training loop and classifier-free-guided sampling for a `DiffusionModel`.

Data: a map-style Dataset whose items are ``(image, condition)`` (or longer tuples whose first
two entries are these): image float [C, H, W] in [0, 1], condition a prompt string (text model)
or a class id (class model). ``diffusion_loader`` batches them (prompts stay a list of str).
"""
from __future__ import annotations

import math
import time

import torch
from torch.utils.data import DataLoader, Dataset

from unlearnx._modes import training_mode
from unlearnx.diffusion.model import DiffusionModel

__all__ = ["diffusion_loss", "denoise_mse", "diffusion_loader", "train_diffusion", "sample", "ddim_partial_sample",
           "conditions_of", "drop_conditions", "noisy_latents"]


def _check_model(model):
    if not isinstance(model, DiffusionModel):
        raise TypeError(f"model must be an unlearnx.diffusion.DiffusionModel, got {type(model).__name__}")


def _collate(items):
    images = torch.stack([torch.as_tensor(it[0], dtype=torch.float32) for it in items])
    conds = [it[1] for it in items]
    conds = [int(c) if isinstance(c, torch.Tensor) else c for c in conds]
    return images, conds


def diffusion_loader(data, *, batch_size: int, seed: int = 0, shuffle: bool = True) -> DataLoader:
    """A DataLoader of (images [B, C, H, W], conditions list) over a Dataset of (image, condition);
    a DataLoader is returned as given."""
    if isinstance(data, DataLoader):
        return data
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise TypeError(f"data must be a map-style Dataset of (image, condition), got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("data is empty")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    g = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=g, collate_fn=_collate)


def conditions_of(data) -> list:
    """The distinct conditions of a Dataset of (image, condition), in first-seen order
    (a dataset's ``conditions`` attribute is used when it has one)."""
    if isinstance(data, DataLoader):
        data = data.dataset
    conds = getattr(data, "conditions", None)
    if conds is None:
        conds = [data[i][1] for i in range(len(data))]
    out = []
    for c in conds:
        c = int(c) if isinstance(c, torch.Tensor) else c
        if c not in out:
            out.append(c)
    return out


def drop_conditions(model: DiffusionModel, conditions: list, p: float, generator: torch.Generator | None = None) -> list:
    """Each condition replaced by the null condition with probability p (condition dropout for CFG)."""
    if p <= 0:
        return list(conditions)
    keep = torch.rand(len(conditions), generator=generator) >= p
    return [c if k else model.null_condition for c, k in zip(conditions, keep.tolist())]


def noisy_latents(model: DiffusionModel, x0: torch.Tensor, t: torch.Tensor | None = None,
                  noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, ε) with x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε, t ~ U{0..T−1} and ε ~ N(0, I) unless given."""
    B = x0.shape[0]
    if t is None:
        t = torch.randint(0, model.num_train_timesteps, (B,), device=x0.device)
    elif not isinstance(t, torch.Tensor):
        t = torch.full((B,), int(t), device=x0.device, dtype=torch.long)
    if noise is None:
        noise = torch.randn_like(x0)
    a = model.alpha_bar(t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, noise


def diffusion_loss(model: DiffusionModel, images: torch.Tensor, conditions, *, t=None, noise=None,
                   emb: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample denoising loss in the model's own parameterization (Ho et al. 2020, Eq. 14, L_simple,
    for an ε-model): ℓ_i = mean over pixels of (y − f_θ(x_t, c, t))² with x_t = sqrt(ᾱ_t) x0 +
    sqrt(1 − ᾱ_t) ε and y = ε (epsilon), v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x0 (v_prediction, Salimans &
    Ho 2022, the objective Stable Diffusion 2 was trained with) or x0 (sample): `model.training_target`.

    images: [B, C, H, W] in [0, 1] (encoded by the VAE for a latent model); conditions: B
    conditions (or `emb`, already encoded); t / noise: fixed timesteps / noise (default random).
    Returns Tensor [B].
    """
    _check_model(model)
    x0 = model.to_latents(images)
    x_t, t, noise = noisy_latents(model, x0, t, noise)
    if emb is None:
        emb = model.encode(conditions)
    out = model.model_output(x_t, t, emb)
    target = model.training_target(x0, noise, t)
    return (out.float() - target.float()).pow(2).flatten(1).mean(1)


def denoise_mse(model: DiffusionModel, eps_pred: torch.Tensor, eps_target: torch.Tensor, t) -> torch.Tensor:
    """Mean squared error between an ε prediction and an ε target, measured in the model's own output
    space (ε, v or x0): mean((s_t (ε_pred − ε_target))²) with s_t = `model.output_scale(t)`. For an
    ε-model it is the plain ε MSE; for a v-model it is the v MSE the model was trained with, as the
    methods' reference implementations compute their losses on the UNet's output (an ε-space MSE would
    down-weight step t by ᾱ_t, i.e. ignore the noisy steps that decide a sample's layout and colours)."""
    return (model.output_scale(t, eps_pred) * (eps_pred - eps_target)).pow(2).mean()


def train_diffusion(model: DiffusionModel, data, *, steps: int = 1500, lr: float = 1e-3, batch_size: int = 64,
                    cond_drop: float = 0.1, weight_decay: float = 0.0, warmup: int = 50, seed: int = 0,
                    params=None, progress: bool = False) -> dict:
    """Train the UNet in place with L_simple and condition dropout (classifier-free guidance training,
    Ho & Salimans 2022): each condition is replaced by the null one with probability `cond_drop`.

    AdamW(lr, weight_decay), linear warm-up over `warmup` steps then cosine decay to 0, gradient
    norm clipped at 1; `steps` optimizer steps over the shuffled data (seeded by `seed`).
    params: the parameters to train (default: every UNet parameter with requires_grad).
    The draws of t and ε run under torch's global RNG seeded to `seed` (the caller's RNG state is
    restored afterwards), so a run is reproducible from `seed` alone.
    Returns {"loss": [mean loss per 50 steps], "seconds": wall time}.
    """
    from unlearnx.methods.training import seeded  # here: unlearnx.methods imports this package

    _check_model(model)
    for key, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not 0.0 <= cond_drop < 1.0:
        raise ValueError(f"cond_drop must be in [0, 1), got {cond_drop!r}")
    loader = diffusion_loader(data, batch_size=batch_size, seed=seed)
    params = [p for p in (model.unet.parameters() if params is None else params) if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameter (params is empty or nothing requires grad)")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(seed + 1)
    losses, window, step = [], [], 0
    start = time.perf_counter()
    with seeded(seed, model.device), training_mode(model.unet, True):
        while step < steps:
            for images, conds in loader:
                conds = drop_conditions(model, conds, cond_drop, gen)
                loss = diffusion_loss(model, images.to(model.device), conds).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                window.append(loss.item())
                step += 1
                if len(window) == 50 or step == steps:
                    losses.append(sum(window) / len(window))
                    window = []
                    if progress:
                        print(f"step {step}/{steps} loss {losses[-1]:.4f}", flush=True)
                if step >= steps:
                    break
    return {"loss": losses, "seconds": time.perf_counter() - start}


def _make_scheduler(model: DiffusionModel, kind: str):
    from diffusers import DDIMScheduler, DDPMScheduler

    # The samplers are fed ε (DiffusionModel.predict_noise converts v / x0 outputs).
    cfg = {**dict(model.scheduler.config), "prediction_type": "epsilon"}
    if kind == "ddim":
        return DDIMScheduler.from_config(cfg)
    if kind == "ddpm":
        return DDPMScheduler.from_config(cfg)
    raise ValueError(f"scheduler must be 'ddim' or 'ddpm', got {kind!r}")


def _guided_eps(model, x, t, emb_c, emb_u, guidance_scale):
    """ε̃ = ε_u + w (ε_c − ε_u) (Ho & Salimans 2022); one batched UNet call for both."""
    if guidance_scale == 1.0 or emb_u is None:
        return model.predict_noise(x, t, emb_c)
    both = model.predict_noise(torch.cat([x, x]), t, torch.cat([emb_u, emb_c]))
    eps_u, eps_c = both.chunk(2)
    return eps_u + guidance_scale * (eps_c - eps_u)


@torch.no_grad()
def sample(model: DiffusionModel, conditions, *, steps: int = 20, guidance_scale: float = 3.0,
           scheduler: str = "ddim", seed: int = 0, batch_size: int = 128, decode: bool = True) -> torch.Tensor:
    """Generate one image per condition with classifier-free guidance.

    DDIM (Song et al. 2021, η = 0, `steps` steps, default 20) or DDPM ancestral sampling over the
    model's noise schedule; ε̃ = ε_θ(x, ∅) + w (ε_θ(x, c) − ε_θ(x, ∅)) with w = `guidance_scale`
    (1 = no guidance). Initial noise is drawn from a CPU generator seeded by `seed`, so results do not
    depend on the batch size or the device's RNG. Returns images [N, C, H, W] in [0, 1] on the
    model's device (latents when decode=False).
    """
    _check_model(model)
    conditions = model.check_conditions(conditions)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(conditions), *model.latent_shape), generator=gen)
    outs = []
    with training_mode(model.unet, False):
        for lo in range(0, len(conditions), batch_size):
            conds = conditions[lo:lo + batch_size]
            sched = _make_scheduler(model, scheduler)
            sched.set_timesteps(steps)
            x = noise[lo:lo + batch_size].to(model.device) * sched.init_noise_sigma
            emb_c = model.encode(conds)
            emb_u = model.encode(model.null_conditions(len(conds))) if guidance_scale != 1.0 else None
            step_gen = torch.Generator().manual_seed(seed + 1 + lo)
            for t in sched.timesteps:
                eps = _guided_eps(model, sched.scale_model_input(x, t), t, emb_c, emb_u, guidance_scale)
                if scheduler == "ddpm":
                    x = sched.step(eps.cpu(), t, x.cpu(), generator=step_gen).prev_sample.to(model.device)
                else:
                    x = sched.step(eps, t, x).prev_sample
            outs.append(model.to_images(x) if decode else x)
    return torch.cat(outs)


@torch.no_grad()
def ddim_partial_sample(model: DiffusionModel, emb_c: torch.Tensor, emb_u: torch.Tensor | None, *,
                        steps: int, stop: int, guidance_scale: float = 3.0,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """Run `stop` of `steps` DDIM steps from noise under condition emb_c (with CFG), as ESD does to
    get x_t from the model's own distribution. Returns (x_t latents [B, ...], t) where t is the
    training timestep x_t is at (the DDIM timestep of step `stop`)."""
    if not 0 <= stop < steps:
        raise ValueError(f"stop must be in [0, steps), got {stop!r} with steps={steps}")
    sched = _make_scheduler(model, "ddim")
    sched.set_timesteps(steps)
    B = emb_c.shape[0]
    x = torch.randn((B, *model.latent_shape), generator=generator).to(model.device) * sched.init_noise_sigma
    for t in sched.timesteps[:stop]:
        eps = _guided_eps(model, x, t, emb_c, emb_u, guidance_scale)
        x = sched.step(eps, t, x).prev_sample
    return x, int(sched.timesteps[stop])


class ConditionedImages(Dataset):
    """A Dataset of (image, condition) from an image tensor [N, C, H, W] and N conditions."""

    def __init__(self, images: torch.Tensor, conditions):
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError("images must be a tensor [N, C, H, W]")
        conditions = conditions.tolist() if isinstance(conditions, torch.Tensor) else list(conditions)
        if len(conditions) != images.shape[0]:
            raise ValueError(f"conditions has {len(conditions)} entries but images has {images.shape[0]}")
        self.images = images
        self.conditions = conditions

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], self.conditions[i]


__all__.append("ConditionedImages")
