"""Per-(layer, expert) router attribution of a mixture-of-experts LM over forget / retain data.

Routers are found generically: a module that owns both a ``gate`` submodule (2-D ``weight``
[E, H]) and an ``experts`` submodule is a sparse MoE block, and its ``gate`` is the router. Layouts
covered (transformers 5): Qwen2-MoE, Mixtral, OLMoE and DeepSeek-V3 (``*TopKRouter`` returning
(logits, top-k weights, top-k indices); experts fused into [E, ...] parameters ``gate_up_proj`` /
``down_proj``), and the transformers 4.x layout (``nn.Linear`` gate returning logits, an
``nn.ModuleList`` of expert MLPs). A forward hook on the router takes its logits [N, E] (the output,
or the first element of a tuple output) and feeds them to `unlearnx.ops.moe_router_stats_` with a
per-token flag (0 for padding by the attention mask, 1 forget, 2 retain). top-k and the
renormalization come from the router (``top_k``, ``norm_topk_prob``) or the model config
(``num_experts_per_tok``, ``norm_topk_prob``).

Router probability p = softmax(z) for softmax routers (Qwen2-MoE, Mixtral, OLMoE, DeepSeek-V2).
DeepSeek-V3-style routers (``config.scoring_func == "sigmoid"``, or a router with an
``e_score_correction_bias``) score experts with s = sigmoid(z); there the op is fed log s, so
p = s / sum_e s (the scores normalized over all experts), the top-k is that of s and the gate
weight s_e / sum_topk s is DeepSeek-V3's ``norm_topk_prob`` weight (before
``routed_scaling_factor``). The count / gate-weight columns follow plain top-k of the scores: with
group-limited routing (``topk_group < n_group``) or a non-zero ``e_score_correction_bias`` the
model's actual selection can differ; the probability columns (and the affinity) are exact.

Shared experts (Qwen2-MoE ``shared_expert``, DeepSeek ``shared_experts``) are always active, have
no router column, and are listed in ``shared`` and never selected.

Under torchrun (unlearnx.distributed) every rank passes the same batches; rank r runs batches
k with k % world_size == r and the accumulators are summed over ranks (`all_reduce_stats_`), so
every rank gets the one-process statistics (up to fp32 summation order). Collective.

Affinity (Zhuang et al., 2025, "UOE: Unlearning One Expert Is Enough for Mixture-of-Experts
LLMs"): a_{l,e} = mean over forget tokens of the layer-l router probability of expert e.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from unlearnx._modes import training_mode
from unlearnx.distributed.context import current as current_context
from unlearnx.distributed.reduce import all_reduce_stats_, owned_items
from unlearnx.ops.router_stats import moe_router_stats_

__all__ = ["ExpertAttribution", "MoEBlock", "expert_attribution", "find_moe_blocks"]

_SHARED_NAMES = ("shared_expert", "shared_experts")
_SCORINGS = ("softmax", "sigmoid")


@dataclass
class MoEBlock:
    """One sparse MoE block: module name, router, expert container, E, top-k, renormalization,
    the shared expert's name (or None) and the router's scoring function ("softmax" | "sigmoid")."""

    name: str
    block: nn.Module
    router: nn.Module
    experts: nn.Module
    num_experts: int
    top_k: int
    normalize_topk: bool
    shared: str | None
    scoring: str = "softmax"

    def probability_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """[N, E] router logits -> [N, E] logits whose softmax is the router probability p: z itself
        (softmax routers) or log sigmoid(z) (sigmoid routers: softmax(log s) = s / sum_e s)."""
        return F.logsigmoid(logits.float()) if self.scoring == "sigmoid" else logits

    def expert_parameters(self, expert: int) -> list[tuple[str, nn.Parameter, torch.Tensor | None]]:
        """The parameters of routed expert `expert`: (name, parameter, mask) with mask a bool tensor
        of the parameter's shape selecting slice [expert] of a fused [E, ...] parameter, or None when
        the whole parameter is the expert's (``nn.ModuleList`` layout)."""
        if isinstance(expert, bool) or not isinstance(expert, int) or not 0 <= expert < self.num_experts:
            raise ValueError(f"expert must be an int in [0, {self.num_experts}), got {expert!r}")
        if isinstance(self.experts, nn.ModuleList):
            if len(self.experts) != self.num_experts:
                raise ValueError(f"model: {self.name}.experts has {len(self.experts)} modules but the router "
                                 f"scores {self.num_experts} experts")
            return [(f"{self.name}.experts.{expert}.{n}", p, None) for n, p in self.experts[expert].named_parameters()]
        fused = list(self.experts.named_parameters(recurse=False))
        nested = [n for n, _ in self.experts.named_parameters() if "." in n]
        if not fused or nested or any(p.dim() < 2 or p.shape[0] != self.num_experts for _, p in fused):
            raise ValueError(f"model: {self.name}.experts is neither an nn.ModuleList of experts nor fused "
                             f"[E={self.num_experts}, ...] parameters (got {[n for n, _ in fused] + nested})")
        out = []
        for n, p in fused:
            mask = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
            mask[expert] = True
            out.append((f"{self.name}.experts.{n}", p, mask))
        return out


def _scoring(router: nn.Module, config) -> str:
    scoring = getattr(config, "scoring_func", None)
    if scoring is None:
        # transformers' DeepSeek-V3-family routers hard-code sigmoid scores and own this bias buffer
        scoring = "sigmoid" if isinstance(getattr(router, "e_score_correction_bias", None), torch.Tensor) else "softmax"
    if scoring not in _SCORINGS:
        raise ValueError(f"model: router scoring function {scoring!r} is not supported (expected one of {_SCORINGS})")
    return scoring


def find_moe_blocks(model: nn.Module) -> list[MoEBlock]:
    """Every module with a ``gate`` router (2-D ``weight`` [E, H]) and an ``experts`` container, in
    model order (dense layers, e.g. DeepSeek's first ones, are skipped)."""
    config = getattr(model, "config", None)
    blocks = []
    for name, mod in model.named_modules():
        router, experts = getattr(mod, "gate", None), getattr(mod, "experts", None)
        if not isinstance(router, nn.Module) or not isinstance(experts, nn.Module):
            continue
        weight = getattr(router, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            continue
        top_k = getattr(router, "top_k", None) or getattr(mod, "top_k", None) or getattr(
            config, "num_experts_per_tok", None)
        norm = getattr(router, "norm_topk_prob",
                       getattr(mod, "norm_topk_prob", getattr(config, "norm_topk_prob", True)))
        if top_k is None:
            raise ValueError(f"model: cannot tell the top-k of the router {name}.gate (no top_k attribute "
                             "and no config.num_experts_per_tok)")
        shared = next((f"{name}.{s}" for s in _SHARED_NAMES if isinstance(getattr(mod, s, None), nn.Module)), None)
        blocks.append(MoEBlock(name, mod, router, experts, int(weight.shape[0]), int(top_k), bool(norm), shared,
                               _scoring(router, config)))
    return blocks


@dataclass
class ExpertAttribution:
    """Router statistics per MoE layer.

    layers: block module names (L). shared: the shared-expert module name per layer (or None).
    stats: [L, 2, E, 4] fp32 -- rows forget / retain; columns tokens routed (top-k), sum gate
    weight, sum router probability, sum probability^2. tokens: [2] forget / retain token counts.
    """

    layers: list[str]
    shared: list[str | None]
    stats: torch.Tensor
    tokens: torch.Tensor
    top_k: list[int]

    def affinity(self, group: str = "forget") -> torch.Tensor:
        """[L, E] mean router probability over the group's tokens (0 where it has none)."""
        g = {"forget": 0, "retain": 1}[group]
        return self.stats[:, g, :, 2] / self.tokens[g].clamp(min=1)

    def top_experts(self, n: int = 1) -> list[tuple[int, int]]:
        """The n (layer index, expert) pairs with the highest forget affinity, best first (routed experts only)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        aff = self.affinity("forget")
        order = torch.argsort(aff.flatten(), descending=True, stable=True)[:n]
        return [(int(i) // aff.shape[1], int(i) % aff.shape[1]) for i in order]


def _token_flags(batch: dict, group: int, forget_flag: str | None) -> torch.Tensor:
    ids = batch["input_ids"]
    valid = batch.get("attention_mask", torch.ones_like(ids)).bool()
    if forget_flag is None:
        per_sample = torch.full((ids.shape[0],), group, dtype=torch.long, device=ids.device)
    else:
        if forget_flag not in batch:
            raise KeyError(f"forget_flag: batch has no key {forget_flag!r} (keys: {sorted(batch)})")
        per_sample = torch.where(batch[forget_flag].reshape(-1).bool(), 1, 2).to(ids.device)
    return (valid.long() * per_sample[:, None]).reshape(-1)


@torch.no_grad()
def expert_attribution(model: nn.Module, data: Iterable[dict], *, retain: Iterable[dict] | None = None,
                       forget_flag: str | None = None, progress: bool = True) -> ExpertAttribution:
    """Stream forget (and retain) batches through the model and accumulate router statistics per expert.

    Args:
        model: a causal LM with sparse MoE blocks (see `find_moe_blocks`).
        data: iterable of batches {"input_ids": [B, T], "attention_mask": [B, T] (optional)}; every
            non-padding token is a forget token, unless ``forget_flag`` names a per-sample [B]
            bool/int key of the batch (true = forget, false = retain) for mixed batches.
        retain: optional iterable of retain batches (every non-padding token is retain).
        progress: tqdm over batches.
    Under torchrun: collective; each rank runs its round-robin share of the batches (all ranks
    must pass the same sequence) and the sums are all-reduced.
    Returns:
        ExpertAttribution (stats [L, 2, E, 4], token counts, shared experts).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if forget_flag is not None and not isinstance(forget_flag, str):
        raise TypeError(f"forget_flag must be a batch key (str) or None, got {forget_flag!r}")
    blocks = find_moe_blocks(model)
    if not blocks:
        raise ValueError("model has no MoE block (a module with `gate` and `experts` submodules)")
    E = blocks[0].num_experts
    if any(b.num_experts != E for b in blocks):
        raise ValueError("model: MoE blocks with different expert counts are not supported")
    device = next(model.parameters()).device
    stats = torch.zeros(len(blocks), 2, E, 4, dtype=torch.float32, device=device)
    tokens = torch.zeros(2, dtype=torch.float64, device=device)
    current: dict[str, torch.Tensor] = {}

    def hook_for(i: int, blk: MoEBlock):
        def hook(_mod, _inp, out):
            logits = out[0] if isinstance(out, tuple) else out
            logits = blk.probability_logits(logits.reshape(-1, blk.num_experts).detach())
            moe_router_stats_(stats[i], logits.float() if logits.dtype not in (torch.float32, torch.bfloat16)
                              else logits, current["flags"], top_k=blk.top_k, normalize_topk=blk.normalize_topk)
        return hook

    ctx = current_context()
    handles = [b.router.register_forward_hook(hook_for(i, b)) for i, b in enumerate(blocks)]
    try:
        with training_mode(model):
            streams = [(data, 1)] + ([(retain, 2)] if retain is not None else [])
            for stream, group in streams:
                # round-robin over ranks: each batch is run whole by one rank (sums do not care which)
                mine = owned_items(stream, ctx)
                for batch in tqdm(mine, desc=f"expert attribution ({'forget' if group == 1 else 'retain'})",
                                  disable=not progress or not ctx.is_main):
                    if not isinstance(batch, dict) or "input_ids" not in batch:
                        raise TypeError("data: every batch must be a dict with 'input_ids'")
                    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                    flags = _token_flags(batch, group, forget_flag)
                    current["flags"] = flags
                    tokens += torch.stack([(flags == 1).sum(), (flags == 2).sum()]).double()
                    model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
    finally:
        for h in handles:
            h.remove()
    all_reduce_stats_({"stats": stats, "tokens": tokens}, ctx)
    return ExpertAttribution([b.name for b in blocks], [b.shared for b in blocks], stats, tokens,
                             [b.top_k for b in blocks])
