"""A small DCGAN for the built-in digits: generator, discriminator, training and sampling.

The substrate of GAN unlearning (unlearnx.methods.gan, docs/gan.md): a DCGAN (Radford et al.,
ICLR 2016: transposed-conv generator with BatchNorm and ReLU, strided-conv discriminator with
LeakyReLU) scaled down to scikit-learn's 8x8 digits (`unlearnx.data.digits_dataset`), trained with
the non-saturating GAN loss (Goodfellow et al., NeurIPS 2014, Sec. 3):

    L_D = E_x[softplus(−D(x))] + E_z[softplus(D(G(z)))]      (−log σ(D(x)) − log(1 − σ(D(G(z)))))
    L_G = E_z[softplus(−D(G(z)))]                             (−log σ(D(G(z))))

with Adam(lr 2e-4, betas (0.5, 0.999)) as in DCGAN. Images are `[N, 1, 8, 8]` in [0, 1] (the data
set's pixel / 16) everywhere: the generator ends in (tanh + 1) / 2 and the discriminator maps its
input to [−1, 1] itself.

    gan = DCGAN(seed=0)                       # GAN bundle: .generator, .discriminator, .latent_dim
    train_gan(gan, train_data, steps=3000, seed=0)
    images = sample_gan(gan, 1000, seed=1)    # deterministic for a seed
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import trange

from unlearnx._modes import training_mode
from unlearnx.data.datasets import check_dataset
from unlearnx.methods.training import as_loader, seeded

__all__ = ["DCGAN", "Generator", "Discriminator", "is_gan", "train_gan", "sample_gan", "latents",
           "generator_loss", "discriminator_loss", "images_of"]


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class Generator(nn.Module):
    """z `[B, latent_dim]` -> Linear -> 4x4x(2w) -> BN, ReLU -> ConvT(4, stride 2) -> 8x8xw -> BN, ReLU
    -> Conv3x3 -> (tanh + 1) / 2: images `[B, channels, 8, 8]` in [0, 1]."""

    def __init__(self, latent_dim: int = 32, width: int = 32, channels: int = 1):
        super().__init__()
        self.latent_dim, self.width = latent_dim, width
        self.fc = nn.Linear(latent_dim, 2 * width * 16, bias=False)
        self.bn0 = nn.BatchNorm2d(2 * width)
        self.up = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn0(self.fc(z).view(len(z), 2 * self.width, 4, 4)))
        h = torch.relu(self.bn1(self.up(h)))
        return (torch.tanh(self.out(h)) + 1) / 2


class Discriminator(nn.Module):
    """images `[B, channels, 8, 8]` in [0, 1] -> (2x − 1) -> Conv4x4 stride 2 (4x4xw) -> LeakyReLU(0.2)
    -> Conv3x3 (4x4x2w) -> LeakyReLU(0.2) -> Linear: one logit per image `[B]`."""

    def __init__(self, width: int = 32, channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(2 * x - 1), 0.2)
        h = F.leaky_relu(self.conv2(h), 0.2)
        return self.fc(h.flatten(1)).squeeze(1)


class DCGAN(nn.Module):
    """The GAN bundle `unlearnx.unlearn` dispatches to the "gan" task: `generator`, `discriminator`
    and `latent_dim`; `forward(z)` is the generator. Built with torch's RNG seeded to `seed`
    (None: the current RNG state)."""

    def __init__(self, *, latent_dim: int = 32, width: int = 32, channels: int = 1, seed: int | None = 0):
        super().__init__()
        latent_dim = _positive_int(latent_dim, "latent_dim")
        width = _positive_int(width, "width")
        channels = _positive_int(channels, "channels")
        self.latent_dim = latent_dim
        if seed is None:
            self.generator = Generator(latent_dim, width, channels)
            self.discriminator = Discriminator(width, channels)
        else:
            with seeded(seed):
                self.generator = Generator(latent_dim, width, channels)
                self.discriminator = Discriminator(width, channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)


def is_gan(model) -> bool:
    """True for a GAN bundle: an nn.Module with `generator` and `discriminator` modules and an int
    `latent_dim` (a `DCGAN`, or any user module laid out the same way)."""
    return (isinstance(model, nn.Module) and isinstance(getattr(model, "generator", None), nn.Module)
            and isinstance(getattr(model, "discriminator", None), nn.Module)
            and isinstance(getattr(model, "latent_dim", None), int))


def _check_gan(gan) -> None:
    if not is_gan(gan):
        raise TypeError(f"gan must be a GAN bundle (an nn.Module with .generator, .discriminator and an int "
                        f".latent_dim, e.g. unlearnx.models.gan.DCGAN), got {type(gan).__name__}")


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def latents(n: int, latent_dim: int, *, seed: int, device=None) -> torch.Tensor:
    """`n` standard-normal latent vectors `[n, latent_dim]`, from a generator seeded with `seed`
    (drawn on the CPU, then moved: the same latents on every device)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(n, latent_dim, generator=g).to(device if device is not None else "cpu")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN discriminator loss: mean softplus(−D(x)) + mean softplus(D(G(z)))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: mean softplus(−D(G(z))) = −mean log σ(D(G(z)))."""
    return F.softplus(-fake_logits).mean()


def images_of(data) -> torch.Tensor:
    """The image tensor `[N, C, H, W]` of a Dataset of `(x, ...)` items or of a tensor itself."""
    if isinstance(data, torch.Tensor):
        x = data
    else:
        check_dataset(data, "data")
        tensors = getattr(data, "tensors", None)
        x = tensors[0] if tensors else torch.stack([data[i][0] for i in range(len(data))])
    if x.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(x.shape)}")
    return x


def adversarial_steps(gan, real, *, steps: int, lr: float, batch_size: int, seed: int, progress: bool = True,
                      desc: str = "gan", generator_penalty=None, betas=(0.5, 0.999)) -> dict[str, list[float]]:
    """`steps` alternating non-saturating updates of D then G on the `real` images, in place.

    Each step: a batch of `real` (shuffled, cycled, seeded by `seed`), a fresh batch of latents;
    D minimises `discriminator_loss`, then G minimises `generator_loss` (+ `generator_penalty(G)`,
    a scalar, when given: the hook Adapt-then-Unlearn uses for its EWC and repulsion terms).
    Both use Adam(lr, betas). Returns {"d_loss", "g_loss"[, "penalty"]} per step. The shared loop of
    `train_gan`, Retrain and both Adapt-then-Unlearn stages.
    """
    G, D = gan.generator, gan.discriminator
    dev = _device(G)
    loader = as_loader(real, batch_size=batch_size, seed=seed, name="real")
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
    log: dict[str, list[float]] = {"d_loss": [], "g_loss": []}
    if generator_penalty is not None:
        log["penalty"] = []
    batches = iter(())
    with seeded(seed, dev), training_mode(G, True), training_mode(D, True):
        for _ in trange(steps, desc=desc, disable=not progress, leave=False):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            x = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(dev)
            z = torch.randn(len(x), gan.latent_dim, device=dev)
            with torch.no_grad():
                fake = G(z)
            d_loss = discriminator_loss(D(x), D(fake))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()

            z = torch.randn(len(x), gan.latent_dim, device=dev)
            for p in D.parameters():
                p.requires_grad_(False)
            try:
                g_loss = generator_loss(D(G(z)))
                total = g_loss
                if generator_penalty is not None:
                    pen = generator_penalty(G)
                    total = g_loss + pen
                    log["penalty"].append(float(pen.detach()))
            finally:
                for p in D.parameters():
                    p.requires_grad_(True)
            if not math.isfinite(float(total.detach())):
                raise FloatingPointError(f"non-finite generator loss in {desc}; lower lr or the penalty weight")
            opt_g.zero_grad(set_to_none=True)
            total.backward()
            opt_g.step()
            log["d_loss"].append(float(d_loss.detach()))
            log["g_loss"].append(float(g_loss.detach()))
    return log


def train_gan(gan, data, *, steps: int = 3000, lr: float = 2e-4, batch_size: int = 64, seed: int = 0,
              progress: bool = True) -> dict[str, list[float]]:
    """Train the GAN bundle in place on `data` (a Dataset of `(image, ...)` items or an image tensor
    `[N, C, 8, 8]` in [0, 1]) with the non-saturating loss, Adam(lr, betas (0.5, 0.999)), `steps`
    D/G updates of `batch_size`. Deterministic on CPU for a given `seed` (shuffling, latents).
    The recipe of the original GAN and of the Retrain oracle. Returns the per-step losses.
    """
    _check_gan(gan)
    steps = _positive_int(steps, "steps")
    batch_size = _positive_int(batch_size, "batch_size")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    x = images_of(data)
    dataset = torch.utils.data.TensorDataset(x.float())
    return adversarial_steps(gan, dataset, steps=steps, lr=float(lr), batch_size=batch_size, seed=seed,
                             progress=progress, desc="train gan")


@torch.no_grad()
def sample_gan(gan, n: int, *, seed: int = 0, batch_size: int = 1024) -> torch.Tensor:
    """`n` images `[n, C, 8, 8]` in [0, 1] (CPU) from the generator in eval mode (BatchNorm running
    statistics), latents drawn by `latents(n, latent_dim, seed=seed)`: the same images for the same
    seed and weights."""
    _check_gan(gan)
    n = _positive_int(n, "n")
    G = gan.generator
    z = latents(n, gan.latent_dim, seed=seed)
    dev = _device(G)
    with training_mode(G, False):
        return torch.cat([G(z[i:i + batch_size].to(dev)).cpu() for i in range(0, n, batch_size)])
