"""Typed wrappers of the `torch.ops.unlearnx.*` custom ops (one module per op family)."""
