"""LAF: label-agnostic forgetting (Shen et al., ICML 2024)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import trange

from unlearnx._modes import training_mode
from unlearnx.methods.model_parts import split_model
from unlearnx.methods.registry import UnlearningMethod, register_method
from unlearnx.methods.training import fit, make_optimizer, model_device

__all__ = ["LAF", "EmbeddingVAE"]


class EmbeddingVAE(nn.Module):
    """A small VAE on embeddings e `[B, dim]`: enc Linear-ReLU -> (μ, log σ²) `[B, latent]`;
    z = μ + σ·ε; dec Linear-ReLU-Linear -> ê `[B, dim]`. forward returns (ê, μ, log σ²)."""

    def __init__(self, dim: int, *, hidden: int, latent: int):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, e: torch.Tensor):
        h = self.enc(e)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.dec(z), mu, logvar


def _vae_loss(vae: EmbeddingVAE, e: torch.Tensor, kld_weight: float) -> torch.Tensor:
    # ‖ê − e‖² summed over features + w·KL(q(z|e) ‖ N(0, I)), both averaged over the batch.
    e_hat, mu, logvar = vae(e)
    rec = (e_hat - e).pow(2).sum() / len(e)
    kld = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum() / len(e)
    return rec + kld_weight * kld


def _ood_score(vae: EmbeddingVAE, e: torch.Tensor) -> torch.Tensor:
    # Σ_i exp(m_i / (m_i + 1)), m_i = ‖VAE(e_i) − e_i‖²: a bounded, increasing function of the error.
    m = (vae(e)[0] - e).pow(2).sum(1)
    return torch.exp(m / (m + 1)).sum()


class _Zip:
    """Iterate two loaders in lock step (stops at the shorter); yields (x_f, x_r)."""

    def __init__(self, forget, retain):
        self.forget, self.retain = forget, retain

    def __len__(self):
        return min(len(self.forget), len(self.retain))

    def __iter__(self):
        for (xf, *_), (xr, *_) in zip(self.forget, self.retain):
            yield xf, xr


@register_method("laf")
class LAF(UnlearningMethod):
    """LAF (label-agnostic forgetting): unlearning at the representation level without labels.

    The model is split into extractor e(·) and head (`model_parts.split_model`: `.features` /
    `.classifier`, or an nn.Sequential split at `split`, default its last nn.Linear). Only the
    extractor is updated; labels are never read.

    1. Two VAEs (`EmbeddingVAE`, latent `latent_dim`) are trained on the original embeddings of D_r
       (V_r) and of D_f (V_f): min ‖V(e) − e‖² + w·KL, Adam `vae_lr`, `vae_epochs` epochs.
    2. For each pair of batches (x_f, x_r), two steps:
       stage 1 (Adam lr `lr`):  min Σ_r exp(m_r/(m_r+1)) − Σ_f exp(m_f/(m_f+1)),
           m_r = ‖V_r(e(x_r)) − e(x_r)‖², m_f = ‖V_f(e(x_f)) − e(x_f)‖²   (D_f out of its distribution,
           D_r kept in its own);
       stage 2 (Adam lr `lr_align`): min Σ_r log( exp(d_r) / Σ_f exp(d_f / τ) ),
           d = 1 − cos(e(x), e_o(x)) with e_o the frozen original extractor (D_r aligned with the
           original representation, D_f pushed away).
    Defaults (paper, CNN setting): latent 8, 20 epochs, lr 5e-5 (stage 1) / 1e-4 (stage 2); the VAE
    epochs/lr/KL weight (20, 1e-3, 0.025), hidden width 64, τ = 1 and batch 32 are unlearnx choices.
    The paper's optional supervised head repair (LAF+R) is not part of this label-free method.
    """

    paper = ("Shen et al., 'Label-Agnostic Forgetting: A Supervision-Free Unlearning in Deep Models', "
             "ICLR 2024")
    defaults = {"epochs": 20, "lr": 5e-5, "lr_align": 1e-4, "vae_epochs": 20, "vae_lr": 1e-3,
                "vae_kld_weight": 0.025, "latent_dim": 8, "vae_hidden": 64, "temperature": 1.0,
                "batch_size": 32, "split": None}

    def validate(self):
        split = self.hparams["split"]
        if split is not None and (isinstance(split, bool) or not isinstance(split, int) or split < 1):
            raise ValueError(f"split must be None or a positive integer, got {split!r}")

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        extractor, _ = split_model(model, hp["split"])
        teacher = copy.deepcopy(extractor).eval()
        teacher.requires_grad_(False)
        device = model_device(model)

        def embed(net, x):
            return net(x).flatten(1)

        with torch.no_grad():
            dim = embed(teacher, next(iter(retain))[0][:2].to(device)).shape[1]
        vaes, log = {}, {}
        for name, loader in (("retain", retain), ("forget", forget)):
            vae = EmbeddingVAE(dim, hidden=hp["vae_hidden"], latent=hp["latent_dim"]).to(device)

            def vae_loss(vae, x, y, epoch):
                with torch.no_grad():
                    e = embed(teacher, x)
                return _vae_loss(vae, e, hp["vae_kld_weight"])

            opt = make_optimizer(vae.parameters(), "adam", lr=hp["vae_lr"])
            log[f"vae_{name}_loss"] = fit(vae, lambda epoch, ld=loader, fn=vae_loss: [("vae", ld, fn)],
                                          epochs=hp["vae_epochs"], optimizer=opt, progress=progress,
                                          desc=f"laf vae ({name})")["vae_loss"]
            vaes[name] = vae.eval().requires_grad_(False)

        params = list(extractor.parameters())
        opt_forget = make_optimizer(params, "adam", lr=hp["lr"])
        opt_align = make_optimizer(params, "adam", lr=hp["lr_align"])
        pairs = _Zip(forget, retain)
        log["forget_loss"], log["align_loss"] = [], []
        with training_mode(model, train=True):
            for epoch in trange(hp["epochs"], desc="laf", disable=not progress, leave=False):
                sums = [0.0, 0.0]
                for xf, xr in pairs:
                    xf, xr = xf.to(device), xr.to(device)
                    loss1 = _ood_score(vaes["retain"], embed(extractor, xr)) - _ood_score(vaes["forget"], embed(extractor, xf))
                    _step(opt_forget, loss1, "laf stage 1", epoch)
                    with torch.no_grad():
                        tr, tf = embed(teacher, xr), embed(teacher, xf)
                    d_r = 1 - F.cosine_similarity(embed(extractor, xr), tr, dim=1)
                    d_f = 1 - F.cosine_similarity(embed(extractor, xf), tf, dim=1)
                    loss2 = (d_r - torch.logsumexp(d_f / hp["temperature"], dim=0)).sum()
                    _step(opt_align, loss2, "laf stage 2", epoch)
                    sums[0] += loss1.item()
                    sums[1] += loss2.item()
                log["forget_loss"].append(sums[0] / max(len(pairs), 1))
                log["align_loss"].append(sums[1] / max(len(pairs), 1))
        return log


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, what: str, epoch: int) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{what}: the loss became {loss.item()} at epoch {epoch}; lower lr")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
