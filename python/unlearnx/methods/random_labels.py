"""RL: random-label unlearning (the base loop of SalUn)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unlearnx.distributed.context import stream_seed
from unlearnx.distributed.sharding import side_rows
from unlearnx.methods.registry import UnlearningMethod, register_method
from unlearnx.methods.training import fit, make_optimizer

__all__ = ["RL", "RandomLabelBatches"]

# Codes are drawn from [0, 2^62) and reduced mod K: uniform on {0..K-1} up to a bias below K / 2^62.
_CODE_RANGE = 2 ** 62


class RandomLabelBatches:
    """The batches of `loader` with the targets replaced by random codes: global batch k of epoch
    `epoch` yields (x, c), c [B] int64 drawn from a generator seeded with stream_seed(seed, epoch, k).

    The label of row i of that batch is c[i] mod K (K = the model's output width, known only to the
    loss). A pure function of (seed, epoch, k, i): under torchrun every rank draws the same global
    batch's codes and the sharded loop slices them with the rows of x, so the labels do not depend
    on the number of processes or micro-batches. The loader must yield (x, y, ...) tuples; y is dropped.
    """

    def __init__(self, loader, *, seed: int, epoch: int):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed: must be an int, got {seed!r}")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch: must be an int >= 0, got {epoch!r}")
        self.loader, self.seed, self.epoch = loader, seed, epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for k, batch in enumerate(self.loader):
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("forget: the data must yield (x, y) pairs")
            gen = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch, k))
            yield batch[0], torch.randint(_CODE_RANGE, (side_rows(batch[0]),), generator=gen)


@register_method("rl")
class RL(UnlearningMethod):
    """RL (random labels): each epoch, one pass over D_f with labels drawn uniformly from all K
    classes (fresh draws every epoch; the true class may be drawn), then one pass over D_r with
    the true labels, minimising CE in both passes:

        epoch e:  Σ_{x∈D_f} CE(f_θ(x), ỹ),  ỹ ~ U{0..K−1};   then  Σ_{(x,y)∈D_r} CE(f_θ(x), y)

    (the CIFAR-10 branch of the SalUn reference code; K is read from the model's output width).
    The label of row i of forget batch k in epoch e is a function of (seed, e, k, i) only
    (`RandomLabelBatches`), so RL gives the same model under torchrun as in one process.
    SGD with momentum 0.9, weight decay 5e-4, constant lr. Defaults as SalUn: lr 0.013, 10 epochs;
    batch 64 (256 in the reference code, see FT). Subclasses (SalUn) override `make_optimizer`
    to mask the update.
    """

    paper = ("Golatkar et al., 'Eternal Sunshine of the Spotless Net', CVPR 2020 (random labels); "
             "as run in Fan et al., 'SalUn', ICLR 2024")
    defaults = {"epochs": 10, "lr": 0.013, "batch_size": 64, "momentum": 0.9, "weight_decay": 5e-4}

    def make_optimizer(self, model: nn.Module, forget) -> torch.optim.Optimizer:
        hp = self.hparams
        return make_optimizer(model.parameters(), "sgd", lr=hp["lr"], momentum=hp["momentum"],
                              weight_decay=hp["weight_decay"])

    def run(self, model, *, forget, retain, seed, progress):
        def random_label_loss(model, x, codes, epoch):
            logits = model(x)
            return F.cross_entropy(logits, codes.to(logits.device) % logits.shape[1])

        def true_label_loss(model, x, y, epoch):
            return F.cross_entropy(model(x), y)

        opt = self.make_optimizer(model, forget)
        return fit(model, lambda epoch: [("forget", RandomLabelBatches(forget, seed=seed, epoch=epoch),
                                          random_label_loss), ("retain", retain, true_label_loss)],
                   epochs=self.hparams["epochs"], optimizer=opt, progress=progress, desc=self.name)
