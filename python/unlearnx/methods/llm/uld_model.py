"""ULD at inference: the target and its assistant decoded together (Ji et al., 2024, "Reversing the
Forget-Retain Objectives: An Efficient LLM Unlearning Framework from Logit Difference").

Every position combines the two logit rows with `unlearnx.ops.logit_diff` (mode "uld"):

    c_v = z_target,v − w·z_assistant,v   where z_target,v ≥ min(max z_target + log r, the ⌊r·V⌋-th largest)
    c_v = z_target,v                     elsewhere (the relative-top filter)

Three ways to use it:
- `ULDModel(target, assistant)(input_ids, attention_mask, ...)`: a causal LM whose `.logits` are
  log_softmax(c) [B, L, V] (log-probs are valid logits), so scoring, the TOFU/MUSE suites and
  unlearnx's KV-cache greedy decoding (`eval.llm.generation.greedy_generate`) treat it like any
  model; its cache is the pair (target cache, assistant cache).
- `ULDModel.generate(...)`: unlearnx's loop, target and assistant each with its own KV cache on the
  same left-padded batch, one fused `logit_diff_sample` per step (greedy or seeded Gumbel-max
  sampling with temperature / top-k / top-p), stop at eos or stop strings.
- `ULDLogitsProcessor(assistant, ...)` in `target.generate(..., logits_processor=[...])`: the
  Hugging Face loop; the processor runs the assistant with its own cache on the tokens generate
  has produced and returns the combined log-probs.

`ULDModel(base, reinforced, weight=α, mode="whp")` is WHP's inference-time mix (Eldan &
Russinovich, 2023): c = v_base − α·ReLU(v_reinforced − v_base) through the same op and loop.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from unlearnx._modes import training_mode
from unlearnx.ops.logit_diff import MODES, logit_diff_logprobs, logit_diff_sample

__all__ = ["ULDModel", "ULDOutput", "ULDLogitsProcessor"]


def _check_weights(weight, relative_top) -> tuple[float, float]:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f"weight: must be a finite number, got {weight!r}")
    if isinstance(relative_top, bool) or not isinstance(relative_top, (int, float)) or not 0 < relative_top <= 1:
        raise ValueError(f"relative_top: must be a number in (0, 1], got {relative_top!r}")
    return float(weight), float(relative_top)


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _cache_arg(model: nn.Module) -> str | None:
    from unlearnx.eval.llm.generation import _cache_argument

    return _cache_argument(_base(model))


def _last_only(model: nn.Module) -> dict:
    """{"logits_to_keep": 1} for models that can skip the LM head on all but the last position
    (decoding reads only that one; the prompt step would otherwise project every prompt token)."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(_base(model).forward).parameters else {}


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    # A left-padded row gets the positions it would have alone (0 at its first real token).
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


def _run(model: nn.Module, cache_arg: str | None, input_ids, attention_mask, position_ids, cache, **kwargs):
    """(last-layer logits [B, L, V], the new cache or None) of one forward."""
    if cache_arg is not None:
        kwargs["use_cache"] = True
        if cache is not None:
            kwargs[cache_arg] = cache
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
    return out.logits, (getattr(out, cache_arg, None) if cache_arg is not None else None), out


@dataclass
class ULDOutput:
    """What `ULDModel.forward` returns: logits = combined log-probs [B, L, V] fp32; cache = (target
    cache, assistant cache) or None; loss = mean answer-token NLL when labels were given;
    hidden_states = the target's when asked (ULD does not change the target's representations)."""

    logits: torch.Tensor
    cache: tuple | None = None
    loss: torch.Tensor | None = None
    hidden_states: tuple | None = None


class ULDModel(nn.Module):
    """The ULD-unlearned model: an untouched target and a trained assistant decoded together.

    Args:
        target: the original causal LM (transformers model).
        assistant: the trained assistant (same vocabulary; see unlearnx.methods.llm.uld.build_assistant).
        weight: w, the assistant's logit weight (paper 0.8–1.0). relative_top: r in (0, 1].
        mode: "uld" (default) or "whp" (WHP's mix: target = base model, assistant = reinforced
            model, weight = α; relative_top unused).
    w, r and the mode are stored as buffers, so they are part of `state_dict()` (saved with the
    weights, and part of any cache key built from the weights).
    """

    def __init__(self, target: nn.Module, assistant: nn.Module, *, weight: float = 0.8, relative_top: float = 0.01,
                 mode: str = "uld"):
        super().__init__()
        for name, m in (("target", target), ("assistant", assistant)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"{name}: expected a torch.nn.Module, got {type(m).__name__}")
        if mode not in ("uld", "whp"):
            raise ValueError(f"mode: must be 'uld' or 'whp', got {mode!r}")
        weight, relative_top = _check_weights(weight, relative_top)
        self.target, self.assistant = target, assistant
        self.register_buffer("uld_weight", torch.tensor(weight, dtype=torch.float64))
        self.register_buffer("uld_relative_top", torch.tensor(relative_top, dtype=torch.float64))
        self.register_buffer("uld_mode", torch.tensor(MODES.index(mode), dtype=torch.int64))
        self.mode = mode
        self._cache_arg = _cache_arg(target)
        self._last = (_last_only(target), _last_only(assistant))
        # Python copies for the decoding step (reading a CUDA buffer every step would sync the
        # device), refreshed whenever a state dict is loaded.
        self.weight, self.relative_top = weight, relative_top
        self.register_load_state_dict_post_hook(ULDModel._refresh)

    @staticmethod
    def _refresh(module, incompatible_keys) -> None:
        module.weight, module.relative_top = _check_weights(float(module.uld_weight), float(module.uld_relative_top))
        module.mode = MODES[int(module.uld_mode)]

    @property
    def generation_config(self):
        return _base(self.target).generation_config

    def combine(self, target_logits: torch.Tensor, assistant_logits: torch.Tensor) -> torch.Tensor:
        """log_softmax of the combined logits [..., V] (fp32) of two logit tensors of the same shape."""
        return logit_diff_logprobs(target_logits, assistant_logits.to(target_logits.dtype), mode=self.mode,
                                   weight=self.weight, relative_top=self.relative_top)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: tuple | None = None, use_cache: bool | None = None,
                labels: torch.Tensor | None = None, output_hidden_states: bool | None = None) -> ULDOutput:
        """Combined log-probs of every position.

        Args:
            input_ids, attention_mask, position_ids: [B, L] as for any causal LM.
            cache: the (target, assistant) cache pair of a previous call (then input_ids are the new tokens).
            use_cache: return the cache pair. labels: [B, L] (-100 off the answer) for `loss`.
            output_hidden_states: return the target's hidden states.
        Returns:
            ULDOutput (logits [B, L, V] fp32 log-probs; no gradient: an inference model).
        """
        if cache is not None and (not isinstance(cache, tuple) or len(cache) != 2):
            raise ValueError("cache: expected the (target cache, assistant cache) pair a previous call returned")
        t_cache, a_cache = cache if cache is not None else (None, None)
        arg = self._cache_arg if (use_cache or cache is not None) else None
        extra = {"output_hidden_states": True} if output_hidden_states else {}
        zt, t_new, t_out = _run(self.target, arg, input_ids, attention_mask, position_ids, t_cache, **extra)
        za, a_new, _ = _run(self.assistant, arg, input_ids, attention_mask, position_ids, a_cache)
        logits = self.combine(zt, za)
        loss = None
        if labels is not None:
            from unlearnx.methods.llm.losses import mean_nll

            loss = mean_nll(logits, labels)
        return ULDOutput(logits=logits, cache=(t_new, a_new) if arg is not None else None, loss=loss,
                         hidden_states=getattr(t_out, "hidden_states", None) if output_hidden_states else None)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, eos_token_id: int | Sequence[int] | None = None,
                 pad_token_id: int | None = None, stop_strings: Sequence[str] = (), tokenizer=None,
                 use_cache: bool = True) -> torch.Tensor:
        """Decode with both models, each with its own KV cache; one `logit_diff_sample` per step.

        Args:
            input_ids, attention_mask: [B, L0] left-padded prompts (mask None: no padding).
            max_new_tokens: steps at most. do_sample: Gumbel-max sampling (else greedy argmax of c).
            temperature, top_k (0 = off), top_p (1 = off): as in `logit_diff_sample`.
            seed: the sampling stream (None: drawn from torch's default generator, so torch.manual_seed
                reproduces a run); step s of row b uses offset s·B + b.
            eos_token_id, pad_token_id: default from the target's generation config; a row stops after eos
                and is padded with pad_token_id.
            stop_strings: a row also stops once its decoded new text contains one (needs `tokenizer`);
                the stop string's tokens stay in the output, as in transformers.
            use_cache: False re-runs both models on the whole sequence every step (same tokens, slower).
        Returns:
            [B, L0 + T] int64: the prompts followed by T ≤ max_new_tokens generated tokens.
        """
        from unlearnx.eval.llm.generation import cut_at_stop

        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.int64:
            raise ValueError(f"input_ids: expected an int64 tensor [B, L], got "
                             f"{getattr(input_ids, 'dtype', type(input_ids).__name__)} {list(getattr(input_ids, 'shape', []))}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask: shape {list(attention_mask.shape)} != input_ids {list(input_ids.shape)}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be an int >= 1, got {max_new_tokens!r}")
        if isinstance(stop_strings, str) or not all(isinstance(s, str) and s for s in stop_strings):
            raise ValueError("stop_strings: expected a sequence of non-empty str")
        if stop_strings and tokenizer is None:
            raise ValueError("tokenizer: needed to match stop_strings")
        gc = self.generation_config
        eos = gc.eos_token_id if eos_token_id is None else eos_token_id
        pad = gc.pad_token_id if pad_token_id is None else pad_token_id
        if pad is None:
            raise ValueError("pad_token_id: not given and the target's generation config has none")
        eos_ids = torch.tensor([] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
                               dtype=torch.int64, device=input_ids.device)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())

        b = input_ids.shape[0]
        mask = attention_mask.to(torch.int64)
        positions = _positions(mask)
        arg = self._cache_arg if use_cache else None
        generated: list[torch.Tensor] = []
        done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        caches = (None, None)
        step_ids, step_pos = input_ids, positions
        with training_mode(self):
            for step in range(max_new_tokens):
                if arg is None:  # no cache: the whole sequence again
                    step_ids = torch.cat([input_ids, *[t[:, None] for t in generated]], 1)
                    step_pos = torch.cat([positions, positions[:, -1:] + 1 + torch.arange(
                        len(generated), device=input_ids.device)], 1)
                zt, tc, _ = _run(self.target, arg, step_ids, mask, step_pos, caches[0], **self._last[0])
                za, ac, _ = _run(self.assistant, arg, step_ids, mask, step_pos, caches[1], **self._last[1])
                caches = (tc, ac)
                tok, _ = logit_diff_sample(zt[:, -1], za[:, -1].to(zt.dtype), mode=self.mode, weight=self.weight,
                                           relative_top=self.relative_top, temperature=temperature, top_k=top_k,
                                           top_p=top_p, greedy=not do_sample, seed=seed, offset=step * b)
                tok = torch.where(done, torch.full_like(tok, pad), tok)
                generated.append(tok)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                step_ids, step_pos = tok[:, None], step_pos[:, -1:] + 1
                done |= torch.isin(tok, eos_ids)
                if stop_strings:
                    new = torch.stack(generated, 1)
                    for r in torch.nonzero(~done).flatten().tolist():
                        if cut_at_stop(tokenizer.decode(new[r], skip_special_tokens=True), stop_strings)[1]:
                            done[r] = True
                if bool(done.all()):
                    break
        return torch.cat([input_ids, torch.stack(generated, 1)], 1)


class ULDLogitsProcessor:
    """A transformers LogitsProcessor: target.generate(..., logits_processor=[ULDLogitsProcessor(assistant)]).

    Each call gets the sequences so far `input_ids` [B, L] and the target's next-token scores [B, V];
    it advances the assistant (with its own KV cache) by the tokens it has not seen and returns the
    combined log-probs log_softmax(c) [B, V], which generate's greedy / sampling step then uses.
    A call whose sequences are not the previous ones plus one token starts a new generation.

    Args:
        assistant: the trained assistant. weight, relative_top: w and r (as ULDModel).
        prompt_attention_mask: [B, L0] the attention mask given to generate for left-padded prompts
            (None: no padding).
    """

    def __init__(self, assistant: nn.Module, *, weight: float = 0.8, relative_top: float = 0.01,
                 prompt_attention_mask: torch.Tensor | None = None):
        if not isinstance(assistant, nn.Module):
            raise TypeError(f"assistant: expected a torch.nn.Module, got {type(assistant).__name__}")
        self.weight, self.relative_top = _check_weights(weight, relative_top)
        if prompt_attention_mask is not None and (not isinstance(prompt_attention_mask, torch.Tensor)
                                                  or prompt_attention_mask.dim() != 2):
            raise ValueError("prompt_attention_mask: expected a [B, L0] tensor or None")
        self.assistant = assistant
        self.prompt_attention_mask = prompt_attention_mask
        self._arg = _cache_arg(assistant)
        self._last = _last_only(assistant)
        self._cache, self._mask, self._pos, self._seen = None, None, None, 0

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        b, length = input_ids.shape
        if scores.dim() != 2 or scores.shape[0] != b:
            raise ValueError(f"scores: expected [B={b}, V], got {list(scores.shape)}")
        if self._cache is not None and self._mask.shape[0] == b and length == self._seen + 1:
            self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], 1)
            self._pos = self._pos[:, -1:] + 1
            ids, pos, cache = input_ids[:, -1:], self._pos, self._cache
        else:  # a new generation (or no cache): the whole sequence
            self._mask = self._full_mask(input_ids)
            self._pos = _positions(self._mask)
            ids, pos, cache = input_ids, self._pos, None
        with training_mode(self.assistant):
            za, self._cache, _ = _run(self.assistant, self._arg, ids, self._mask, pos, cache, **self._last)
        self._seen = length
        return logit_diff_logprobs(scores, za[:, -1].to(scores.dtype), mode="uld", weight=self.weight,
                                   relative_top=self.relative_top)

    def _full_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        # The prompt mask followed by ones for the tokens generated so far.
        b, length = input_ids.shape
        prompt = self.prompt_attention_mask
        if prompt is None:
            return torch.ones_like(input_ids)
        if prompt.shape[0] != b or prompt.shape[1] > length:
            raise ValueError(f"prompt_attention_mask: shape {list(prompt.shape)} does not fit the sequences "
                             f"{list(input_ids.shape)}")
        prompt = prompt.to(device=input_ids.device, dtype=torch.int64)
        return torch.cat([prompt, torch.ones_like(input_ids[:, prompt.shape[1]:])], 1)
