"""Tiny diffusion models shared by the diffusion tests (built once per session)."""
import copy

import pytest
import torch
from _diffusion_checks import RECIPE, measure

from unlearnx.data.canvas import canvas_dataset
from unlearnx.diffusion import tiny_text_model, train_diffusion


@pytest.fixture(scope="session")
def tiny_canvas():
    # 3 styles x 3 objects, 8x8 images: big enough to tell styles apart, small enough for seconds
    return canvas_dataset(n_per_pair=6, size=8, n_styles=3, n_objects=3, seed=0)


@pytest.fixture(scope="session")
def tiny_text(tiny_canvas):
    torch.manual_seed(0)
    return tiny_text_model(tiny_canvas.prompts, image_size=8, block_out_channels=(16, 32), text_dim=16,
                           text_layers=1, max_length=8)


@pytest.fixture(scope="session")
def trained(tiny_text, tiny_canvas):
    """tiny_text trained RECIPE steps on the canvas: one per session, shared by the method tests."""
    dm = copy.deepcopy(tiny_text)
    train_diffusion(dm, tiny_canvas, seed=0, **RECIPE)
    return dm


@pytest.fixture(scope="session")
def split(tiny_canvas):
    return tiny_canvas.split_style("ocean")


@pytest.fixture(scope="session")
def base(trained, split):
    return measure(trained, trained, split)
