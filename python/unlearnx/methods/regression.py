"""Deep regression unlearning: Blindspot and Gaussian amnesiac (Tarun et al., 2023)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from unlearnx.methods.registry import UnlearningMethod, register_method
from unlearnx.methods.training import FlaggedDataset, dataset_of, fit, make_optimizer, reinitialize, train_classifier

__all__ = ["Blindspot", "GaussianAmnesiac", "attention_map"]

_PAPER = "Tarun et al., 'Deep Regression Unlearning', ICML 2023"
_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Sigmoid)


def attention_map(a: torch.Tensor) -> torch.Tensor:
    """A(a) = normalize(mean_c a²): activation `[B, C, ...]` -> unit-norm `[B, prod(...)]`.

    For a 2-D activation `[B, C]` the map is `[B, 1]` and always 1 (the reference code's formula):
    the attention term only constrains convolutional/sequence layers.
    """
    return F.normalize(a.pow(2).mean(1).reshape(len(a), -1), dim=1)


def _check_regression_targets(method: str, data, name: str) -> None:
    """A clear error when `data` holds class labels (integer targets): these methods regress."""
    ds = dataset_of(data, name)
    if len(ds) == 0:
        return
    y = torch.as_tensor(ds[0][1])
    if not (y.is_floating_point() or y.is_complex()):
        raise ValueError(f"{method} is a regression method (L1 loss on real-valued targets) but {name} has "
                         f"{y.dtype} targets, i.e. class labels; use a classification method (ft, rl, salun, "
                         f"ssd, ...) or give float targets")


def _combined_loader(forget, retain, batch_size: int, seed: int) -> DataLoader:
    data = ConcatDataset([FlaggedDataset(dataset_of(forget, "forget"), 1.0, keep_target=True),
                          FlaggedDataset(dataset_of(retain, "retain"), 0.0, keep_target=True)])
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


class _Recorder:
    """Forward hooks collecting the outputs of the activation modules of a model, in call order."""

    def __init__(self, model: nn.Module):
        self.outputs: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(lambda mod, inp, out: self.outputs.append(out))
                        for m in model.modules() if isinstance(m, _ACTIVATIONS)]

    def take(self) -> list[torch.Tensor]:
        out, self.outputs = self.outputs, []
        return out

    def close(self):
        for h in self.handles:
            h.remove()


@register_method("blindspot")
class Blindspot(UnlearningMethod):
    """Blindspot unlearning for regression.

    1. A blind model f_b (the architecture re-initialised with the seed) is trained on D_r only for
       `blind_epochs` epochs (L1 loss, Adam `lr`), so it never saw D_f.
    2. The original model is fine-tuned for `epochs` on shuffled batches of D_f ∪ D_r with
           L = c·L_f + (1 − c)·L_r,  c = (forget samples in the batch) / (batch size)
           L_r = L1(f(x_r), y_r)
           L_f = L1(f(x_f), f_b(x_f)) + β Σ_l mean‖A(a_l(x_f)) − A(a_l^b(x_f))‖²
       a_l: outputs of the activation modules (ReLU, GELU, ...), A = `attention_map`.
    Defaults (paper / reference code): β 50, Adam 1e-3, blind model ~2 epochs, fine-tune 1 epoch;
    batch 64.
    """

    paper = _PAPER
    defaults = {"epochs": 1, "blind_epochs": 2, "lr": 1e-3, "beta": 50.0, "batch_size": 64}

    def run(self, model, *, forget, retain, seed, progress):
        _check_regression_targets(self.name, forget, "forget")
        _check_regression_targets(self.name, retain, "retain")
        hp = self.hparams
        blind = reinitialize(copy.deepcopy(model), seed + 1)
        log = {"blind_loss": train_classifier(blind, retain, epochs=hp["blind_epochs"], lr=hp["lr"],
                                              optimizer="adam", weight_decay=0.0, schedule="constant", loss="l1",
                                              seed=seed, progress=progress)["train_loss"]}
        blind.eval().requires_grad_(False)
        rec, rec_blind = _Recorder(model), _Recorder(blind)

        def blindspot_loss(model, x, yf, epoch):
            y, is_f = yf[:, :-1], yf[:, -1] > 0.5
            out = model(x).reshape(len(x), -1)
            acts = rec.take()
            c = is_f.float().mean()
            loss = out.new_zeros(())
            if bool((~is_f).any()):
                loss = loss + (1 - c) * F.l1_loss(out[~is_f], y[~is_f])
            if bool(is_f.any()):
                with torch.no_grad():
                    out_b = blind(x[is_f]).reshape(int(is_f.sum()), -1)
                acts_b = rec_blind.take()
                att = sum((attention_map(a[is_f]) - attention_map(b)).pow(2).mean() for a, b in zip(acts, acts_b))
                loss = loss + c * (F.l1_loss(out[is_f], out_b) + hp["beta"] * att)
            return loss

        opt = make_optimizer(model.parameters(), "adam", lr=hp["lr"])
        loader = _combined_loader(forget, retain, hp["batch_size"], seed)
        try:
            log.update(fit(model, lambda epoch: [("mixed", loader, blindspot_loss)], epochs=hp["epochs"],
                           optimizer=opt, progress=progress, desc=self.name))
        finally:
            rec.close()
            rec_blind.close()
        return log


def _targets(data) -> torch.Tensor:
    ds = dataset_of(data, "data")
    y = torch.stack([torch.as_tensor(ds[i][1], dtype=torch.float32).reshape(-1) for i in range(len(ds))])
    return y  # [N, out]


@register_method("gaussian_amnesiac")
class GaussianAmnesiac(UnlearningMethod):
    """Gaussian amnesiac (Gaussian fine-tuning) for regression: replace every forget target by a
    draw ỹ ~ N(μ, σ²), μ, σ the per-output mean and standard deviation of the targets of
    D = D_f ∪ D_r, then fine-tune on D_r ∪ {(x_f, ỹ_f)} for `epochs` with the L1 loss (Adam `lr`).
    Defaults: 1 epoch (paper); Adam 1e-3 and batch 64 as Blindspot.
    """

    paper = _PAPER
    defaults = {"epochs": 1, "lr": 1e-3, "batch_size": 64}

    def run(self, model, *, forget, retain, seed, progress):
        _check_regression_targets(self.name, forget, "forget")
        _check_regression_targets(self.name, retain, "retain")
        hp = self.hparams
        y_f, y_r = _targets(forget), _targets(retain)
        y_all = torch.cat([y_f, y_r])
        gen = torch.Generator().manual_seed(seed)
        noisy = y_all.mean(0) + y_all.std(0) * torch.randn(y_f.shape, generator=gen)
        data = ConcatDataset([_Retargeted(dataset_of(forget, "forget"), noisy), dataset_of(retain, "retain")])
        loader = DataLoader(data, batch_size=hp["batch_size"], shuffle=True, generator=gen)

        def l1(model, x, y, epoch):
            out = model(x)
            return F.l1_loss(out, y.reshape(out.shape).to(out.dtype))

        opt = make_optimizer(model.parameters(), "adam", lr=hp["lr"])
        return fit(model, lambda epoch: [("mixed", loader, l1)], epochs=hp["epochs"], optimizer=opt,
                   progress=progress, desc=self.name)


class _Retargeted(torch.utils.data.Dataset):
    """Item i is (base[i][0], targets[i]) with float targets `[N, out]` reshaped like the base target."""

    def __init__(self, base, targets: torch.Tensor):
        self.base, self.targets = base, targets

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i][0], self.base[i][1]
        return x, self.targets[i].reshape(torch.as_tensor(y).shape)
