"""UOE: unlearning one expert of a mixture-of-experts LLM (Zhuang et al., 2025, "UOE: Unlearning One
Expert Is Enough for Mixture-of-Experts LLMs").

1. Expert attribution (unlearnx.stats.expert_attribution) on the forget set at the original model:
   affinity a_{l,e} = mean router probability of routed expert e at MoE layer l over forget tokens
   (attention-mask padding excluded; shared experts are never candidates).
2. The `layers` (default 1) MoE layers with the highest max_e a_{l,e} are chosen, and in each its
   top routed expert e*_l. Only those experts' parameters train (`MoEBlock.expert_parameters`):
   slice [e*] of the fused expert weights (transformers 5 Qwen2-MoE / Mixtral / OLMoE /
   DeepSeek-V3: mlp.experts.gate_up_proj [E, 2I, H], mlp.experts.down_proj [E, H, I]), where
   unlearnx.methods.masking.MaskedOptimizer zeroes the other slices' gradients and restores them
   bit-exactly after every step, or the whole module experts[e*] of an nn.ModuleList layout; every
   other parameter is frozen. Shared experts have no router column and are never chosen.
3. Loss: the base LLM method's loss (`base` = "ga" | "graddiff" | "npo" | "rmu", with its own
   hyper-parameters) plus the router anchor loss
       L_A = anchor * mean_{l chosen} mean_{forget tokens t} || g_{l,t} - onehot(e*_l) ||_2^2,
   g_{l,t} = router probability of token t at layer l (softmax of the logits; for sigmoid-scored
   DeepSeek-V3 routers the scores normalized over the experts, see unlearnx.stats.experts), so the
   router keeps sending forget tokens to the expert being unlearned (the paper's guard against the
   router routing around it).
   Router l's input does not depend on layer l's experts, so L_A has a gradient only through the
   router: with ``train_router`` (default True) the chosen layers' router weights [E, H] are trained
   too (a few hundred parameters per layer); with it False, L_A is a constant and only logged.
Under torchrun / micro-batches (unlearnx.distributed) UOE declares its base's `loss_units` (GA,
GradDiff: forget tokens; NPO: forget samples; RMU: none, so base="rmu" refuses to run sharded), and
each part's anchor term is weighted by its share of the global batch's attention-mask forget
tokens (the anchor's own unit), so the step equals the one-process step; the expert attribution is
all-reduced over ranks.
The fraction of parameters touched (trained expert slices / all parameters) goes to the log as
"touched_fraction", with "uoe_experts" ([(layer index, expert)]).
Full fine-tuning only (lora must be None). With base="rmu", RMU's layer is the (deepest) chosen MoE
layer's decoder layer: forget activations there are steered to c*u (c as RMU's `steering`: adaptive
from that layer's forget activation norm, or fixed), retain activations kept, and only
the chosen experts (and routers) train; the anchor takes its own forward if a base forward stops
before the chosen router.
"""
from __future__ import annotations

import torch

from unlearnx.distributed.reduce import all_reduce_floats
from unlearnx.distributed.sharding import rank_parts
from unlearnx.distributed.wrap import gradient_scale
from unlearnx.methods.llm.base import COMMON_DEFAULTS, LLMMethod
from unlearnx.methods.registry import get, register_method

__all__ = ["UOE"]

_UOE_DEFAULTS = {"base": "ga", "layers": 1, "anchor": 1.0, "train_router": True}
_BASES = ("ga", "graddiff", "npo", "rmu")


def _batches(dataset, batch_size: int):
    for start in range(0, len(dataset), batch_size):
        yield dataset.collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])


def _valid_tokens(side: dict) -> int:
    """Attention-mask tokens of a side: what the anchor loss is a mean over."""
    mask = side.get("attention_mask")
    return int(mask.sum()) if mask is not None else side["input_ids"].numel()


class _UOEMixin:
    """Restricts the base method to the chosen experts and adds the router anchor loss."""

    # Sharded step only: the anchor weight of each of this rank's parts, in order, and the running
    # sum of weighted anchor losses (for the log).
    _anchor_weights: list[float] | None = None
    _anchor_sum = 0.0

    def validate(self):
        super().validate()
        hp = self.hparams
        if hp["lora"]:
            raise ValueError("lora must be None for uoe: it trains slices of the fused expert weights")
        if isinstance(hp["layers"], bool) or not isinstance(hp["layers"], int) or hp["layers"] < 1:
            raise ValueError(f"layers must be an int >= 1, got {hp['layers']!r}")
        if not isinstance(hp["anchor"], (int, float)) or hp["anchor"] < 0:
            raise ValueError(f"anchor must be a number >= 0, got {hp['anchor']!r}")
        if not isinstance(hp["train_router"], bool):
            raise ValueError(f"train_router must be a bool, got {hp['train_router']!r}")

    def setup(self, model, *, forget, retain, progress):
        from unlearnx.methods.llm.rmu import RMU
        from unlearnx.stats.experts import expert_attribution, find_moe_blocks

        if not isinstance(self, RMU):  # RMU's own setup wants dense MLPs; _setup_rmu replaces it
            super().setup(model, forget=forget, retain=retain, progress=progress)
        blocks = find_moe_blocks(model)
        if not blocks:
            raise ValueError("model: uoe needs a mixture-of-experts model (modules with `gate` and `experts`)")
        if self.hparams["layers"] > len(blocks):
            raise ValueError(f"layers must be <= {len(blocks)} (MoE layers of this model), "
                             f"got {self.hparams['layers']}")
        att = expert_attribution(model, _batches(forget, self.hparams["batch_size"]), progress=progress)
        best, expert = att.affinity("forget").max(1)
        order = torch.argsort(best, descending=True, stable=True)[: self.hparams["layers"]]
        self.chosen = [(int(i), int(expert[i])) for i in order]
        self.masks, self._trainable, names = {}, [], []
        for li, e in self.chosen:
            # fused [E, ...] tensors train slice [e] only (masked); a ModuleList expert trains whole
            for name, p, mask in blocks[li].expert_parameters(e):
                if mask is not None:
                    self.masks[p] = mask
                self._trainable.append(p)
                names.append(name)
        self._blocks = [blocks[li] for li, _ in self.chosen]
        if self.hparams["train_router"]:
            self._trainable += [blk.router.weight for blk in self._blocks]
            names += [f"{blk.name}.gate.weight" for blk in self._blocks]
        self.param_names = names  # also what RMU's train() unfreezes
        if isinstance(self, RMU):
            self._setup_rmu(model, self._blocks, forget)
        total = sum(p.numel() for p in model.parameters())
        touched = sum(int(self.masks[p].sum()) if p in self.masks else p.numel() for p in self._trainable)
        self.touched_fraction = touched / total

    def _setup_rmu(self, model, chosen_blocks, forget):
        """RMU's state for the chosen experts: steer at the (deepest) chosen MoE layer's decoder output."""
        from unlearnx.methods.llm.rmu import decoder_layers, steering_control

        layers = decoder_layers(model)
        self.layer_index = max(next(i for i, layer in enumerate(layers) if any(m is b.block for m in layer.modules()))
                               for b in chosen_blocks)
        self.module_names = []
        wanted = set(self.param_names)
        self.frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n in wanted}
        self.control = steering_control(model, self.steering_coefficient(model, forget, layers[self.layer_index]))

    def trainable_parameters(self, model):
        return list(self._trainable)

    def make_optimizer(self, model, params):
        from unlearnx.methods.masking import MaskedOptimizer

        return MaskedOptimizer(super().make_optimizer(model, params), self.masks)

    def train(self, model, loader, *, progress):
        wanted = {id(p) for p in self._trainable}
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)
        try:
            log = super().train(model, loader, progress=progress)
        finally:
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
        log["touched_fraction"] = self.touched_fraction
        log["uoe_experts"] = list(self.chosen)
        return log

    def _sharded_backward(self, model, batch, params, device, ctx, step):
        """The base's sharded step, with the anchor weighted by (valid forget tokens of the part) /
        (valid forget tokens of the global batch): `rank_parts` is a pure function of the batch, so
        the parts listed here are the ones the base step runs, in the same order."""
        if self.hparams["anchor"] == 0:
            return super()._sharded_backward(model, batch, params, device, ctx, step)
        side, _ = self.primary_units()
        total = max(_valid_tokens(batch["forget"]), 1)
        equal = gradient_scale(model, ctx) != 1.0
        self._anchor_weights = [real * _valid_tokens(part["forget"]) / total
                                for part, real in rank_parts(batch, ctx, primary=side, equal_counts=equal)]
        self._anchor_sum = 0.0
        try:
            value, parts = super()._sharded_backward(model, batch, params, device, ctx, step)
        finally:
            self._anchor_weights = None
        parts["anchor_loss"] = all_reduce_floats([self._anchor_sum], ctx)[0]
        return value, parts

    def loss(self, model, batch):
        f = batch["forget"]
        n_tokens = f["input_ids"].numel()
        captured: list[list[torch.Tensor]] = [[] for _ in self._blocks]

        def hook_for(i):
            def hook(_m, _i, out):
                logits = out[0] if isinstance(out, tuple) else out
                if not captured[i] and logits.shape[0] == n_tokens:  # the first call is the forget forward
                    captured[i].append(logits)
            return hook

        handles = [blk.router.register_forward_hook(hook_for(i)) for i, blk in enumerate(self._blocks)]
        try:
            total, parts = super().loss(model, batch)
            if self.hparams["anchor"] > 0 and not all(captured):
                model(input_ids=f["input_ids"], attention_mask=f.get("attention_mask"))
        finally:
            for h in handles:
                h.remove()
        if self.hparams["anchor"] > 0:
            valid = f.get("attention_mask", torch.ones_like(f["input_ids"])).reshape(-1).bool()
            terms = []
            for (_, e), blk, logits in zip(self.chosen, self._blocks, captured):
                g = blk.probability_logits(logits[0]).float().softmax(-1)[valid]
                target = torch.zeros_like(g)
                target[:, e] = 1.0
                terms.append(((g - target) ** 2).sum(-1).mean())
            anchor_loss = torch.stack(terms).mean()
            parts["anchor_loss"] = anchor_loss.item()
            if self._anchor_weights is not None:  # a part of a sharded step
                if not self._weighted:  # a base without `combine` (GA): weight its term here
                    total, self._weighted = total * self._unit_weights["primary"], True
                weight = self._anchor_weights.pop(0)
                self._anchor_sum += weight * parts["anchor_loss"]
                anchor_loss = anchor_loss * weight
            total = total + self.hparams["anchor"] * anchor_loss
        return total, parts


@register_method("uoe", task="causal_lm")
class UOE(LLMMethod):
    """UOE: a base LLM method (`base`) on the forget set's top-affinity expert only, plus a router anchor loss."""

    paper = ("Zhuang, Zhang, Jia, Liu, Liu, Zhang, 'UOE: Unlearning One Expert Is Enough for Mixture-of-Experts "
             "LLMs', 2025")
    defaults = {**COMMON_DEFAULTS, **_UOE_DEFAULTS}

    def __new__(cls, **hparams):
        base_name = hparams.get("base", _UOE_DEFAULTS["base"])
        if base_name not in _BASES:
            raise ValueError(f"base must be one of {_BASES}, got {base_name!r}")
        base = get(base_name, "causal_lm")
        combined = type(f"UOE[{base_name}]", (_UOEMixin, base), {
            "defaults": {**base.defaults, **_UOE_DEFAULTS}, "name": "uoe", "paper": cls.paper,
            "requires": base.requires, "loss_units": base.loss_units})
        return combined(**hparams)
