"""SSD dampening (`ssd_dampen_`): the fused multi-tensor op vs the eager per-tensor composition, the
same composition under torch.compile, and the SSD paper's per-tensor loop.

Minimum traffic per element: read theta, I_f, I_D (fp32) and write theta: 16 B for fp32 parameters,
12 B for bf16; the ceiling is the device copy bandwidth measured in the same run (read + write).
Shapes: CUDA 512M elements in 64 tensors (fp32 and bf16; 6 GiB of inputs for fp32) and 400 tensors
of 1M; CPU 64M in 64 tensors; --quick 1M in 16 tensors. alpha 10, lambda 1, ~5% selected.

    python -m unlearnx.bench.ssd [--device cpu|cuda] [--quick] [--no-compile] [--csv FILE]
"""
from __future__ import annotations

import argparse

import torch

import unlearnx as ux
from unlearnx.bench import harness
from unlearnx.ops.ssd import ssd_dampen_reference

ALPHA, LAM = 10.0, 1.0


def paper_loop(params, forget, full, alpha, lam):
    """The SSD reference code's per-tensor update: index with torch.where, gather, clamp, scatter."""
    for p, f, d in zip(params, forget, full):
        locations = torch.where(f > alpha * d)
        weight = (d * lam) / f
        update = weight[locations]
        update[update > 1] = 1
        p[locations] = p[locations].mul(update).to(p.dtype)


def make_inputs(total: int, ntensors: int, dtype: torch.dtype, device: torch.device):
    """ntensors equal tensors; I_f > alpha I_D on ~5% of the elements (a typical SSD selection)."""
    g = torch.Generator(device=device).manual_seed(0)
    n = total // ntensors
    params, forget, full = [], [], []
    for _ in range(ntensors):
        d = torch.rand(n, generator=g, device=device)
        sel = torch.rand(n, generator=g, device=device) < 0.05
        forget.append(torch.where(sel, d * 20, d * 0.5))
        full.append(d)
        params.append(torch.randn(n, generator=g, device=device).to(dtype))
        del sel
    return params, forget, full


def cases(device: torch.device, quick: bool):
    if quick:
        return [(1 << 20, 16, torch.float32), (1 << 20, 16, torch.bfloat16)]
    if device.type == "cuda":
        return [(512 << 20, 64, torch.float32), (512 << 20, 64, torch.bfloat16), (400 << 20, 400, torch.float32)]
    return [(64 << 20, 64, torch.float32), (64 << 20, 64, torch.bfloat16)]


def run(ctx: harness.Context, args) -> None:
    for total, ntensors, dtype in cases(ctx.device, ctx.quick):
        params, forget, full = make_inputs(total, ntensors, dtype, ctx.device)
        n = sum(p.numel() for p in params)
        bpe = 2 * params[0].element_size() + 8
        providers = harness.unlearnx_providers(
            ctx.device, lambda: ux.ops.ssd_dampen_(params, forget, full, alpha=ALPHA, lam=LAM))
        providers.append(harness.Provider("ssd_paper_loop", lambda: paper_loop(params, forget, full, ALPHA, LAM), reps=3))
        ctx.run_case("ssd_dampen_", f"{n / 2**20:.0f}M in {ntensors} tensors", str(dtype).removeprefix("torch."),
                     providers, eager=lambda: ssd_dampen_reference(params, forget, full, ALPHA, LAM),
                     compose=ssd_dampen_reference, compose_args=(params, forget, full, ALPHA, LAM),
                     bytes_moved=bpe * n, note=f"{bpe} B/element")
        del params, forget, full


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m unlearnx.bench.ssd", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(ap)
    return ap


def main(argv=None) -> int:
    return harness.entry("ssd", build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
