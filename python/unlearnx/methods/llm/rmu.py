"""RMU: representation misdirection for unlearning (Li et al., 2024, "The WMDP Benchmark: Measuring and
Reducing Malicious Use With Unlearning").

At decoder layer l (its output hidden state h_l, read with a forward hook; the forward stops there):

    L = mean_tokens MSE(h_l^theta(x_f), c * u)  +  alpha * mean_tokens MSE(h_l^theta(x_r), h_l^frozen(x_r))

u a fixed random unit vector (uniform entries, normalized, seeded), MSE the mean over hidden units
(as the reference code; = (1/d) * mean_t ||.||^2 of the paper, the same optimum and, under Adam, the
same steps). Only the MLP down-projections of layers l-2..l are updated. Tokens: every non-padding
token of the question+answer text (as the reference code uses whole texts).

Frozen activations without a model copy: the frozen model differs from the trained one only in the
(few) updated down-projection weights, so the originals of those are kept and swapped in with
torch.func.functional_call (under LoRA, the adapters are disabled instead).

Defaults: Zephyr-7B (32 layers): l 7, c 6.5, alpha 1200, lr 5e-5, batch 4, 1 epoch. `layer=None`
(default) scales l to the model's depth: round(7/32 * n_layers), at least 2 (so l-2 exists).
"""
from __future__ import annotations

import torch
from torch import nn

from unlearnx.methods.llm.base import COMMON_DEFAULTS, LLMMethod, default_lora_config
from unlearnx.methods.registry import register_method

__all__ = ["RMU", "decoder_layers", "down_projection", "hidden_state", "steering_control"]

_DOWN_PROJ = ("mlp.down_proj", "mlp.c_proj", "mlp.fc2", "mlp.dense_4h_to_h")


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model) -> nn.ModuleList:
    """The ModuleList of decoder blocks (length config.num_hidden_layers) of a transformers causal LM."""
    base = _base(model)
    n = getattr(base.config, "num_hidden_layers", None)
    for _, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"model: no ModuleList of {n} decoder layers found in {type(base).__name__}")


def down_projection(layer: nn.Module) -> tuple[str, nn.Module]:
    """(relative name, module) of a decoder layer's MLP down-projection."""
    for name in _DOWN_PROJ:
        try:
            return name, layer.get_submodule(name)
        except AttributeError:
            continue
    raise ValueError(f"model: decoder layer {type(layer).__name__} has no MLP down-projection "
                     f"(looked for {', '.join(_DOWN_PROJ)}); RMU needs a dense MLP")


class _Stop(Exception):
    pass


def steering_control(model, coeff: float) -> torch.Tensor:
    """c * u / ||u||, u ~ U(0, 1)^d with a fixed seed (d = hidden size): RMU's forget target."""
    g = torch.Generator().manual_seed(0)
    u = torch.rand(_base(model).config.hidden_size, generator=g)
    return (coeff * u / u.norm()).to(next(model.parameters()).device)


def hidden_state(model, batch: dict, layer: nn.Module, **call) -> torch.Tensor:
    """Output hidden state [B, L, d] of `layer` on the batch; the forward stops right after it.

    `call`: optional `params` (a name -> tensor dict for torch.func.functional_call).
    """
    captured = {}

    def hook(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = layer.register_forward_hook(hook)
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    try:
        if "params" in call:
            torch.func.functional_call(model, call["params"], (), kwargs, strict=False)
        else:
            model(**kwargs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["h"]


def _masked_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    per_token = (h.float() - target.float()).pow(2).mean(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


@register_method("rmu", task="causal_lm")
class RMU(LLMMethod):
    """RMU: steer layer-l activations of forget text to c*u, keep retain activations; layers l-2..l MLP-out only."""

    paper = "Li et al., 'The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning', ICML 2024"
    requires = ("forget", "retain")
    defaults = {**COMMON_DEFAULTS, "epochs": 1, "lr": 5e-5, "batch_size": 4, "warmup_epochs": 0,
                "layer": None, "steering_coeff": 6.5, "alpha": 1200.0}

    def validate(self):
        super().validate()
        layer = self.hparams["layer"]
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
            raise ValueError(f"layer must be an int >= 0 (or None: scaled to the depth), got {layer!r}")

    def setup(self, model, *, forget, retain, progress):
        layers = decoder_layers(model)
        ell = self.hparams["layer"]
        ell = max(2, round(7 / 32 * len(layers))) if ell is None else ell
        if not 2 <= ell < len(layers):
            raise ValueError(f"layer must lie in [2, {len(layers) - 1}] for this {len(layers)}-layer model, got {ell}")
        self.layer_index = ell
        prefix = {id(m): n for n, m in _base(model).named_modules()}
        self.module_names = []
        for i in range(ell - 2, ell + 1):
            rel, module = down_projection(layers[i])
            self.module_names.append(prefix[id(module)])
        base = _base(model)
        self.param_names = [f"{m}.{p}" for m in self.module_names for p, _ in base.get_submodule(m).named_parameters()]
        self.frozen = {n: p.detach().clone() for n, p in base.named_parameters() if n in set(self.param_names)}
        self.control = steering_control(model, self.hparams["steering_coeff"])

    def lora_config(self, model):
        config = default_lora_config()
        config.target_modules = list(self.module_names)
        return config

    def _layer(self, model):
        return decoder_layers(model)[self.layer_index]

    def train(self, model, loader, *, progress):
        if self._peft is not None:
            return super().train(model, loader, progress=progress)
        wanted = set(self.param_names)
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            p.requires_grad_(n in wanted)
        try:
            return super().train(model, loader, progress=progress)
        finally:
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])

    def trainable_parameters(self, model):
        if self._peft is not None:
            return [p for p in model.parameters() if p.requires_grad]
        wanted = set(self.param_names)
        return [p for n, p in model.named_parameters() if n in wanted]

    def loss(self, model, batch):
        f, r = batch["forget"], batch["retain"]
        layer = self._layer(model)
        h_f = hidden_state(model, f, layer)
        forget_loss = _masked_mse(h_f, self.control.expand_as(h_f), f["attention_mask"])
        h_r = hidden_state(model, r, layer)
        with torch.no_grad():
            if self._peft is not None:
                with self._peft.disable_adapter():
                    frozen = hidden_state(model, r, layer)
            else:
                frozen = hidden_state(model, r, layer, params=self.frozen)
        retain_loss = _masked_mse(h_r, frozen, r["attention_mask"])
        loss = forget_loss + self.hparams["alpha"] * retain_loss
        return loss, {"forget_loss": forget_loss.item(), "retain_loss": retain_loss.item()}
