"""Tiny causal language models built from small configs (no weights are downloaded).

Three architectures cover the layer types the LLM unlearning methods touch:

    tiny_llama   LlamaForCausalLM: RMSNorm, rotary attention, gated MLP (gate/up/down_proj Linear)
    tiny_gpt2    GPT2LMHeadModel: learned positions, LayerNorm, GPT-2's Conv1D layers (weights
                 stored [in, out], the transpose of nn.Linear)
    tiny_moe     Qwen2MoeForCausalLM: top-k routed experts plus one gated shared expert per layer.
                 In transformers 5 the routed experts of a layer are fused into two 3-D parameters,
                 `mlp.experts.gate_up_proj` [E, 2*I, H] and `mlp.experts.down_proj` [E, H, I];
                 the router is `mlp.gate.weight` [E, H]; the shared expert is `mlp.shared_expert`.
                 Pass `output_router_logits=True` to the forward to get per-layer router logits.

Initialization is seeded and leaves the global torch RNG untouched. Special-token ids default to
those of `unlearnx.data.text.build_tokenizer` (pad 0, bos 2, eos 3); `build_lm(name,
tokenizer=...)` takes them and the vocabulary size from a tokenizer.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["tiny_llama", "tiny_gpt2", "tiny_moe", "build_lm", "available_lms"]

_PAD, _BOS, _EOS = 0, 2, 3


def _check_positive(**kwargs) -> None:
    for name, value in kwargs.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: must be an int >= 1, got {value!r}")


def _check_heads(hidden: int, heads: int) -> None:
    if hidden % heads:
        raise ValueError(f"heads: hidden={hidden} must be divisible by heads={heads}")


def _seeded(build: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed: must be an int, got {seed!r}")
    # fork_rng restores the global RNG afterwards: building a model never perturbs the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.bos_token_id = model.config.bos_token_id
    return model.eval()


def tiny_llama(vocab_size: int, *, hidden: int = 64, layers: int = 4, heads: int = 4,
               kv_heads: int | None = None, intermediate: int | None = None, max_positions: int = 512,
               tie_embeddings: bool = False, seed: int = 0, pad_token_id: int = _PAD,
               bos_token_id: int = _BOS, eos_token_id: int = _EOS, attn_implementation: str = "sdpa"):
    """A small `LlamaForCausalLM`.

    `intermediate` defaults to 4 * hidden; `kv_heads` to `heads` (no grouped-query attention).
    Parameters ~ vocab*hidden*(2 - tie) + layers*(4*hidden^2 + 3*hidden*intermediate).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    kv_heads = heads if kv_heads is None else kv_heads
    intermediate = 4 * hidden if intermediate is None else intermediate
    _check_positive(vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                    intermediate=intermediate, max_positions=max_positions)
    _check_heads(hidden, heads)
    if heads % kv_heads:
        raise ValueError(f"kv_heads: heads={heads} must be divisible by kv_heads={kv_heads}")
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_positions, tie_word_embeddings=tie_embeddings,
                         pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         attn_implementation=attn_implementation)
    return _seeded(lambda: LlamaForCausalLM(config), seed)


def tiny_gpt2(vocab_size: int, *, hidden: int = 64, layers: int = 4, heads: int = 4,
              intermediate: int | None = None, max_positions: int = 512, seed: int = 0,
              pad_token_id: int = _PAD, bos_token_id: int = _BOS, eos_token_id: int = _EOS,
              attn_implementation: str = "sdpa"):
    """A small `GPT2LMHeadModel` (tied input/output embeddings, Conv1D projections, no dropout)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    intermediate = 4 * hidden if intermediate is None else intermediate
    _check_positive(vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads,
                    intermediate=intermediate, max_positions=max_positions)
    _check_heads(hidden, heads)
    # Dropout off: tiny models are used to memorize, and unlearning tests want determinism.
    config = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_inner=intermediate,
                        n_positions=max_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                        attn_implementation=attn_implementation)
    return _seeded(lambda: GPT2LMHeadModel(config), seed)


def tiny_moe(vocab_size: int, *, hidden: int = 64, layers: int = 4, heads: int = 4, experts: int = 4,
             top_k: int = 2, expert_intermediate: int | None = None, shared_intermediate: int | None = None,
             max_positions: int = 512, seed: int = 0, pad_token_id: int = _PAD, bos_token_id: int = _BOS,
             eos_token_id: int = _EOS, attn_implementation: str = "sdpa"):
    """A small `Qwen2MoeForCausalLM`: every layer has `experts` routed experts (top `top_k` per
    token, probabilities renormalized over the top k) and one shared expert.

    `expert_intermediate` defaults to 2 * hidden, `shared_intermediate` to 2 * hidden.
    """
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    expert_intermediate = 2 * hidden if expert_intermediate is None else expert_intermediate
    shared_intermediate = 2 * hidden if shared_intermediate is None else shared_intermediate
    _check_positive(vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads, experts=experts,
                    top_k=top_k, expert_intermediate=expert_intermediate,
                    shared_intermediate=shared_intermediate, max_positions=max_positions)
    _check_heads(hidden, heads)
    if top_k > experts:
        raise ValueError(f"top_k: {top_k} exceeds experts={experts}")
    config = Qwen2MoeConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, num_key_value_heads=heads, num_experts=experts,
                            num_experts_per_tok=top_k, moe_intermediate_size=expert_intermediate,
                            shared_expert_intermediate_size=shared_intermediate,
                            intermediate_size=shared_intermediate, decoder_sparse_step=1,
                            norm_topk_prob=True, max_position_embeddings=max_positions,
                            tie_word_embeddings=False, pad_token_id=pad_token_id,
                            bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                            attn_implementation=attn_implementation)
    return _seeded(lambda: Qwen2MoeForCausalLM(config), seed)


_BUILDERS: dict[str, Callable] = {"llama": tiny_llama, "gpt2": tiny_gpt2, "moe": tiny_moe}


def available_lms() -> list[str]:
    """Names accepted by `build_lm`."""
    return sorted(_BUILDERS)


def build_lm(name: str, *, vocab_size: int | None = None, tokenizer=None, **kwargs):
    """Build a tiny LM by name ("llama", "gpt2", "moe").

    Give `vocab_size`, or a `tokenizer` from which the vocabulary size and the pad/bos/eos ids
    are taken. Other keyword arguments go to the builder (tiny_llama, tiny_gpt2, tiny_moe).
    """
    if name not in _BUILDERS:
        raise ValueError(f"name: unknown model {name!r}; expected one of {available_lms()}")
    if tokenizer is not None:
        if vocab_size is not None and vocab_size != len(tokenizer):
            raise ValueError(f"vocab_size: {vocab_size} disagrees with len(tokenizer)={len(tokenizer)}")
        vocab_size = len(tokenizer)
        for key in ("pad", "bos", "eos"):
            token_id = getattr(tokenizer, f"{key}_token_id")
            if token_id is None:
                raise ValueError(f"tokenizer: has no {key} token")
            kwargs.setdefault(f"{key}_token_id", token_id)
    if vocab_size is None:
        raise ValueError("vocab_size: give vocab_size or tokenizer")
    return _BUILDERS[name](vocab_size, **kwargs)
