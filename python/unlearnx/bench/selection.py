"""Global selection (`global_select`, `topk_masks`, `threshold_masks`) vs the compositions users write.

Workload: fp32 tensors of LLM-like shapes (per layer q/k/v/o, gate/up/down and two norms: 198
tensors over 22 layers), ranked by |x| (magnitude pruning, saliency maps), keeping the top half
(SalUn's global median; k = N/2).

  global_select    unlearnx radix select (value + exact tie limits); eager/compile: the k-th
                   largest of topk(cat(|x|), k); extra baseline kthvalue(cat(|x|))
  topk_masks       select + one mask pass (bool masks); eager/compile: topk(cat) threshold, then
                   |x| >= t per tensor
  threshold_masks  the mask pass alone at a given threshold; eager/compile: |x| >= t per tensor

Minimum traffic: one read of the input (4 B/element) for global_select, plus one bool write
(5 B/element) for the masks; the ceiling is the device copy bandwidth measured in the same run.
Shapes: CUDA 4e8 elements, CPU 2.7e8 (1.08 GB), --quick 2e6.

    python -m unlearnx.bench.selection [--device cpu|cuda] [--quick] [--no-compile] [--csv FILE]
"""
from __future__ import annotations

import argparse
import math

import torch

import unlearnx as ux
from unlearnx.bench import harness


def llm_like(total: float, device: torch.device, layers: int = 22, seed: int = 0) -> list[torch.Tensor]:
    """~9 tensors per layer (4 h x h, 3 2.75h x h, 2 norms of h), h chosen to reach `total` elements."""
    h = int(math.sqrt(total / (layers * 12.25)))
    g = torch.Generator(device=device).manual_seed(seed)
    shapes = []
    for _ in range(layers):
        shapes += [(h, h)] * 4 + [(int(2.75 * h), h)] * 3 + [(h,), (h,)]
    xs = []
    for i, s in enumerate(shapes):
        x = torch.empty(s, device=device)
        if len(s) == 1:
            x.normal_(1.0, 0.05, generator=g)  # norm weights
        else:
            x.normal_(0.0, 0.02 * (1 + (i % 7) / 7), generator=g)
        xs.append(x)
    return xs


def kth_largest_abs(xs: list[torch.Tensor], k: int) -> torch.Tensor:
    """The plain composition: the k-th largest |x| over the list through one concatenation."""
    return torch.topk(torch.cat([x.abs().flatten() for x in xs]), k, sorted=False).values.min()


def masks_at(xs: list[torch.Tensor], t: torch.Tensor) -> list[torch.Tensor]:
    return [x.abs() >= t for x in xs]


def topk_masks_plain(xs: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    return masks_at(xs, kth_largest_abs(xs, k))


def run(ctx: harness.Context, args) -> None:
    total = 2e6 if ctx.quick else (4e8 if ctx.device.type == "cuda" else 2.7e8)
    xs = llm_like(total, ctx.device)
    n = sum(x.numel() for x in xs)
    k = n // 2
    shape = f"N={n / 1e6:.0f}M in {len(xs)} tensors, k=N/2"
    value = ux.ops.global_select(xs, k, absolute=True, largest=True)[0]
    expected = kth_largest_abs(xs, k)
    if value.item() != expected.item():  # the compared outputs agree before anything is timed
        raise RuntimeError(f"global_select gave {value.item()} but topk(cat) {expected.item()}")

    ctx.run_case("global_select", shape, "float32",
                 harness.unlearnx_providers(ctx.device, lambda: ux.ops.global_select(xs, k, absolute=True, largest=True))
                 + [harness.Provider("kthvalue_cat", lambda: torch.kthvalue(
                     torch.cat([x.abs().flatten() for x in xs]), n - k + 1).values, reps=3)],
                 eager=lambda: kth_largest_abs(xs, k), compose=kth_largest_abs, compose_args=(xs, k),
                 bytes_moved=4 * n, note="limit: one read")
    ctx.run_case("topk_masks", shape, "float32",
                 harness.unlearnx_providers(ctx.device, lambda: ux.ops.topk_masks(xs, k, absolute=True, largest=True)),
                 eager=lambda: topk_masks_plain(xs, k), compose=topk_masks_plain, compose_args=(xs, k),
                 bytes_moved=5 * n, note="limit: one read + bool write")
    t = value
    ctx.run_case("threshold_masks", shape, "float32",
                 harness.unlearnx_providers(ctx.device, lambda: ux.ops.threshold_masks(xs, t, absolute=True, largest=True)),
                 eager=lambda: masks_at(xs, t), compose=masks_at, compose_args=(xs, t),
                 bytes_moved=5 * n, note="limit: one read + bool write")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m unlearnx.bench.selection", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(ap)
    return ap


def main(argv=None) -> int:
    return harness.entry("select", build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
