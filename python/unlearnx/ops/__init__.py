"""Typed wrappers of the `torch.ops.unlearnx.*` custom ops (one module per op family).

Each wrapper validates its arguments (errors name the argument), picks the backend
(`UNLEARNX_BACKEND=auto|native|triton|reference`, see unlearnx._native.select_backend) and calls
the native op, the Triton kernel or the pure-PyTorch reference.
"""
from unlearnx.ops.ssd import ssd_dampen_, ssd_dampen_reference
from unlearnx.ops.token_stats import token_stats, token_stats_reference

__all__ = ["ssd_dampen_", "ssd_dampen_reference"]
__all__ += ["token_stats", "token_stats_reference"]
