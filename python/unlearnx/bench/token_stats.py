"""token_stats: one-pass per-token log p(label), mu, var vs log_softmax + gather + moment passes.

  forward       unlearnx token_stats; eager/compile: lp = log_softmax(z.float()); lp.gather(label);
                p = exp(lp); mu = (p lp).sum; var = (p lp^2).sum - mu^2 (Min-K%++ code style);
                extra baseline: -cross_entropy(z, label) (the NLL alone, no moments)
  forward_bwd   d(sum log p(label))/dz through unlearnx token_stats vs through log_softmax + gather
                (eager, and the same loss under torch.compile, backward included)

Minimum traffic: forward one read of the logits; forward + backward one read in the forward, a read
and a write of the gradient in the backward (3 x N V elem bytes); the ceiling is the device copy
bandwidth measured in the same run. Shapes: CUDA bf16 [8192, 128256] (2 GiB); CPU bf16
[2048, 128256]; --quick bf16 and fp32 [64, 8000].

    python -m unlearnx.bench.token_stats [--device cpu|cuda] [--quick] [--no-compile] [--csv FILE]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import unlearnx as ux
from unlearnx.bench import harness


def torch_moments(z, y):
    lp = z.float().log_softmax(-1)
    logp = lp.gather(-1, y[:, None])[:, 0]
    p = lp.exp()
    mu = (p * lp).sum(-1)
    var = (p * lp * lp).sum(-1) - mu * mu
    return logp, mu, var


def torch_nll(z, y):
    return -F.cross_entropy(z.float(), y, reduction="none")


def plain_logp_sum(z, y):
    return z.float().log_softmax(-1).gather(-1, y[:, None]).sum()


def unlearnx_logp_sum(z, y):
    return ux.ops.token_stats(z, y)[0].sum()


def cases(device: torch.device, quick: bool):
    if quick:
        return [(64, 8000, torch.bfloat16), (64, 8000, torch.float32)]
    if device.type == "cuda":
        return [(8192, 128256, torch.bfloat16)]
    return [(2048, 128256, torch.bfloat16)]


def run(ctx: harness.Context, args) -> None:
    for n, vocab, dtype in cases(ctx.device, ctx.quick):
        g = torch.Generator(device=ctx.device).manual_seed(0)
        z = (torch.randn(n, vocab, generator=g, device=ctx.device) * 3).to(dtype)
        y = torch.randint(0, vocab, (n,), generator=g, device=ctx.device)
        got, want = ux.ops.token_stats(z, y)[0], torch_moments(z, y)[0]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)  # same outputs before timing
        nbytes = z.numel() * z.element_size()
        shape, dname = f"[{n}, {vocab}]", str(dtype).removeprefix("torch.")
        with torch.no_grad():
            ctx.run_case("token_stats", shape, dname,
                         harness.unlearnx_providers(ctx.device, lambda: ux.ops.token_stats(z, y))
                         + [harness.Provider("cross_entropy_nll_only", lambda: torch_nll(z, y))],
                         eager=lambda: torch_moments(z, y), compose=torch_moments, compose_args=(z, y),
                         bytes_moved=nbytes, note="limit: one read of the logits")
        zg = z.detach().requires_grad_(True)

        def grad_of(loss_fn):
            return lambda: torch.autograd.grad(loss_fn(zg, y), zg)[0]

        ctx.run_case("token_stats_fwd_bwd", shape, dname,
                     harness.unlearnx_providers(ctx.device, grad_of(unlearnx_logp_sum), triton=False),
                     eager=grad_of(plain_logp_sum), compose=plain_logp_sum, compose_args=(zg, y),
                     compile_call=grad_of, bytes_moved=3 * nbytes,
                     note="grad of sum log p(label); limit: read, read + write the gradient")
        del z, zg


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m unlearnx.bench.token_stats", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(ap)
    return ap


def main(argv=None) -> int:
    return harness.entry("token_stats", build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
