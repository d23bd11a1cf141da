"""One tiny trained text-conditional diffusion model shared by the second batch of diffusion-method
tests (Concept Ablation, EraseDiff, Scissorhands, Selective Amnesia, SPM, SFD, DoCo)."""
import copy

import pytest
import torch

from unlearnx.data.canvas import canvas_dataset
from unlearnx.diffusion import ConditionedImages, diffusion_loss, tiny_text_model, train_diffusion


@pytest.fixture(scope="session")
def trained_canvas():
    """(model, forget, retain, target word): 3 styles x 3 objects at 8x8, trained 300 steps; forget =
    every image of the first style, retain = the others."""
    data = canvas_dataset(n_per_pair=6, size=8, n_styles=3, n_objects=3, seed=0)
    torch.manual_seed(0)
    model = tiny_text_model(data.prompts, image_size=8, block_out_channels=(16, 32), text_dim=16,
                            text_layers=1, max_length=8)
    train_diffusion(model, data, steps=300, lr=3e-3, batch_size=16, seed=0)
    items = [data[i] for i in range(len(data))]
    style = items[0][1].split(" in ")[1].split()[0]
    f = [it for it in items if f" {style} style" in it[1]]
    r = [it for it in items if f" {style} style" not in it[1]]
    forget = ConditionedImages(torch.stack([it[0] for it in f]), [it[1] for it in f])
    retain = ConditionedImages(torch.stack([it[0] for it in r]), [it[1] for it in r])
    return model, forget, retain, style


@pytest.fixture
def fresh(trained_canvas):
    model, forget, retain, style = trained_canvas
    return copy.deepcopy(model), forget, retain, style


def eval_loss(model, data, seed=123, repeats=4, t_min=500):
    """Mean L_simple over `data` at fixed timesteps in [t_min, T) and fixed noise (same draws for every
    model). High noise levels: there the prediction depends on the condition (at small t the noise is
    read off x_t whatever the prompt), so this is where erasing a concept shows."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for _ in range(repeats):
            n = len(data)
            t = torch.randint(t_min, model.num_train_timesteps, (n,), generator=g)
            noise = torch.randn((n, *model.latent_shape), generator=g)
            total += float(diffusion_loss(model, data.images, data.conditions, t=t, noise=noise).mean())
    return total / repeats
