"""The base class of the causal-LM unlearning methods, their data plumbing and the plain training loop.

Calling convention (through `unlearnx.unlearn`, which routes any transformers causal LM here):

    res = ux.unlearn(model, method="npo", forget=qa.split("forget10"), retain=qa.split("retain90"),
                     tokenizer=tok, lr=1e-5, epochs=5)

forget / retain: a `QADataset` or `TextDataset` (unlearnx.data.lm_batches), or a sequence of
`QAItem`s / (question, answer) pairs, which are tokenized with `tokenizer` and `template`.
Methods that need refusal answers for the forget questions (IdkNLL, IdkDPO, FLAT) build them from
the forget pairs and need `tokenizer`. Every step sees the batch dict

    {"forget": batch, "retain": batch, "idk": batch (refusal answers, when the method uses them)}

(batch = input_ids, attention_mask, labels [B, L]; the forget batch also has "index" [B], the
positions of its examples in the forget set, which keys the cached reference statistics).
`LLMMethod.loss(model, batch)` returns (loss, {name: float}); the plain loop (AdamW, linear
warm-up over `warmup_epochs` then linear decay, grad-norm clip) and the Hugging Face Trainer
adapter (unlearnx.integrations.hf) both call it.

Common hyper-parameters (defaults: TOFU, Maini et al., 2024, for 7B models; a tiny model trained
from scratch needs lr ~1e-4..1e-3): epochs 5, lr 1e-5, batch_size 32, weight_decay 0.01,
warmup_epochs 1, max_grad_norm 1.0 (0 disables), max_steps 0 (no cap), lora (None | True |
peft.LoraConfig), merge_lora False, gradient_checkpointing False.

Reference models: the reference log-probabilities on forget data are fixed, so methods that only
need them (NPO, IdkDPO) compute them once before training and cache them per example
(`reference="cached"`, the default where possible); `reference="live"` keeps a frozen copy
instead (methods that need full reference logits on fresh data, e.g. a KL retain term, always do).
With LoRA the live reference is the same model with its adapters disabled: no copy at all.
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from unlearnx._modes import training_mode
from unlearnx.data.lm_batches import (ForgetRetainLoader, PairedQADataset, QADataset, QATemplate,
                                      refusal_items)
from unlearnx.data.text import QAItem
from unlearnx.distributed.context import current as current_context
from unlearnx.distributed.reduce import (all_reduce_gradients_, broadcast_parameters_, gather_ordered, owned,
                                         owned_count)
from unlearnx.distributed.sharding import count_units, rank_parts
from unlearnx.distributed.wrap import gradient_scale
from unlearnx.methods.llm.losses import forward_logits, kl_to_reference, mean_nll
from unlearnx.methods.registry import UnlearningMethod

__all__ = ["LLMMethod", "COMMON_DEFAULTS", "IndexedDataset", "as_lm_dataset", "prepare_lm", "run_lm", "is_causal_lm",
           "default_lora_config"]

COMMON_DEFAULTS = {
    "epochs": 5, "lr": 1e-5, "batch_size": 32, "weight_decay": 0.01, "warmup_epochs": 1,
    "max_grad_norm": 1.0, "max_steps": 0, "lora": None, "merge_lora": False, "gradient_checkpointing": False,
}
_REFERENCE_MODES = ("auto", "cached", "live")
_RETAIN_LOSSES = ("nll", "kl")


def is_causal_lm(model) -> bool:
    """True for a transformers PreTrainedModel with a causal-LM head (or a peft model around one)."""
    import sys

    if "transformers" not in sys.modules:  # nothing can be a PreTrainedModel before transformers loads
        return False
    from transformers import PreTrainedModel
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, PreTrainedModel):
        return False
    return type(base).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()) or (
        base.get_output_embeddings() is not None and base.can_generate())


class IndexedDataset(Dataset):
    """Adds each example's position: collate gives the wrapped batch plus "index" [B] int64."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return (i, self.dataset[i])

    def collate(self, features):
        batch = self.dataset.collate([f for _, f in features])
        batch["index"] = torch.tensor([i for i, _ in features], dtype=torch.long)
        return batch


def as_lm_dataset(data, name: str, tokenizer, template: QATemplate) -> Dataset:
    """A QADataset/TextDataset as given, or a QADataset of QAItems / (question, answer) pairs."""
    if hasattr(data, "collate") and isinstance(data, Dataset):
        if len(data) == 0:
            raise ValueError(f"{name}: empty dataset")
        return data
    if isinstance(data, Sequence) and not isinstance(data, str) and data and all(
            isinstance(x, (QAItem, tuple, list)) for x in data):
        if tokenizer is None:
            raise ValueError(f"{name}: QA items need tokenizer= to be tokenized")
        return QADataset(data, tokenizer, template=template)
    raise TypeError(f"{name}: expected a QADataset/TextDataset or a non-empty sequence of QAItem / "
                    f"(question, answer) pairs, got {type(data).__name__}")


def default_lora_config():
    """LoRA r 8, alpha 16, no dropout, on every linear layer but the LM head."""
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


class LLMMethod(UnlearningMethod):
    """Base of the causal-LM methods: data plumbing, LoRA, reference handling, the training loop.

    Subclasses set `defaults` ({**COMMON_DEFAULTS, ...}), `paper`, `requires`, and implement
    `loss(model, batch)`. Class flags: `uses_refusals` (an "idk" batch of refusal answers),
    `reference_needs` ("none" | "forget_logprob" | "forget_logits"), `trains` (False for methods that
    edit weights without a loop, e.g. task vectors).
    """

    task = "causal_lm"
    requires = ("forget",)
    uses_refusals = False
    reference_needs = "none"
    trains = True
    # (side, "tokens" | "samples"): what the loss (without the retain term of `combine`) is a mean
    # over ("tokens" = scored answer tokens, "samples" = rows, for sequence-level losses); needed to
    # split a global batch over processes / micro-batches exactly. None: cannot run sharded.
    loss_units: tuple[str, str] | None = None
    _unit_weights: dict[str, float] | None = None  # set by the sharded step only
    _weighted = False  # set by `combine` when it applied _unit_weights

    def validate(self) -> None:
        hp = self.hparams
        lora = hp["lora"]
        if lora not in (None, False, True) and type(lora).__name__ != "LoraConfig":
            raise ValueError(f"lora must be None, True or a peft.LoraConfig, got {lora!r}")
        if "reference" in hp and hp["reference"] not in _REFERENCE_MODES:
            raise ValueError(f"reference must be one of {_REFERENCE_MODES}, got {hp['reference']!r}")
        if "retain_loss" in hp and hp["retain_loss"] not in _RETAIN_LOSSES:
            raise ValueError(f"retain_loss must be one of {_RETAIN_LOSSES}, got {hp['retain_loss']!r}")

    # ---- reference model ------------------------------------------------------------------------
    def needs_live_reference(self) -> bool:
        """A frozen reference that runs every step: KL retain terms always; otherwise when asked."""
        hp = self.hparams
        if hp.get("retain_loss") == "kl" and self._has_retain:
            return True
        if self.reference_needs == "none":
            return False
        return hp.get("reference", "auto") == "live"

    def reference_logits(self, batch: dict) -> torch.Tensor:
        """Frozen reference logits [B, L, V] on a batch (live reference), without gradients."""
        with torch.no_grad():
            if self._ref_model is None:  # LoRA: the reference is the base model, adapters off
                with self._peft.disable_adapter():
                    return forward_logits(self._peft, batch)
            return forward_logits(self._ref_model, batch)

    def cache_reference(self, model, forget: Dataset, progress: bool) -> None:
        """Fill self.ref_cache with the reference statistics of every forget example (before training)."""

    def substitute_answers(self, model, forget_items: list[QAItem], retain_items: list[QAItem] | None, *,
                           tokenizer, template: QATemplate, seed: int) -> list[QAItem]:
        """The "idk" side of methods with `uses_refusals`: the forget questions with other answers,
        aligned with the forget items. Refusals by default (TOFU's IdkNLL / IdkDPO); concept
        poisoning gives poisoned facts. Runs on the unmodified model, before LoRA."""
        return refusal_items(forget_items, seed=seed)

    def setup(self, model, *, forget: Dataset, retain: Dataset | None, progress: bool) -> None:
        """Method-specific preparation on the unmodified model (reinforced models, caches)."""

    # ---- loss -----------------------------------------------------------------------------------
    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def retain_loss(self, model, retain_batch: dict) -> torch.Tensor:
        """L_r: mean token NLL on the retain batch, or KL(p_ref || p_theta) on it (retain_loss="kl")."""
        logits = forward_logits(model, retain_batch)
        if self.hparams.get("retain_loss", "nll") == "kl":
            return kl_to_reference(logits, self.reference_logits(retain_batch), retain_batch["labels"])
        return mean_nll(logits, retain_batch["labels"])

    def combine(self, model, batch: dict, forget_loss: torch.Tensor):
        """L = gamma * L_f + alpha * L_r (the retain term only when retain data is given and alpha > 0).

        In the sharded loop each term is first scaled by its part's share of the global batch's
        units (`_unit_weights`), so that the parts' losses sum to the one-process loss.
        """
        hp = self.hparams
        parts = {"forget_loss": forget_loss.item()}
        w = self._unit_weights
        total = hp.get("gamma", 1.0) * (forget_loss if w is None else forget_loss * w["primary"])
        if "retain" in batch and hp.get("alpha", 0.0) > 0:
            lr_ = self.retain_loss(model, batch["retain"])
            parts["retain_loss"] = lr_.item()
            total = total + hp["alpha"] * (lr_ if w is None else lr_ * w["retain"])
        if w is not None:
            self._weighted = True
        return total, parts

    def result_model(self, model):
        """The model `unlearn` returns, given the trained one: itself (ULD wraps the untouched target
        and its trained assistant in one inference model)."""
        return model

    def result_skeleton(self, model):
        """An untrained model with the structure `result_model` returns, built around `model`: what
        saved results of this method load into (default: `model` itself)."""
        return model

    def primary_units(self) -> tuple[str, str]:
        """(side, unit) of the primary loss term; raises for a method that cannot run sharded."""
        units = type(self).loss_units
        if units is None:
            raise NotImplementedError(
                f"method {self.name!r} does not declare loss_units = (side, 'tokens' | 'samples'), so its loss "
                "cannot be split over processes or micro-batches exactly; run it in one process without "
                "micro_batch_size")
        return units

    def lora_config(self, model):
        """The LoraConfig used for lora=True (RMU narrows it to the layers it updates)."""
        return default_lora_config()

    def make_optimizer(self, model, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """AdamW (decoupled weight decay) over the trainable parameters; WAGLE wraps it in a mask."""
        return torch.optim.AdamW(params, lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"])

    def trainable_parameters(self, model) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    # ---- the loop -------------------------------------------------------------------------------
    def run(self, model, *, forget, retain, seed, progress):
        raise TypeError("LLM methods run through unlearnx.unlearn (or unlearnx.methods.llm.prepare_lm)")

    def train(self, model, loader: ForgetRetainLoader, *, progress: bool) -> dict:
        """The plain PyTorch loop: AdamW, linear warm-up then linear decay, grad-norm clip; per-step log."""
        from tqdm import tqdm

        hp = self.hparams
        params = self.trainable_parameters(model)
        if not params:
            raise ValueError("model: has no trainable parameters")
        total = hp["epochs"] * len(loader)
        if hp["max_steps"]:
            total = min(total, hp["max_steps"])
        warmup = min(total, hp["warmup_epochs"] * len(loader))
        optimizer = self.make_optimizer(model, params)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        device = next(model.parameters()).device
        ctx = current_context()
        if ctx.sharded:
            self.primary_units()  # fail before any step
            broadcast_parameters_(model, ctx)
        log: dict[str, list] = defaultdict(list)
        step = 0
        model.train()
        with tqdm(total=total, desc=self.name, disable=not progress or not ctx.is_main) as bar:
            while step < total:
                for batch in loader:
                    if step >= total:
                        break
                    if ctx.sharded:
                        loss_value, parts = self._sharded_backward(model, batch, params, device, ctx, step)
                    else:
                        batch = _to_device(batch, device)
                        loss, parts = self.loss(model, batch)
                        if not torch.isfinite(loss):
                            raise FloatingPointError(f"{self.name}: non-finite loss {loss.item()} at step {step}; "
                                                     "lower lr")
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        loss_value = loss.item()
                    if hp["max_grad_norm"] > 0:
                        torch.nn.utils.clip_grad_norm_(params, hp["max_grad_norm"])
                    optimizer.step()
                    scheduler.step()
                    log["loss"].append(loss_value)
                    for k, v in parts.items():
                        log[k].append(v)
                    bar.set_postfix(loss=f"{log['loss'][-1]:.4f}")
                    bar.update()
                    step += 1
        model.eval()
        return dict(log)

    def _sharded_backward(self, model, batch: dict, params, device, ctx, step: int) -> tuple[float, dict]:
        """Gradients of the global batch's loss, summed over this rank's micro-batches and all ranks.

        Each part's loss terms are scaled by (units in the part) / (units in the global batch),
        units = the side's tokens or samples (`primary_units`; retain: tokens), so that
        sum over ranks and parts = the one-process loss and the summed gradients are its gradient.
        Returns the global loss and parts (the same on every rank).
        """
        side, unit = self.primary_units()
        totals = {"primary": count_units(batch[side], unit), "retain": count_units(batch.get("retain"), "tokens")}
        for p in params:
            p.grad = None
        scale = gradient_scale(model, ctx)  # a DDP/FSDP2 model averages in backward: undo it
        sums: dict[str, float] = defaultdict(float)
        # A DDP/FSDP2 model communicates in every forward/backward: all ranks run as many parts.
        for part, real in rank_parts(batch, ctx, primary=side, equal_counts=scale != 1.0):
            w = {"primary": real * count_units(part[side], unit) / max(totals["primary"], 1),
                 "retain": real * count_units(part.get("retain"), "tokens") / max(totals["retain"], 1)}
            self._unit_weights, self._weighted = w, False
            try:
                loss, parts = self.loss(model, _to_device(part, device))
            finally:
                self._unit_weights = None
            if not self._weighted:  # the loss is its primary term alone (no `combine`)
                loss = loss * w["primary"]
            (loss * scale if scale != 1.0 else loss).backward()
            sums["loss"] += loss.item()
            for k, v in parts.items():
                sums[k] += v * w["retain" if k == "retain_loss" else "primary"]
        if scale == 1.0:
            all_reduce_gradients_(params, ctx)
        merged: dict[str, float] = defaultdict(float)
        for rank_sums in ctx.all_gather(dict(sums)):  # rank order: the same float sum on every rank
            for k, v in rank_sums.items():
                merged[k] += v
        loss_value = merged.pop("loss", 0.0)
        if not math.isfinite(loss_value):  # every rank sees the same value: all stop together
            raise FloatingPointError(f"{self.name}: non-finite loss {loss_value} at step {step}; lower lr")
        return loss_value, dict(merged)


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    return {k: _to_device(v, device) for k, v in batch.items()}


class _FlatLoader:
    """ForgetRetainLoader whose forget side is a PairedQADataset: flattens {"forget": {...}} one level."""

    def __init__(self, loader: ForgetRetainLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            flat = dict(batch.pop("forget"))
            flat.update(batch)
            yield flat


def prepare_lm(algo: LLMMethod, model, forget, retain, *, tokenizer=None, template: QATemplate = QATemplate(),
               seed: int = 0, progress: bool = True):
    """Everything before the first step: datasets, LoRA, gradient checkpointing, reference, loader.

    Returns (model to train, loader of {"forget", "retain"[, "idk"]} batches). `model` is changed in
    place (LoRA layers are injected into it); the returned model is the peft wrapper under LoRA.
    """
    hp = algo.hparams
    forget_ds = as_lm_dataset(forget, "forget", tokenizer, template)
    retain_ds = None if retain is None else as_lm_dataset(retain, "retain", tokenizer, template)
    if "retain" in algo.requires and retain_ds is None:
        raise ValueError(f"method {algo.name!r} needs retain= data")
    algo._has_retain = retain_ds is not None and hp.get("alpha", 0.0) > 0
    named = {"forget": IndexedDataset(forget_ds)}
    if algo.uses_refusals:
        if tokenizer is None or not hasattr(forget_ds, "pairs"):
            raise ValueError(f"method {algo.name!r} builds refusal answers for the forget questions: give "
                             "forget as QA items or a QADataset, and tokenizer=")
        tmpl = getattr(forget_ds, "template", template)
        named["idk"] = QADataset(algo.substitute_answers(model, _qa_items(forget, forget_ds), _qa_items(retain, retain_ds),
                                                         tokenizer=tokenizer, template=tmpl, seed=seed),
                                 tokenizer, template=tmpl)
    algo.setup(model, forget=forget_ds, retain=retain_ds, progress=progress)

    if hp["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    algo._peft = None
    lora = hp["lora"]
    if lora:
        from peft import get_peft_model

        config = algo.lora_config(model) if lora is True else lora
        model = get_peft_model(model, config)
        algo._peft = model
        if hp["gradient_checkpointing"]:
            model.enable_input_require_grads()

    forget_paired = PairedQADataset(named)
    # Cached reference statistics come from the unmodified model, before any step.
    algo._ref_model = None
    algo.ref_cache = {}
    if algo.reference_needs != "none" and not algo.needs_live_reference():
        algo.cache_reference(model, forget_paired, progress)
    if algo.needs_live_reference() and algo._peft is None:
        algo._ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    loader = ForgetRetainLoader(forget_paired, retain_ds, batch_size=hp["batch_size"], seed=seed)
    return model, _FlatLoader(loader)


def _qa_items(raw, dataset) -> list[QAItem] | None:
    """The caller's QA items when given as QAItems (their subject / fact / value kept), else the
    dataset's (question, answer) pairs as bare QAItems; None without data."""
    if raw is None or dataset is None:
        return None
    if isinstance(raw, Sequence) and not isinstance(raw, str) and raw and all(isinstance(x, QAItem) for x in raw):
        return list(raw)
    return [QAItem(q, a) for q, a in getattr(dataset, "pairs", [])]


def finish_lm(algo: LLMMethod, model):
    """Merge LoRA when asked; drop references the result must not keep."""
    algo._ref_model = None
    if algo._peft is not None and algo.hparams["merge_lora"]:
        model = model.merge_and_unload()
    return model


def cached_sequence_logprobs(model, paired: PairedQADataset, key: str, *, batch_size: int, peft=None,
                             progress: bool = False) -> torch.Tensor:
    """log p_ref(y | x) of every example of paired.datasets[key], in dataset order, [N] fp32 (CPU).

    Run once on the unmodified model (adapters disabled under LoRA), in eval mode, no gradients.
    """
    from tqdm import tqdm

    from unlearnx.methods.llm.losses import sequence_logprob

    ds = paired.datasets[key]
    device = next(model.parameters()).device
    ctx = peft.disable_adapter() if peft is not None else contextlib.nullcontext()
    dist_ctx = current_context()
    starts = range(0, len(ds), batch_size)
    mine = {}
    with training_mode(model), torch.no_grad(), ctx:
        # Under torchrun each rank scores the batches it owns (the same batches as one process), then
        # the ranks exchange them: the cache is built once, and equals the one-process cache.
        for k, start in tqdm(owned(starts, dist_ctx), total=owned_count(len(starts), dist_ctx),
                             desc=f"reference {key}", disable=not progress):
            batch = ds.collate([ds[i] for i in range(start, min(len(ds), start + batch_size))])
            batch = _to_device(batch, device)
            mine[k] = sequence_logprob(forward_logits(model, batch), batch["labels"]).cpu()
    out = gather_ordered(mine, dist_ctx)
    return torch.cat(out)



def run_lm(algo: LLMMethod, model, forget, retain, *, tokenizer=None, template: QATemplate = QATemplate(),
           seed: int = 0, progress: bool = True):
    """Unlearn with an LLM method; returns (unlearned model, log). `model` is changed in place."""
    algo.seed = seed
    if not algo.trains:
        # Methods with their own procedure (WHP's inference mix, task vectors, prompt guards) get the
        # forget set, and retain data plus tokenizer when they declare they read retain data.
        forget_ds = as_lm_dataset(forget, "forget", tokenizer, template)
        if "retain" in algo.requires:
            model = algo.apply(model, forget_ds, progress, retain=as_lm_dataset(retain, "retain", tokenizer, template),
                               tokenizer=tokenizer)
        else:
            model = algo.apply(model, forget_ds, progress)
        return model, {"steps": 0, **getattr(algo, "log", {})}
    model, loader = prepare_lm(algo, model, forget, retain, tokenizer=tokenizer, template=template, seed=seed,
                               progress=progress)
    try:
        log = algo.train(model, loader, progress=progress)
    finally:
        model = finish_lm(algo, model)
    log["steps"] = len(log.get("loss", []))
    return algo.result_model(model), log
