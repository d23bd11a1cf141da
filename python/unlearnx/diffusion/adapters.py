"""What a diffusion-unlearning method trains, and its frozen teacher θ*.

:class:`TrainableUNet` picks a part of ``model.unet`` ("xattn": the cross-attention projections,
ESD-x; "noxattn": everything but cross-attention, time embedding and output layer, ESD-u; "all")
and trains it either in full or through a LoRA adapter (peft, injected into the UNet's
Linear/Conv2d layers of that part). ``teacher_noise`` is ε_θ*(x_t, c, t) of the frozen original:
under LoRA the same module with the adapter disabled (no second copy in memory); under full
fine-tuning a frozen deep copy of the UNet (one extra UNet in memory, made only when a method asks
for a teacher). ``finish()`` merges the adapter into the weights and removes the peft layers, so
the model is a plain diffusers UNet again.
"""
from __future__ import annotations

import copy
import re

import torch
from torch import nn

from unlearnx.diffusion.model import DiffusionModel

__all__ = ["PARTS", "TrainableUNet", "unet_part_names", "cross_attention_modules"]

PARTS = ("all", "xattn", "noxattn")
# ESD's 'noxattn' excludes cross-attention, the time embedding and the output layer (its code:
# name.startswith('out.') or 'attn2' in name or 'time_embed' in name); diffusers names them
# time_embedding / class_embedding (the condition's own table) / conv_norm_out / conv_out.
_NOXATTN_EXCLUDE = re.compile(r"(attn2|time_embedding|class_embedding|conv_norm_out|conv_out)")


def cross_attention_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """name -> diffusers Attention module of every cross-attention layer (``attn2`` of the
    transformer blocks; their to_k / to_v read the text embedding)."""
    from diffusers.models.attention_processor import Attention

    return {n: m for n, m in unet.named_modules()
            if isinstance(m, Attention) and getattr(m, "is_cross_attention", False)}


def _in_part(name: str, part: str) -> bool:
    if part == "all":
        return True
    if part == "xattn":
        return "attn2" in name
    return not _NOXATTN_EXCLUDE.search(name)


def unet_part_names(unet: nn.Module, part: str) -> list[str]:
    """Parameter names of the UNet that belong to `part` (one of PARTS)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    names = [n for n, _ in unet.named_parameters() if _in_part(n, part)]
    if not names:
        raise ValueError(f"the UNet has no parameter in part {part!r}"
                         + (" (it has no cross-attention: a class-conditional UNet2DModel?)" if part == "xattn" else ""))
    return names


class TrainableUNet:
    """The trainable parameters of one method run on ``model.unet`` (see the module docstring).

    Args:
        model: the DiffusionModel (edited in place).
        part: "all" | "xattn" | "noxattn".
        lora: False = full fine-tuning of the part; True = a LoRA adapter (rank `rank`, alpha =
            rank, i.e. scale 1) on the part's Linear and Conv2d layers.
        teacher: keep ε_θ* available through `teacher_noise` (ESD, SalUn's references, ...).

    Attributes: ``params`` (list of tensors to optimize), ``n_trainable``.
    """

    def __init__(self, model: DiffusionModel, part: str = "all", *, lora: bool = False, rank: int = 4,
                 teacher: bool = False):
        if not isinstance(model, DiffusionModel):
            raise TypeError(f"model must be a DiffusionModel, got {type(model).__name__}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"lora_rank must be a positive integer, got {rank!r}")
        self.model = model
        self.part = part
        self.lora = bool(lora)
        unet = model.unet
        names = set(unet_part_names(unet, part))
        self._flags = {n: p.requires_grad for n, p in unet.named_parameters()}
        self._teacher_unet = None
        if self.lora:
            from peft import LoraConfig, inject_adapter_in_model

            targets = sorted(n for n, m in unet.named_modules()
                             if isinstance(m, (nn.Linear, nn.Conv2d)) and f"{n}.weight" in names)
            if not targets:
                raise ValueError(f"part {part!r} has no Linear/Conv2d layer for a LoRA adapter")
            unet.requires_grad_(False)
            config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=targets, init_lora_weights=True)
            inject_adapter_in_model(config, unet, adapter_name="unlearnx")
            self.params = [p for n, p in unet.named_parameters() if "lora_" in n]
            for p in self.params:
                p.requires_grad_(True)
        else:
            for n, p in unet.named_parameters():
                p.requires_grad_(n in names)
            self.params = [p for n, p in unet.named_parameters() if n in names]
            if teacher:
                self._teacher_unet = copy.deepcopy(unet).requires_grad_(False).eval()
        self.n_trainable = sum(p.numel() for p in self.params)

    def _tuner_layers(self):
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for m in self.model.unet.modules() if isinstance(m, BaseTunerLayer)]

    def teacher_noise(self, x_t: torch.Tensor, t, emb: torch.Tensor, *, grad_input: bool = False) -> torch.Tensor:
        """ε_θ*(x_t, c, t) of the frozen original model. No gradient by default; grad_input=True
        keeps the graph to x_t (and emb) only (the teacher's weights stay frozen), for losses that
        backpropagate through the teacher into its input (score distillation, SFD)."""
        with torch.set_grad_enabled(grad_input):
            if self.lora:
                layers = self._tuner_layers()
                for m in layers:
                    m.enable_adapters(False)
                try:
                    return self.model.predict_noise(x_t, t, emb)
                finally:
                    for m in layers:
                        m.enable_adapters(True)
            if self._teacher_unet is None:
                raise RuntimeError("TrainableUNet(teacher=False) keeps no teacher")
            m = self.model
            if m.kind == "class":
                out = self._teacher_unet(x_t, t, class_labels=emb).sample
            else:
                out = self._teacher_unet(x_t, t, encoder_hidden_states=emb).sample
            return m.noise_from_output(out, x_t, t)

    @torch.no_grad()
    def finish(self) -> dict:
        """Merge a LoRA adapter into the base weights and remove the peft layers; restore the
        requires_grad flags; drop the teacher copy. Returns {"trainable_params": n, "lora": bool}."""
        unet = self.model.unet
        if self.lora:
            for name, m in list(unet.named_modules()):
                if hasattr(m, "merge") and hasattr(m, "get_base_layer") and m is not unet:
                    m.merge()
                    parent_name, _, child = name.rpartition(".")
                    parent = unet.get_submodule(parent_name) if parent_name else unet
                    setattr(parent, child, m.get_base_layer())
        for n, p in unet.named_parameters():
            p.requires_grad_(self._flags.get(n, True))
        self._teacher_unet = None
        return {"trainable_params": self.n_trainable, "lora": self.lora, "part": self.part}
