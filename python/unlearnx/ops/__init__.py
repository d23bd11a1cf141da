"""Typed wrappers of the `torch.ops.unlearnx.*` custom ops (one module per op family).

Each wrapper validates its arguments (errors name the argument), picks the backend
(`UNLEARNX_BACKEND=auto|native|triton|reference`, see unlearnx._native.select_backend) and calls
the native op, the Triton kernel or the pure-PyTorch reference.
"""
from unlearnx.ops.ssd import ssd_dampen_, ssd_dampen_reference
from unlearnx.ops.select import (
    MaskStats,
    global_kth_value,
    global_quantile,
    global_select,
    mask_stats,
    masked_restore_,
    pack_mask,
    project_capped_simplex,
    threshold_masks,
    topk_masks,
    unpack_mask,
)
from unlearnx.ops.grad_stats import (
    linear_grad_sq_norm_accum_,
    linear_grad_sq_norm_accum_reference,
    linear_sq_grad_accum_,
    linear_sq_grad_accum_reference,
)

__all__ = ["ssd_dampen_", "ssd_dampen_reference"]
__all__ += [
    "MaskStats",
    "global_kth_value",
    "global_quantile",
    "global_select",
    "mask_stats",
    "masked_restore_",
    "pack_mask",
    "project_capped_simplex",
    "threshold_masks",
    "topk_masks",
    "unpack_mask",
    "linear_sq_grad_accum_",
    "linear_sq_grad_accum_reference",
    "linear_grad_sq_norm_accum_",
    "linear_grad_sq_norm_accum_reference",
]

from unlearnx.ops.token_stats import token_stats, token_stats_reference  # noqa: E402

__all__ += ["token_stats", "token_stats_reference"]

from unlearnx.ops.router_stats import (  # noqa: E402
    moe_router_stats_,
    moe_router_stats_reference,
    router_stats_buffer,
)

__all__ += ["moe_router_stats_", "moe_router_stats_reference", "router_stats_buffer"]

from unlearnx.ops.logit_diff import logit_diff_logprobs, logit_diff_sample  # noqa: E402

__all__ += ["logit_diff_logprobs", "logit_diff_sample"]

# The one list of ops drives registration: fake kernels, autograd, and a CPU and a CUDA kernel for
# every op (Triton or reference wherever the native library has none for that device).
from unlearnx.ops import registry  # noqa: E402

registry.register_all()
