"""AdvUnlearn: Zhang et al., "Defensive Unlearning with Adversarial Training for Robust Concept
Erasure in Diffusion Models", NeurIPS 2024.

Bi-level adversarial training (the paper's Eq. 3 / Eq. 5):

    min_θ  E[ ℓ_u(θ, c*) + γ ℓ_r(θ, C_r) ],   c* = argmin_{c'} ℓ_atk(θ, c')  (inner: the attack)

* inner (lower level): the UnlearnDiffAtk objective against the CURRENT model — k prefix embeddings
  c' prepended to the concept prompt, `attack_steps` Adam steps minimising the denoising loss of the
  forget images (unlearnx.diffusion.attacks); continuous (the fast variant) or projected to tokens
  (attack_project=True);
* outer (upper level): ℓ_u = ESD's loss on the adversarial prompt,
  ‖ε_θ(x_t, c*) − (ε_o(x_t, ∅) − η (ε_o(x_t, c) − ε_o(x_t, ∅)))‖² (ESD Eq. 3; x_t by partial DDIM
  sampling under c, as ESD), plus the utility-retaining regularizer
  ℓ_r = ‖ε_θ(x_t^r, c_r) − ε_o(x_t^r, c_r)‖² on retain prompts c_r (noisy retain images);
* θ = the text encoder (the paper's choice: the erasure then travels as a plug-in text encoder,
  see :func:`save_text_encoder` / :func:`load_text_encoder`) or the UNet's cross-attention
  (train="unet"). ε_o: the original model (frozen text encoder copy / frozen UNet copy).

The paper trains SD 1.4's text encoder with ESD's settings (lr 1e-5, η 1, 50 DDIM steps) and a
multi-step inner attack (with a one-step "fast" variant); the defaults below are tiny-model choices
(not the paper's): lr 1e-4, 100 iterations, 5 inner attack steps of k = 2 continuous tokens, γ 1.0,
η 1.0, start guidance 3, 20 DDIM steps. Deviation from ESD: x_t is sampled with the ORIGINAL text
encoder's conditioning (ESD samples with the model being trained; here the trained part is the
text encoder, so the UNet sampling under the original prompt keeps the erasure target fixed).
"""
from __future__ import annotations

import copy
import os

import torch

from unlearnx._modes import training_mode
from unlearnx.diffusion import ddim_partial_sample, denoise_mse, noisy_latents
from unlearnx.diffusion.adapters import TrainableUNet
from unlearnx.diffusion.attacks import encode_prefixed, optimize_prefix
from unlearnx.methods.diffusion.base import DiffusionMethod
from unlearnx.methods.diffusion.esd import esd_target
from unlearnx.methods.registry import register_method

__all__ = ["AdvUnlearn", "save_text_encoder", "load_text_encoder"]


def save_text_encoder(model, path: str | os.PathLike) -> None:
    """Write the model's text encoder weights as one safetensors file (the AdvUnlearn plug-in):
    another pipeline of the same family loads it with :func:`load_text_encoder`."""
    from safetensors.torch import save_file

    if model.text_encoder is None:
        raise ValueError("model has no text encoder (a class-conditional model)")
    path = os.fspath(path)
    tmp = path + ".tmp"
    save_file({k: v.detach().contiguous().cpu() for k, v in model.text_encoder.state_dict().items()}, tmp)
    os.replace(tmp, path)


def load_text_encoder(model, path: str | os.PathLike) -> None:
    """Load a text-encoder plug-in written by :func:`save_text_encoder` into `model` (in place);
    every tensor must match by name and shape."""
    from safetensors.torch import load_file

    if model.text_encoder is None:
        raise ValueError("model has no text encoder (a class-conditional model)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path {os.fspath(path)!r} is not a file")
    state = load_file(os.fspath(path))
    own = model.text_encoder.state_dict()
    if state.keys() != own.keys():
        raise ValueError(f"the plug-in's tensors do not match this text encoder "
                         f"(missing {sorted(own.keys() - state.keys())[:3]}, extra {sorted(state.keys() - own.keys())[:3]})")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise ValueError(f"plug-in tensor {k} has shape {list(v.shape)}, the text encoder {list(own[k].shape)}")
    model.text_encoder.load_state_dict(state)


@register_method("advunlearn", task="diffusion")
class AdvUnlearn(DiffusionMethod):
    """AdvUnlearn (see the module docstring): ESD on adversarial prompts found by an inner attack,
    with a retain-prompt utility regularizer; trains the text encoder (default) or the UNet."""

    model_kinds = ("text",)
    kind_reason = "it attacks and trains prompts"

    paper = "Zhang et al., 'Defensive Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion Models', NeurIPS 2024"
    requires = ("forget", "retain")
    defaults = {"iterations": 100, "lr": 1e-4, "batch_size": 4, "negative_guidance": 1.0, "start_guidance": 3.0,
                "ddim_steps": 20, "retain_weight": 1.0, "attack_k": 2, "attack_steps": 5, "attack_lr": 0.05,
                "attack_project": False, "train": "text_encoder"}

    def validate(self):
        hp = self.hparams
        if hp["train"] not in ("text_encoder", "unet"):
            raise ValueError(f"train must be 'text_encoder' or 'unet', got {hp['train']!r}")
        for key in ("iterations", "batch_size", "ddim_steps", "attack_k", "attack_steps"):
            if hp[key] < 1:
                raise ValueError(f"{key} must be >= 1, got {hp[key]!r}")

    def run(self, model, *, forget, retain, seed, progress):
        self.check_model_kind(model)
        hp = self.hparams
        concepts = self.forget_conditions(model, forget)
        f_images, f_conds = _images_conditions(forget)
        r_images, r_conds = _images_conditions(retain)
        gen = torch.Generator().manual_seed(seed)
        B = hp["batch_size"]
        teacher_te = copy.deepcopy(model.text_encoder).requires_grad_(False).eval()
        if hp["train"] == "text_encoder":
            tr = None
            params = list(model.text_encoder.parameters())
            model.text_encoder.requires_grad_(True)
            teacher_noise = model.predict_noise  # the UNet is not trained: it is its own teacher
        else:
            tr = TrainableUNet(model, "xattn", teacher=True)
            params = tr.params
            teacher_noise = tr.teacher_noise
        opt = torch.optim.Adam(params, lr=hp["lr"])

        def teacher_encode(conds):
            return teacher_te(model.tokenize(conds)).last_hidden_state

        log = {"loss_u": [], "loss_r": [], "attack_loss": []}
        try:
            for it in range(hp["iterations"]):
                # inner: the attack against the current model (text encoder in eval mode, no grad to θ)
                with training_mode(model.text_encoder, False):
                    adv, atk_losses, _ = optimize_prefix(
                        model, f_images, f_conds, k=hp["attack_k"], steps=hp["attack_steps"], lr=hp["attack_lr"],
                        batch_size=B, seed=int(torch.randint(2 ** 31 - 1, (1,), generator=gen)),
                        project=hp["attack_project"], exclude_words=())
                for p in params:
                    p.grad = None
                log["attack_loss"].append(atk_losses[-1])
                # outer: ESD loss on the adversarial prompt
                idx = torch.randint(len(concepts), (B,), generator=gen).tolist()
                conds = [concepts[i] for i in idx]
                with torch.no_grad():
                    emb_c0, emb_00 = teacher_encode(conds), teacher_encode(model.null_conditions(B))
                    stop = int(torch.randint(hp["ddim_steps"], (1,), generator=gen))
                    with training_mode(model.unet, False):
                        x_t, t = ddim_partial_sample(model, emb_c0, emb_00, steps=hp["ddim_steps"], stop=stop,
                                                     guidance_scale=hp["start_guidance"], generator=gen)
                    tt = torch.full((B,), t, device=x_t.device, dtype=torch.long)
                    target = esd_target(teacher_noise(x_t, tt, emb_00), teacher_noise(x_t, tt, emb_c0),
                                        hp["negative_guidance"])
                emb_adv = encode_prefixed(model, conds, adv)
                loss_u = denoise_mse(model, model.predict_noise(x_t, tt, emb_adv), target, tt)
                # utility retention on retain prompts: ε_θ(x_t^r, c_r) vs ε_o(x_t^r, c_r)
                ridx = torch.randint(len(r_conds), (B,), generator=gen)
                rc = [r_conds[i] for i in ridx.tolist()]
                x0 = model.to_latents(r_images[ridx])
                rt = torch.randint(0, model.num_train_timesteps, (B,), generator=gen).to(x0.device)
                x_r, rt, _ = noisy_latents(model, x0, rt, torch.randn(x0.shape, generator=gen).to(x0.device))
                with torch.no_grad():
                    ref = teacher_noise(x_r, rt, teacher_encode(rc))
                loss_r = denoise_mse(model, model.predict_noise(x_r, rt, model.encode(rc)), ref, rt)
                loss = loss_u + hp["retain_weight"] * loss_r
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                log["loss_u"].append(float(loss_u.detach()))
                log["loss_r"].append(float(loss_r.detach()))
                if progress and (it + 1) % 25 == 0:
                    print(f"advunlearn it {it + 1}/{hp['iterations']} loss_u {loss_u.item():.4f} "
                          f"loss_r {loss_r.item():.4f}", flush=True)
        finally:
            model.text_encoder.requires_grad_(False)
            model.text_encoder.eval()
            info = tr.finish() if tr is not None else {"trainable_params": sum(p.numel() for p in params),
                                                      "part": "text_encoder"}
        return {**log, "concepts": concepts, **info}


def _images_conditions(data):
    """(images [N, C, H, W], conditions) of a Dataset of (image, condition, ...)."""
    if isinstance(data, torch.utils.data.DataLoader):
        data = data.dataset
    images = getattr(data, "images", None)
    conds = getattr(data, "conditions", None)
    if images is None or conds is None:
        items = [data[i] for i in range(len(data))]
        images = torch.stack([torch.as_tensor(it[0], dtype=torch.float32) for it in items])
        conds = [it[1] for it in items]
    return images, list(conds)
