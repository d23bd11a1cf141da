"""JiT: zero-shot unlearning by Lipschitz regularisation of the output around the forget samples.

Foster, Fogarty, Schoepf, Dugue, Brintrup, "Zero-shot machine unlearning at scale via Lipschitz
regularization", arXiv:2402.01401, 2024.
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm import trange

from unlearnx._modes import training_mode
from unlearnx.methods.registry import UnlearningMethod, register_method
from unlearnx.methods.training import make_optimizer, model_device

__all__ = ["JiT", "lipschitz_loss"]


def lipschitz_loss(model: nn.Module, x: torch.Tensor, *, n_samples: int, noise_std: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """JiT's objective on a batch x [B, ...]: the mean over samples and perturbations of the empirical
    local Lipschitz ratio

        L(x) = (1/N) Σ_{n=1..N} ‖f(x) − f(x + ξ_n)‖₂ / ‖ξ_n‖₂,   ξ_n ~ N(0, σ² I)

    (the paper's objective; f = the model's output logits). Differentiable in the model's parameters.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    b = x.shape[0]
    noise = torch.randn((n_samples, *x.shape), generator=generator, device="cpu").to(x.device, x.dtype) * noise_std
    noisy = (x.unsqueeze(0) + noise).reshape(n_samples * b, *x.shape[1:])
    out = model(torch.cat([x, noisy])).float()
    clean, pert = out[:b], out[b:].reshape(n_samples, b, -1)
    num = (pert - clean.unsqueeze(0)).norm(dim=-1)  # [N, B]
    den = noise.reshape(n_samples, b, -1).float().norm(dim=-1).clamp_min(1e-12)
    return (num / den).mean()


@register_method("jit")
class JiT(UnlearningMethod):
    """JiT ("just in time"): zero-shot unlearning, forget data only. For each forget batch, one SGD
    step on `lipschitz_loss` (N perturbed copies of every sample, ξ ~ N(0, σ²I)), so the output
    becomes smooth (insensitive) around the forget samples, which removes what the model learned
    specifically about them; `epochs` passes over D_f.

    The model stays in eval mode (BatchNorm statistics are not updated with the noisy copies);
    plain SGD without momentum, as the paper's per-sample update. Defaults: N 25 (paper), one
    epoch, batch 1 (the paper's per-sample update); lr 1e-4 and σ 0.5 as a documented choice for
    inputs in [0, 1] (the paper tunes lr/σ per benchmark; see docs/methods.md). The noise is drawn
    from a generator seeded by the run's seed. log["forget_loss"]: mean Lipschitz ratio per epoch.
    """

    paper = ("Foster, Fogarty, Schoepf, Dugue, Brintrup, 'Zero-shot machine unlearning at scale via "
             "Lipschitz regularization', arXiv:2402.01401, 2024")
    defaults = {"epochs": 1, "lr": 1e-4, "n_samples": 25, "noise_std": 0.5, "batch_size": 1}
    requires = ("forget",)

    def validate(self):
        if self.hparams["n_samples"] < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.hparams['n_samples']}")
        if self.hparams["noise_std"] <= 0:
            raise ValueError(f"noise_std must be > 0, got {self.hparams['noise_std']}")

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        device = model_device(model)
        opt = make_optimizer([p for p in model.parameters() if p.requires_grad], "sgd", lr=hp["lr"], momentum=0.0)
        gen = torch.Generator().manual_seed(seed)
        log = []
        with training_mode(model, train=False):
            for _ in trange(hp["epochs"], desc="jit", disable=not progress, leave=False):
                total, count = 0.0, 0
                for batch in forget:
                    x = batch[0].to(device)
                    loss = lipschitz_loss(model, x, n_samples=hp["n_samples"], noise_std=hp["noise_std"], generator=gen)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"jit: the Lipschitz loss became {loss.item()}; lower lr")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(x)
                    count += len(x)
                log.append(total / max(count, 1))
        return {"forget_loss": log}
