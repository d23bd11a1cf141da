"""ULD: unlearning from logit difference with a small assistant trained on reversed goals.

Ji et al., 2024, "Reversing the Forget-Retain Objectives: An Efficient LLM Unlearning Framework
from Logit Difference" (NeurIPS 2024). The target model is never changed. An *assistant* is built
from the target's first K decoder layers (plus its embeddings, final norm and LM head) with LoRA on
every linear layer but the head, and trained to do the opposite of unlearning: remember the forget
data, forget the retain data,

    L(θ_a) = NLL_f(θ_a) + λ · KL_r(θ_a),
    NLL_f  = mean token NLL of the assistant on the forget answers,
    KL_r   = mean over retain answer positions of KL(p_a ‖ uniform) = Σ_v p_a,v log p_a,v + log V,

with λ = 5 (`kl_weight`). Decoding then combines the two logit rows (unlearnx.ops.logit_diff,
mode "uld"): c = z_target − w·z_assistant on the tokens the target ranks high (target log-prob ≥
min(log p_max + log r, log p of the ⌊r·V⌋-th token)), c = z_target elsewhere. The assistant is
near-uniform on retain data, so subtracting it barely moves the target there; on forget data it is
confident about the forget answers, which the subtraction pushes down. The result model is a
`ULDModel` (unlearnx.methods.llm.uld_model): a causal LM whose logits are the combined log-probs
and whose `generate` runs both models with their own KV caches; its assistant has the trained
adapters merged into its weights (no LoRA branches at decoding time).

Defaults (the authors' released TOFU scripts, Llama-2-7B): K = 8 layers, LoRA r 16, α 32,
dropout 0.05, lr 1e-3, effective batch 32, w = 0.8, r = 0.01 (their model config's defaults are
w = 1, r = 0.1; the paper's range is w 0.8–1.0, r 0.01–0.1). The paper trains on an *augmented*
forget set (the forget QA plus paraphrased and perturbed answers): pass that set as `forget=`.
Tiny models (tests, the demo: a few layers, trained from scratch) take K = 1–2, lr 1e-2 and 30–60
epochs (the KL term first flattens the assistant everywhere; the forget NLL recovers later).
`layers` must be ≤ the target's layer count (K = all of them copies the whole model).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from unlearnx.data.lm_batches import IGNORE_INDEX
from unlearnx.methods.llm.base import COMMON_DEFAULTS, LLMMethod
from unlearnx.methods.llm.losses import forward_logits, mean_nll, shifted_labels
from unlearnx.methods.llm.uld_model import ULDLogitsProcessor, ULDModel
from unlearnx.methods.registry import register_method

__all__ = ["ULD", "ULDModel", "ULDLogitsProcessor", "build_assistant", "uniform_kl", "decoder_layers"]

# Where the decoder-layer list lives: Llama / Mistral / Qwen2 (and their MoE variants) keep it at
# model.layers, GPT-2 at transformer.h. The layer index is the next component of a parameter name.
_LAYER_PATHS = ("model.layers", "transformer.h")


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted path, ModuleList) of a supported causal LM's decoder layers; ValueError otherwise."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for path in _LAYER_PATHS:
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return path, module
    raise ValueError(f"model: unsupported architecture {type(model).__name__}: ULD's assistant needs a "
                     f"transformers causal LM whose decoder layers are at {' or '.join(_LAYER_PATHS)} "
                     "(Llama, Mistral, Qwen2, GPT-2 style)")


def build_assistant(model: nn.Module, *, layers: int = 8, lora_r: int = 16, lora_alpha: int = 32,
                    lora_dropout: float = 0.05):
    """ULD's assistant: the target's first `layers` decoder layers + embeddings + final norm + LM head,
    copied (the target is not shared or changed), with LoRA on every linear layer but the head.

    Args:
        model: a transformers causal LM (Llama / Mistral / Qwen2 / GPT-2 style), not a peft model.
        layers: K, the number of leading decoder layers kept (1 ≤ K ≤ the model's layers; paper 8).
        lora_r, lora_alpha, lora_dropout: the adapters (paper r 16, α 32, dropout 0.05).
    Returns:
        a peft `PeftModelForCausalLM` in eval mode, same class/dtype/device as `model`, whose base
        weights are frozen (only the LoRA A/B matrices train).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import PreTrainedModel

    if hasattr(model, "get_base_model") or not isinstance(model, PreTrainedModel):
        raise TypeError(f"model: expected a transformers PreTrainedModel without adapters (merge peft "
                        f"adapters first), got {type(model).__name__}")
    path, stack = decoder_layers(model)
    total = len(stack)
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= total:
        raise ValueError(f"layers: must be an int in [1, {total}] (the model has {total} decoder layers), "
                         f"got {layers!r}")
    if isinstance(lora_r, bool) or not isinstance(lora_r, int) or lora_r < 1:
        raise ValueError(f"lora_r: must be an int >= 1, got {lora_r!r}")
    if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float)) or lora_alpha <= 0:
        raise ValueError(f"lora_alpha: must be a number > 0, got {lora_alpha!r}")
    if isinstance(lora_dropout, bool) or not isinstance(lora_dropout, (int, float)) or not 0 <= lora_dropout < 1:
        raise ValueError(f"lora_dropout: must be in [0, 1), got {lora_dropout!r}")

    config = copy.deepcopy(model.config)
    config.num_hidden_layers = layers  # GPT-2's config maps this name to n_layer
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (Qwen2, ...)
        config.layer_types = config.layer_types[:layers]
    # Layers >= K are dropped; everything else (embeddings, positions, final norm, head) is copied.
    prefix = path + "."
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(prefix) and int(name[len(prefix):].split(".", 1)[0]) >= layers:
            continue
        state[name] = tensor.detach().clone()
    param = next(model.parameters())
    with torch.random.fork_rng(devices=[]):  # the throw-away random init must not move the caller's RNG
        assistant = type(model)(config)
    assistant = assistant.to(device=param.device, dtype=param.dtype)
    assistant.load_state_dict(state, strict=True)
    assistant.generation_config = copy.deepcopy(model.generation_config)
    lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=float(lora_dropout),
                      target_modules="all-linear", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[param.device] if param.device.type == "cuda" else []):
        torch.manual_seed(0)  # LoRA's A init: the same assistant for the same target, whatever the caller's RNG
        assistant = get_peft_model(assistant, lora)
    return assistant.eval()


def uniform_kl(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean over answer positions of KL(p ‖ uniform) = Σ_v p_v log p_v + log V (p = softmax(logits)).

    logits [B, L, V], labels [B, L] (-100 off the answer; position t is scored where labels[t+1] is
    an answer token, as for the NLL). Returns a scalar fp32 tensor with gradient; 0 when the batch
    has no answer token.
    """
    mask = shifted_labels(labels) != IGNORE_INDEX
    logp = logits[mask].float().log_softmax(-1)
    kl = (logp.exp() * logp).sum(-1) + math.log(logits.shape[-1])
    return kl.sum() / mask.sum().clamp(min=1)


@register_method("uld", task="causal_lm")
class ULD(LLMMethod):
    """ULD: train an assistant (first K layers + LoRA) on NLL_f + kl_weight·KL(p_a ‖ uniform)_r;
    res.model is a `ULDModel` decoding c = z_target − w·z_assistant under the relative-top filter.

    Hyper-parameters (besides the common ones; `lora` must stay None: ULD always trains LoRA adapters
    on its assistant, configured by lora_r / lora_alpha / lora_dropout): layers 8, weight 0.8,
    relative_top 0.01, kl_weight 5, lr 1e-3, lora_r 16, lora_alpha 32, lora_dropout 0.05.
    res.log: per-step "loss", "forget_loss" (NLL_f), "retain_kl" (KL_r) and their per-epoch means
    "epoch_forget_loss", "epoch_retain_kl".
    """

    paper = ("Ji et al., 'Reversing the Forget-Retain Objectives: An Efficient LLM Unlearning Framework from "
             "Logit Difference', NeurIPS 2024")
    requires = ("forget", "retain")
    defaults = {**COMMON_DEFAULTS, "lr": 1e-3, "layers": 8, "weight": 0.8, "relative_top": 0.01,
                "kl_weight": 5.0, "lora_r": 16, "lora_alpha": 32.0, "lora_dropout": 0.05}

    def validate(self):
        super().validate()
        hp = self.hparams
        if hp["lora"] not in (None, False):
            raise ValueError("lora: ULD trains LoRA adapters on its assistant, never on the target; leave lora "
                             "unset and use lora_r / lora_alpha / lora_dropout")
        if hp["merge_lora"]:
            raise ValueError("merge_lora: ULD returns the target and its assistant side by side; nothing to merge")
        if hp["layers"] < 1:
            raise ValueError(f"layers must be >= 1, got {hp['layers']}")
        if not 0 < hp["relative_top"] <= 1:
            raise ValueError(f"relative_top must be in (0, 1], got {hp['relative_top']}")
        if hp["lora_r"] < 1:
            raise ValueError(f"lora_r must be >= 1, got {hp['lora_r']}")
        if not 0 <= hp["lora_dropout"] < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {hp['lora_dropout']}")

    def setup(self, model, *, forget, retain, progress):
        hp = self.hparams
        self.assistant = build_assistant(model, layers=hp["layers"], lora_r=hp["lora_r"],
                                         lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"])
        if hp["gradient_checkpointing"]:
            self.assistant.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.assistant.enable_input_require_grads()

    def loss(self, model, batch):
        """L = NLL_f(assistant) + kl_weight · KL_r(assistant ‖ uniform); `model` is the assistant."""
        forget_loss = mean_nll(forward_logits(model, batch["forget"]), batch["forget"]["labels"])
        retain_kl = uniform_kl(forward_logits(model, batch["retain"]), batch["retain"]["labels"])
        total = forget_loss + self.hparams["kl_weight"] * retain_kl
        return total, {"forget_loss": forget_loss.item(), "retain_kl": retain_kl.item()}

    def train(self, model, loader, *, progress):
        """The base loop, run on the assistant (the target `model` is not touched)."""
        log = super().train(self.assistant, loader, progress=progress)
        per_epoch = max(1, len(loader))
        for key in ("forget_loss", "retain_kl"):
            steps = log.get(key, [])
            log[f"epoch_{key}"] = [sum(steps[i:i + per_epoch]) / len(steps[i:i + per_epoch])
                                   for i in range(0, len(steps), per_epoch)]
        return log

    def result_model(self, model):
        """ULDModel(target, assistant with its adapters merged): merging removes the LoRA branches
        (three extra matmuls per linear layer) from every decoding step."""
        hp = self.hparams
        assistant, self.assistant = self.assistant.merge_and_unload().eval().requires_grad_(False), None
        return ULDModel(model, assistant, weight=hp["weight"], relative_top=hp["relative_top"])

    def result_skeleton(self, model):
        """ULDModel(model, an untrained merged assistant of it): what saved ULD results load into."""
        hp = self.hparams
        assistant = build_assistant(model, layers=hp["layers"], lora_r=hp["lora_r"], lora_alpha=hp["lora_alpha"],
                                    lora_dropout=hp["lora_dropout"]).merge_and_unload()
        return ULDModel(model, assistant.requires_grad_(False), weight=hp["weight"], relative_top=hp["relative_top"])
