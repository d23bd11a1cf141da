"""RMU: representation misdirection for unlearning (Li et al., 2024, "The WMDP Benchmark: Measuring and
Reducing Malicious Use With Unlearning", its forget and retain losses), with the adaptive steering
coefficient of Adaptive RMU (Dang et al., 2024, "On Effects of Steering Latent Representation for Large
Language Model Unlearning", AAAI 2025, arXiv:2408.06223).

At decoder layer l (its output hidden state h_l, read with a forward hook; the forward stops there):

    L = mean_tokens MSE(h_l^theta(x_f), c * u)  +  alpha * mean_tokens MSE(h_l^theta(x_r), h_l^frozen(x_r))

u a fixed random unit vector (uniform entries, normalized, seeded), MSE the mean over hidden units
(as the reference code; = (1/d) * mean_t ||.||^2 of the paper, the same optimum and, under Adam, the
same steps). Tokens: every non-padding token of the question+answer text (as the reference code uses
whole texts).

Steering coefficient c (`steering`):
- "adaptive" (default): c = beta * mean_t ||h_l^frozen(x_f,t)||, the mean norm of the original model's
  layer-l activations over every non-padding forget token, computed once before training
  (`steering_scale` beta, default 5 as Adaptive RMU). Dang et al. show that RMU only works when c is
  large relative to ||h_l(x_f)|| and that the right c grows with the layer's activation norm; the
  paper's fixed c 6.5 was hand-tuned for Zephyr-7B's layer 7 and is too weak or too strong at
  another layer or model. (On the tiny built-in models the layer-l norm is ~1, so 6.5 happens to be
  near 5x it; what held those in place was the 7B alpha 1200 and lr: docs/llm-methods.md.) Their code
  takes the mean norm over the first forget batch at step 0, padding included; here the whole forget
  set, non-padding tokens only: the same quantity, less noisy.
- "fixed": the original RMU's constant c = `steering_coeff` (default 6.5, the paper's Zephyr-7B value).
`steering_coeff` is refused under "adaptive" (it would be silently ignored). The c used is logged
as log["steering_coeff"].

Layers: `layer=None` (default) scales l to the model's depth, round(7/32 * n_layers) (Zephyr's 7 of
32), raised to 2 where the model has >= 3 layers (so the paper's three updated layers l-2..l exist),
else the last layer (a 1- or 2-layer model: l = n_layers - 1). Only the MLP down-projections of layers
max(0, l-2)..l are updated (three layers as the paper where they exist; both layers of a 2-layer
model, the single layer of a 1-layer one).

Frozen activations without a model copy: the frozen model differs from the trained one only in the
(few) updated down-projection weights, so the originals of those are kept and swapped in with
torch.func.functional_call (under LoRA, the adapters are disabled instead).

Defaults: Zephyr-7B (32 layers): l 7, alpha 1200, lr 5e-5, batch 4, 1 epoch; adaptive c with beta 5
(Adaptive RMU's Zephyr setting; fixed c 6.5 with `steering="fixed"`).
"""
from __future__ import annotations

import torch
from torch import nn

from unlearnx.methods.llm.base import COMMON_DEFAULTS, LLMMethod, default_lora_config
from unlearnx.methods.registry import register_method

__all__ = ["RMU", "STEERING_MODES", "decoder_layers", "default_layer", "down_projection", "hidden_state",
           "mean_activation_norm", "steering_control"]

STEERING_MODES = ("adaptive", "fixed")
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


def default_layer(n_layers: int) -> int:
    """RMU's layer l for a model of `n_layers` decoder layers (module docstring, "Layers")."""
    return max(round(7 / 32 * n_layers), min(2, n_layers - 1))


@torch.no_grad()
def mean_activation_norm(model, dataset, layer: nn.Module, *, batch_size: int) -> float:
    """mean_t ||h(x_t)|| of `layer`'s output over every non-padding token of `dataset` (eval mode)."""
    from unlearnx._modes import training_mode

    device = next(model.parameters()).device
    total, count = 0.0, 0
    with training_mode(model):
        for start in range(0, len(dataset), batch_size):
            batch = dataset.collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
            batch = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
            norms = hidden_state(model, batch, layer).float().norm(dim=-1)
            mask = batch["attention_mask"].to(norms.dtype)
            total += float((norms * mask).sum())
            count += int(mask.sum())
    if count == 0:
        raise ValueError("forget: no non-padding tokens to measure the activation norm on")
    return total / count


def _masked_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    per_token = (h.float() - target.float()).pow(2).mean(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


@register_method("rmu", task="causal_lm")
class RMU(LLMMethod):
    """RMU: steer layer-l activations of forget text to c*u, keep retain activations; layers l-2..l MLP-out only.

    c adaptive (beta x the forget activations' mean norm, Adaptive RMU) by default, or fixed."""

    paper = "Li et al., 'The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning', ICML 2024"
    requires = ("forget", "retain")
    defaults = {**COMMON_DEFAULTS, "epochs": 1, "lr": 5e-5, "batch_size": 4, "warmup_epochs": 0,
                "layer": None, "steering": "adaptive", "steering_scale": 5.0, "steering_coeff": None,
                "alpha": 1200.0}
    fixed_coeff = 6.5  # the paper's c (Zephyr-7B), steering="fixed" without steering_coeff

    def validate(self):
        super().validate()
        layer = self.hparams["layer"]
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
            raise ValueError(f"layer must be an int >= 0 (or None: scaled to the depth), got {layer!r}")
        hp = self.hparams
        if hp["steering"] not in STEERING_MODES:
            raise ValueError(f"steering must be one of {STEERING_MODES}, got {hp['steering']!r}")
        for key in ("steering_scale", "steering_coeff"):
            value = hp[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"{key} must be a number > 0, got {value!r}")
        if hp["steering_scale"] is None:
            raise ValueError("steering_scale must be a number > 0, got None")
        if hp["steering"] == "adaptive" and hp["steering_coeff"] is not None:
            raise ValueError("steering_coeff is the fixed coefficient: give steering='fixed' with it (the default "
                             "steering='adaptive' sets c = steering_scale x the forget activations' mean norm)")

    def setup(self, model, *, forget, retain, progress):
        layers = decoder_layers(model)
        ell = self.hparams["layer"]
        ell = default_layer(len(layers)) if ell is None else ell
        if not 0 <= ell < len(layers):
            raise ValueError(f"layer must lie in [0, {len(layers) - 1}] for this {len(layers)}-layer model, got {ell}")
        self.layer_index = ell
        prefix = {id(m): n for n, m in _base(model).named_modules()}
        self.module_names = []
        for i in range(max(0, ell - 2), ell + 1):
            rel, module = down_projection(layers[i])
            self.module_names.append(prefix[id(module)])
        base = _base(model)
        self.param_names = [f"{m}.{p}" for m in self.module_names for p, _ in base.get_submodule(m).named_parameters()]
        self.frozen = {n: p.detach().clone() for n, p in base.named_parameters() if n in set(self.param_names)}
        self.control = steering_control(model, self.steering_coefficient(model, forget, layers[ell]))

    def steering_coefficient(self, model, forget, layer: nn.Module) -> float:
        """c: fixed, or beta x mean_t ||h_l(x_f,t)|| of the model as given (before any update)."""
        hp = self.hparams
        if hp["steering"] == "fixed":
            self.coeff = float(hp["steering_coeff"] if hp["steering_coeff"] is not None else self.fixed_coeff)
        else:
            norm = mean_activation_norm(model, forget, layer, batch_size=hp["batch_size"])
            self.coeff = hp["steering_scale"] * norm
        return self.coeff

    def lora_config(self, model):
        config = default_lora_config()
        config.target_modules = list(self.module_names)
        return config

    def _layer(self, model):
        return decoder_layers(model)[self.layer_index]

    def train(self, model, loader, *, progress):
        if self._peft is not None:
            log = super().train(model, loader, progress=progress)
            log["steering_coeff"] = self.coeff
            return log
        wanted = set(self.param_names)
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            p.requires_grad_(n in wanted)
        try:
            log = super().train(model, loader, progress=progress)
        finally:
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
        log["steering_coeff"] = self.coeff
        return log

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
