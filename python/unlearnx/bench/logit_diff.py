"""logit_diff: one fused ULD decoding step (and the evaluation log-probs) vs the plain composition.

ULD (w = 1, r = 0.1) on [B, V] target and assistant logit rows:
  logit_diff_sample    greedy step: unlearnx logit_diff_sample(..., greedy=True); eager/compile:
                       the relative-top filter through topk (its k-th largest target logit and
                       max + log r), where(filter, z_t - w z_a, z_t), log_softmax, argmax, gather
  logit_diff_logprobs  log_softmax of the combined logits over the vocabulary (evaluation);
                       eager/compile: the same filter + where + log_softmax
Minimum traffic: one read of both rows (2 B V elem) for the step, plus the fp32 write of the
log-probs (2 B V elem + 4 B V); the ceiling is the device copy bandwidth measured in the same run.
Shapes: B 1, 8, 64 x V 128256 fp32 (CPU and CUDA; decoding batch sizes); --quick B 1, 8 x V 8000.

    python -m unlearnx.bench.logit_diff [--device cpu|cuda] [--quick] [--no-compile] [--csv FILE]
"""
from __future__ import annotations

import argparse
import math

import torch

import unlearnx as ux
from unlearnx.bench import harness

WEIGHT, RELATIVE_TOP = 1.0, 0.1


def uld_combine(zt: torch.Tensor, za: torch.Tensor) -> torch.Tensor:
    zt, za = zt.float(), za.float()
    k = max(1, math.floor(RELATIVE_TOP * zt.shape[-1]))
    kth = torch.topk(zt, k, dim=-1).values[:, -1:]
    thr = torch.minimum(zt.amax(-1, keepdim=True) + math.log(RELATIVE_TOP), kth)
    return torch.where(zt >= thr, zt - WEIGHT * za, zt)


def uld_greedy_step(zt: torch.Tensor, za: torch.Tensor):
    c = uld_combine(zt, za)
    logp = c.log_softmax(-1)
    tok = c.argmax(-1)
    return tok, logp.gather(-1, tok[:, None])[:, 0]


def uld_logprobs(zt: torch.Tensor, za: torch.Tensor) -> torch.Tensor:
    return uld_combine(zt, za).log_softmax(-1)


def run(ctx: harness.Context, args) -> None:
    vocab, batches = (8000, (1, 8)) if ctx.quick else (128256, (1, 8, 64))
    for batch in batches:
        g = torch.Generator(device=ctx.device).manual_seed(0)
        zt = torch.randn(batch, vocab, generator=g, device=ctx.device) * 3
        za = torch.randn(batch, vocab, generator=g, device=ctx.device) * 2
        tok, _ = ux.ops.logit_diff_sample(zt, za, weight=WEIGHT, relative_top=RELATIVE_TOP, greedy=True)
        c = uld_combine(zt, za)  # before timing: the op picks a maximal combined logit in every row
        best = c.amax(-1)
        if not bool((c.gather(-1, tok[:, None])[:, 0] >= best - 1e-5 * best.abs().clamp(min=1)).all()):
            raise RuntimeError("logit_diff_sample chose a token that is not the argmax of the ULD combination")
        row_bytes = 2 * zt.numel() * zt.element_size()
        shape = f"B={batch},V={vocab}"
        ctx.run_case("logit_diff_sample", shape, "float32",
                     harness.unlearnx_providers(ctx.device, lambda: ux.ops.logit_diff_sample(
                         zt, za, weight=WEIGHT, relative_top=RELATIVE_TOP, greedy=True)),
                     eager=lambda: uld_greedy_step(zt, za), compose=uld_greedy_step, compose_args=(zt, za),
                     bytes_moved=row_bytes, note="ULD greedy step; limit: one read of both rows")
        ctx.run_case("logit_diff_logprobs", shape, "float32",
                     harness.unlearnx_providers(ctx.device, lambda: ux.ops.logit_diff_logprobs(
                         zt, za, weight=WEIGHT, relative_top=RELATIVE_TOP)),
                     eager=lambda: uld_logprobs(zt, za), compose=uld_logprobs, compose_args=(zt, za),
                     bytes_moved=row_bytes + 4 * zt.numel(), note="limit: one read of both rows + fp32 write")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m unlearnx.bench.logit_diff", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(ap)
    return ap


def main(argv=None) -> int:
    return harness.entry("logit_diff", build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
