"""Per-sample gradient statistics of a Linear layer without per-sample gradients in memory.

  linear_sq_grad_accum_       F += sum_b (G_b^T X_b)^2 (the diagonal empirical Fisher of the weight)
  linear_grad_sq_norm_accum_  n_b += ||G_b^T X_b||_F^2 (per-sample gradient norms)

Eager baseline (and the same function under torch.compile): the per-sample weight gradients by one
bmm, then square and sum (B x d_out x d_in in memory). Extra provider "wgrad_gemm": the plain
weight-gradient GEMM G^T X over all B T rows (what a backward pass does anyway). FLOPs: 2 B T d_in
d_out (the norms: the fewer of that and 2 B T^2 (d_in + d_out), the Gram form); the ceiling is
the matmul rate in the input dtype measured in the same run.
Shapes: CUDA B 32, T 512, 4096 x 4096 bf16; CPU B 16, T 256, 1024 -> 4096 fp32 and B 128, T 1,
1024 -> 1024; --quick B 4, T 64, 256 -> 512 fp32.

    python -m unlearnx.bench.grad_stats [--device cpu|cuda] [--quick] [--no-compile] [--csv FILE]
"""
from __future__ import annotations

import argparse

import torch

import unlearnx as ux
from unlearnx.bench import harness


def per_sample_sq(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """sum_b (G_b^T X_b)^2 in fp32 through the per-sample gradients (bmm)."""
    return torch.bmm(g.transpose(1, 2), x).float().square().sum(0)


def per_sample_sq_norm(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.bmm(g.transpose(1, 2), x).float().square().sum((1, 2))


def cases(device: torch.device, quick: bool):
    if quick:
        return [(4, 64, 256, 512, torch.float32)]
    if device.type == "cuda":
        return [(32, 512, 4096, 4096, torch.bfloat16)]
    return [(16, 256, 1024, 4096, torch.float32), (128, 1, 1024, 1024, torch.float32)]


def run(ctx: harness.Context, args) -> None:
    for B, T, d_in, d_out, dtype in cases(ctx.device, ctx.quick):
        g = torch.Generator(device=ctx.device).manual_seed(0)
        x = torch.randn(B, T, d_in, generator=g, device=ctx.device).to(dtype)
        go = torch.randn(B, T, d_out, generator=g, device=ctx.device).to(dtype)
        fisher = torch.zeros(d_out, d_in, device=ctx.device)
        norms = torch.zeros(B, device=ctx.device)
        check = torch.zeros_like(fisher)
        ux.ops.linear_sq_grad_accum_(check, x, go)
        torch.testing.assert_close(check, per_sample_sq(x, go), rtol=2e-2 if dtype == torch.bfloat16 else 1e-4,
                                   atol=1e-2)
        flops = 2.0 * B * T * d_in * d_out
        shape, dname = f"B={B},T={T},{d_in}->{d_out}", str(dtype).removeprefix("torch.")
        x2, g2 = x.reshape(-1, d_in), go.reshape(-1, d_out)
        gemm = harness.Provider("wgrad_gemm", lambda: torch.mm(g2.t(), x2))
        ctx.run_case("linear_sq_grad_accum_", shape, dname,
                     harness.unlearnx_providers(ctx.device, lambda: ux.ops.linear_sq_grad_accum_(fisher, x, go)) + [gemm],
                     eager=lambda: per_sample_sq(x, go), compose=per_sample_sq, compose_args=(x, go),
                     flops=flops, flops_dtype=dtype, note="FLOPs 2 B T d_in d_out")
        # ||G_b^T X_b||^2 = sum_{t,s} (G_t . G_s)(X_t . X_s): the Gram form needs 2 B T^2 (d_in + d_out)
        # FLOPs, fewer than the explicit tiles when 2 T^2 < d_in d_out; the minimum of the two counts.
        norm_flops = min(flops, 2.0 * B * T * T * (d_in + d_out))
        ctx.run_case("linear_grad_sq_norm_accum_", shape, dname,
                     harness.unlearnx_providers(ctx.device, lambda: ux.ops.linear_grad_sq_norm_accum_(norms, x, go)),
                     eager=lambda: per_sample_sq_norm(x, go), compose=per_sample_sq_norm, compose_args=(x, go),
                     flops=norm_flops, flops_dtype=dtype,
                     note="FLOPs min(2 B T d_in d_out, 2 B T^2 (d_in + d_out)) (explicit tiles or the Gram form)")
        del x, go, fisher


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m unlearnx.bench.grad_stats", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(ap)
    return ap


def main(argv=None) -> int:
    return harness.entry("grad_stats", build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
