"""The fixed forget/retain measurement the diffusion method tests compare: denoising loss and
guidance alignment at fixed timesteps and noise (imported by test_methods*.py; the trained model
and the split are session fixtures in conftest.py)."""
import torch

from unlearnx.diffusion import diffusion_loss
from unlearnx.eval.diffusion import guidance_alignment

RECIPE = {"steps": 120, "lr": 2e-3, "batch_size": 16, "warmup": 10}


def _fixed(data, reps=3):
    g = torch.Generator().manual_seed(0)
    x = data.images.repeat(reps, 1, 1, 1)
    return x, data.prompts * reps, torch.randint(50, 700, (len(x),), generator=g), torch.randn(x.shape, generator=g)


@torch.no_grad()
def measure(model, original, split):
    out = {}
    for name, d in zip(("forget", "retain"), split):
        x, c, t, n = _fixed(d)
        out[f"{name}_loss"] = float(diffusion_loss(model, x, c, t=t, noise=n).mean())
        out[f"{name}_align"] = guidance_alignment(model, original, x, c, t=t, noise=n)
    return out
