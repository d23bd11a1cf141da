"""Hugging Face Trainer adapter for the causal-LM unlearning methods (optional; needs transformers).

    from unlearnx.integrations.hf import UnlearnTrainer
    method = ux.methods.get("npo", "causal_lm")(lr=1e-5, batch_size=8)
    trainer = UnlearnTrainer.build(model, method, forget=qa.split("forget10"), retain=qa.split("retain90"),
                                   tokenizer=tok, args=TrainingArguments(output_dir="out", ...))
    trainer.train()

`compute_loss` calls the same `method.loss(model, batch)` as the plain loop on the same
{"forget", "retain"[, "idk"]} batches (from `unlearnx.methods.llm.prepare_lm`, which also applies
LoRA, gradient checkpointing and the cached reference statistics). The optimizer, schedule, epochs
and logging are the Trainer's (its TrainingArguments), not the method's `lr`/`epochs`. The plain
loop in unlearnx.unlearn is the default and does not depend on this module.
"""
from __future__ import annotations

from transformers import Trainer

from unlearnx.methods.llm.base import LLMMethod, finish_lm, prepare_lm

__all__ = ["UnlearnTrainer"]


class UnlearnTrainer(Trainer):
    """A Trainer whose loss is an unlearnx LLM method's loss on {"forget", "retain"} batches."""

    def __init__(self, *args, method: LLMMethod, unlearn_loader, **kwargs):
        if not isinstance(method, LLMMethod):
            raise TypeError(f"method must be an unlearnx LLM method instance, got {type(method).__name__}")
        super().__init__(*args, **kwargs)
        self.method = method
        self.unlearn_loader = unlearn_loader
        self.unlearn_log: dict[str, list[float]] = {}

    @classmethod
    def build(cls, model, method: LLMMethod, *, forget, retain=None, tokenizer=None, seed: int = 0, **trainer_kwargs):
        """Prepare data/LoRA/reference with `prepare_lm` and wrap the result in a Trainer."""
        method.seed = seed
        model, loader = prepare_lm(method, model, forget, retain, tokenizer=tokenizer, seed=seed, progress=False)
        return cls(model=model, method=method, unlearn_loader=loader, **trainer_kwargs)

    def get_train_dataloader(self):
        return self.unlearn_loader

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, parts = self.method.loss(model, inputs)
        for k, v in parts.items():
            self.unlearn_log.setdefault(k, []).append(v)
        return (loss, None) if return_outputs else loss

    def unlearned_model(self):
        """The trained model (LoRA merged when the method's merge_lora is set)."""
        return finish_lm(self.method, self.model)
