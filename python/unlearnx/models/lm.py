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
    tiny_mixtral MixtralForCausalLM: top-k routed experts, no shared expert, softmax router with the
                 top-k weights always renormalized.
    tiny_olmoe   OlmoeForCausalLM: like Mixtral, but the top-k weights are the raw softmax
                 probabilities (OLMoE's `norm_topk_prob=False`).
    tiny_deepseek DeepseekV3ForCausalLM: multi-head latent attention, the first `dense_layers`
                 decoder layers dense, then sigmoid-scored routers (`mlp.gate`, with DeepSeek-V3's
                 `e_score_correction_bias` buffer) and `mlp.shared_experts` in every MoE layer.
    All four MoE families store a layer's routed experts fused as above (`experts.gate_up_proj`,
    `experts.down_proj`), and their routers return (logits [N, E], top-k weights, top-k indices).

Initialization is seeded and leaves the global torch RNG untouched. Special-token ids default to
those of `unlearnx.data.text.build_tokenizer` (pad 0, bos 2, eos 3); `build_lm(name,
tokenizer=...)` takes them and the vocabulary size from a tokenizer.

`load_pretrained_lm` loads a real checkpoint (a local directory, or a hub name already in the
local cache unless the caller allows the network) with its tokenizer, for TOFU / MUSE / WMDP /
RWKU runs on pretrained models.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["tiny_llama", "tiny_gpt2", "tiny_moe", "tiny_mixtral", "tiny_olmoe", "tiny_deepseek", "build_lm",
           "available_lms", "load_pretrained_lm", "PRETRAINED_DTYPES"]

_PAD, _BOS, _EOS = 0, 2, 3


def _check_positive(**kwargs) -> None:
    for name, value in kwargs.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: must be an int >= 1, got {value!r}")


def _check_heads(hidden: int, heads: int) -> None:
    if hidden % heads:
        raise ValueError(f"heads: hidden={hidden} must be divisible by heads={heads}")


def _check_moe(*, hidden: int, heads: int, experts: int, top_k: int, **sizes) -> None:
    _check_positive(hidden=hidden, heads=heads, experts=experts, top_k=top_k, **sizes)
    _check_heads(hidden, heads)
    if top_k > experts:
        raise ValueError(f"top_k: {top_k} exceeds experts={experts}")


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
    _check_moe(vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads, experts=experts, top_k=top_k,
               expert_intermediate=expert_intermediate, shared_intermediate=shared_intermediate,
               max_positions=max_positions)
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


def tiny_mixtral(vocab_size: int, *, hidden: int = 64, layers: int = 4, heads: int = 4, experts: int = 4,
                 top_k: int = 2, expert_intermediate: int | None = None, max_positions: int = 512, seed: int = 0,
                 pad_token_id: int = _PAD, bos_token_id: int = _BOS, eos_token_id: int = _EOS,
                 attn_implementation: str = "sdpa"):
    """A small `MixtralForCausalLM`: `experts` routed experts per layer, top `top_k`, gate weights
    renormalized over the top k; no shared expert. `expert_intermediate` defaults to 2 * hidden.
    """
    from transformers import MixtralConfig, MixtralForCausalLM

    expert_intermediate = 2 * hidden if expert_intermediate is None else expert_intermediate
    _check_moe(vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads, experts=experts, top_k=top_k,
               expert_intermediate=expert_intermediate, max_positions=max_positions)
    config = MixtralConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=expert_intermediate,
                           num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                           num_local_experts=experts, num_experts_per_tok=top_k, max_position_embeddings=max_positions,
                           tie_word_embeddings=False, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                           eos_token_id=eos_token_id, attn_implementation=attn_implementation)
    return _seeded(lambda: MixtralForCausalLM(config), seed)


def tiny_olmoe(vocab_size: int, *, hidden: int = 64, layers: int = 4, heads: int = 4, experts: int = 4,
               top_k: int = 2, expert_intermediate: int | None = None, norm_topk_prob: bool = False,
               max_positions: int = 512, seed: int = 0, pad_token_id: int = _PAD, bos_token_id: int = _BOS,
               eos_token_id: int = _EOS, attn_implementation: str = "sdpa"):
    """A small `OlmoeForCausalLM` (QK-norm attention; `norm_topk_prob=False` as in OLMoE: the gate
    weights are the raw top-k softmax probabilities). `expert_intermediate` defaults to 2 * hidden.
    """
    from transformers import OlmoeConfig, OlmoeForCausalLM

    expert_intermediate = 2 * hidden if expert_intermediate is None else expert_intermediate
    _check_moe(vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads, experts=experts, top_k=top_k,
               expert_intermediate=expert_intermediate, max_positions=max_positions)
    if not isinstance(norm_topk_prob, bool):
        raise ValueError(f"norm_topk_prob: must be a bool, got {norm_topk_prob!r}")
    config = OlmoeConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=expert_intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         num_experts=experts, num_experts_per_tok=top_k, norm_topk_prob=norm_topk_prob,
                         max_position_embeddings=max_positions, tie_word_embeddings=False,
                         pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         attn_implementation=attn_implementation)
    return _seeded(lambda: OlmoeForCausalLM(config), seed)


def tiny_deepseek(vocab_size: int, *, hidden: int = 64, layers: int = 4, heads: int = 4, experts: int = 4,
                  top_k: int = 2, dense_layers: int = 1, shared_experts: int = 1,
                  expert_intermediate: int | None = None, kv_rank: int | None = None,
                  routed_scaling_factor: float = 2.5, max_positions: int = 512, seed: int = 0,
                  pad_token_id: int = _PAD, bos_token_id: int = _BOS, eos_token_id: int = _EOS,
                  attn_implementation: str = "sdpa"):
    """A small `DeepseekV3ForCausalLM`: the first `dense_layers` decoder layers have a dense MLP
    (4 * hidden), the others `experts` routed experts (top `top_k` of sigmoid scores, gate weights
    renormalized over the top k and scaled by `routed_scaling_factor`) plus `shared_experts` shared
    experts fused into one MLP. One expert group (no group-limited routing), no q compression,
    latent KV rank `kv_rank` (hidden / 2), head dims hidden / heads split evenly between rotary and
    non-rotary parts. `expert_intermediate` defaults to hidden.
    """
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    expert_intermediate = hidden if expert_intermediate is None else expert_intermediate
    kv_rank = hidden // 2 if kv_rank is None else kv_rank
    _check_moe(vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads, experts=experts, top_k=top_k,
               shared_experts=shared_experts, expert_intermediate=expert_intermediate, kv_rank=kv_rank,
               max_positions=max_positions)
    head_dim = hidden // heads
    if head_dim % 4:
        raise ValueError(f"heads: hidden / heads = {head_dim} must be a multiple of 4 (rotary half of each head)")
    if not isinstance(dense_layers, int) or isinstance(dense_layers, bool) or not 0 <= dense_layers < layers:
        raise ValueError(f"dense_layers: must be an int in [0, layers={layers}), got {dense_layers!r}")
    if not isinstance(routed_scaling_factor, (int, float)) or routed_scaling_factor <= 0:
        raise ValueError(f"routed_scaling_factor: must be a number > 0, got {routed_scaling_factor!r}")
    config = DeepseekV3Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden,
                              moe_intermediate_size=expert_intermediate, num_hidden_layers=layers,
                              num_attention_heads=heads, num_key_value_heads=heads, n_shared_experts=shared_experts,
                              n_routed_experts=experts, num_experts_per_tok=top_k, n_group=1, topk_group=1,
                              first_k_dense_replace=dense_layers, norm_topk_prob=True,
                              routed_scaling_factor=float(routed_scaling_factor), kv_lora_rank=kv_rank,
                              q_lora_rank=None, qk_rope_head_dim=head_dim // 2, qk_nope_head_dim=head_dim // 2,
                              v_head_dim=head_dim, max_position_embeddings=max_positions, tie_word_embeddings=False,
                              pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                              attn_implementation=attn_implementation)
    return _seeded(lambda: DeepseekV3ForCausalLM(config), seed)


_BUILDERS: dict[str, Callable] = {"llama": tiny_llama, "gpt2": tiny_gpt2, "moe": tiny_moe, "mixtral": tiny_mixtral,
                                  "olmoe": tiny_olmoe, "deepseek": tiny_deepseek}


def available_lms() -> list[str]:
    """Names accepted by `build_lm`."""
    return sorted(_BUILDERS)


def build_lm(name: str, *, vocab_size: int | None = None, tokenizer=None, **kwargs):
    """Build a tiny LM by name ("llama", "gpt2", "moe", "mixtral", "olmoe", "deepseek").

    Give `vocab_size`, or a `tokenizer` from which the vocabulary size and the pad/bos/eos ids
    are taken. Other keyword arguments go to the builder (tiny_llama, tiny_gpt2, tiny_moe, ...).
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


PRETRAINED_DTYPES = ("auto", "float32", "float16", "bfloat16")


def _lora_config(lora):
    from peft import LoraConfig

    if isinstance(lora, LoraConfig):
        return lora
    if lora is True:
        from unlearnx.methods.llm.base import default_lora_config

        return default_lora_config()
    if not isinstance(lora, dict):
        raise TypeError(f"lora: expected None, True, a dict or a peft.LoraConfig, got {type(lora).__name__}")
    known = {"r", "alpha", "lora_alpha", "dropout", "lora_dropout", "target_modules"}
    unknown = sorted(set(lora) - known)
    if unknown:
        raise ValueError(f"lora: unknown keys {unknown}; expected some of {sorted(known)}")
    r = lora.get("r", 8)
    return LoraConfig(r=r, lora_alpha=lora.get("alpha", lora.get("lora_alpha", 2 * r)),
                      lora_dropout=lora.get("dropout", lora.get("lora_dropout", 0.0)),
                      target_modules=lora.get("target_modules", "all-linear"), task_type="CAUSAL_LM")


def load_pretrained_lm(path_or_name: str, *, dtype: str = "auto", lora=None, allow_network: bool = False,
                       device: str | None = None, trust_remote_code: bool = False):
    """A pretrained causal LM and its tokenizer: `AutoModelForCausalLM` + `AutoTokenizer`.

    Args:
        path_or_name: a local directory (save_pretrained layout) or a hub name. Without
            `allow_network`, files are read with `local_files_only=True`: a hub name works only
            when it is already in the local Hugging Face cache.
        dtype: "auto" (the checkpoint's dtype), "float32", "float16" or "bfloat16".
        lora: None; True (r 8, alpha 16 on every linear layer); a dict {r, alpha, dropout,
            target_modules}; or a peft.LoraConfig. The model is then wrapped by peft's
            `get_peft_model` (only the adapters train).
        device: where to put the model (default: where transformers loads it, the CPU).
    Returns:
        (model in eval mode, tokenizer). A tokenizer without a pad token gets pad = eos (batches are
        right-padded and padding is masked, so its id never matters); its chat template, when it
        has one, is kept (`tokenizer.chat_template`, used by RWKU's prompts).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(path_or_name, str) or not path_or_name:
        raise ValueError(f"path_or_name: expected a non-empty str, got {path_or_name!r}")
    if dtype not in PRETRAINED_DTYPES:
        raise ValueError(f"dtype: expected one of {PRETRAINED_DTYPES}, got {dtype!r}")
    local_only = not allow_network
    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_name, local_files_only=local_only,
                                                  trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path_or_name, local_files_only=local_only, trust_remote_code=trust_remote_code,
            dtype="auto" if dtype == "auto" else getattr(torch, dtype))
    except OSError as e:
        hint = "" if allow_network else " (network off: give a local directory or a name in the local cache)"
        raise FileNotFoundError(f"path_or_name: cannot load {path_or_name!r}{hint}: {e}") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"path_or_name: the tokenizer of {path_or_name!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model = model.to(device)
    if lora is not None and lora is not False:
        from peft import get_peft_model

        model = get_peft_model(model, _lora_config(lora))
    return model.eval(), tokenizer
