"""moe_router_stats_: fused softmax + top-k + per-expert accumulation vs the one_hot path.

Synthetic router logits [T, E] fp32 with per-token group flags (1 forget, 2 retain; 5% padding,
flag 0). The eager composition (and the same function under torch.compile) is the Hugging
Face-style path: softmax, topk, renormalize, one_hot [T, k, E], masked sums per group, stacked
into the op's [2, E, 4] layout. Minimum traffic: one read of the logits and the flags; the ceiling
is the device copy bandwidth measured in the same run. Shapes: T 1M, E 64, k 8 (CPU and CUDA);
--quick T 20000, E 16, k 2.

    python -m unlearnx.bench.router_stats [--device cpu|cuda] [--quick] [--no-compile] [--csv FILE]
"""
from __future__ import annotations

import argparse

import torch

import unlearnx as ux
from unlearnx.bench import harness


def one_hot_path(logits: torch.Tensor, flags: torch.Tensor, k: int) -> torch.Tensor:
    probs = logits.float().softmax(-1)
    top_v, top_i = torch.topk(probs, k, dim=-1)
    top_v = top_v / top_v.sum(-1, keepdim=True)
    hot = torch.nn.functional.one_hot(top_i, logits.shape[-1]).float()
    count, gate = hot.sum(1), (hot * top_v.unsqueeze(-1)).sum(1)
    out = []
    for g in (1, 2):
        m = (flags == g).float()[:, None]
        out.append(torch.stack([(count * m).sum(0), (gate * m).sum(0), (probs * m).sum(0),
                                (probs * probs * m).sum(0)], -1))
    return torch.stack(out)


def run(ctx: harness.Context, args) -> None:
    tokens, experts, k = (20_000, 16, 2) if ctx.quick else (1 << 20, 64, 8)
    g = torch.Generator(device=ctx.device).manual_seed(0)
    logits = torch.randn(tokens, experts, generator=g, device=ctx.device) * 2
    flags = torch.randint(1, 3, (tokens,), generator=g, device=ctx.device)
    flags[torch.rand(tokens, generator=g, device=ctx.device) < 0.05] = 0
    stats = ux.ops.router_stats_buffer(experts, device=ctx.device)
    ux.ops.moe_router_stats_(stats, logits, flags, top_k=k)
    # same numbers as the composition before timing (up to top-k ties, absent from random logits)
    torch.testing.assert_close(stats, one_hot_path(logits, flags, k), rtol=1e-4, atol=1e-2)
    nbytes = logits.numel() * logits.element_size() + flags.numel() * flags.element_size()
    ctx.run_case("moe_router_stats_", f"T={tokens},E={experts},k={k}", "float32",
                 harness.unlearnx_providers(ctx.device, lambda: ux.ops.moe_router_stats_(stats, logits, flags, top_k=k)),
                 eager=lambda: one_hot_path(logits, flags, k), compose=one_hot_path, compose_args=(logits, flags, k),
                 bytes_moved=nbytes, note="limit: one read of logits + flags")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m unlearnx.bench.router_stats", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(ap)
    return ap


def main(argv=None) -> int:
    return harness.entry("router_stats", build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
