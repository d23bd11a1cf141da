"""SSD dampening: fused unlearnx op vs the eager composition vs the SSD paper's per-tensor loop.

Minimum traffic is 16 bytes per element for fp32 parameters (read theta, I_f, I_D; write theta)
and 14 for bf16; "% of limit" compares that traffic's rate with the read bandwidth measured in
the same run (the issue's target: >= 70% of it, and >= 5x the eager composition).

    python benchmarks/bench_ssd.py [--quick] [--device cpu|cuda] [--no-compile]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import unlearnx as ux  # noqa: E402
from unlearnx.ops.ssd import ssd_dampen_reference  # noqa: E402


def paper_loop(params, forget, full, alpha, lam):
    """The SSD reference code's per-tensor update: index with torch.where, gather, clamp, scatter."""
    for p, f, d in zip(params, forget, full):
        locations = torch.where(f > alpha * d)
        weight = (d * lam) / f
        update = weight[locations]
        update[update > 1] = 1
        p[locations] = p[locations].mul(update).to(p.dtype)


def make_inputs(total: int, ntensors: int, dtype, device):
    g = torch.Generator().manual_seed(0)
    # LLM-like mix of sizes: a few large matrices and many small vectors
    weights = torch.rand(ntensors, generator=g) ** 3 + 1e-3
    sizes = (weights / weights.sum() * total).long().clamp(min=1)
    sizes[0] += total - int(sizes.sum())
    params, forget, full = [], [], []
    for n in sizes.tolist():
        full_i = torch.rand(n, generator=g, device="cpu")
        params.append(torch.randn(n, generator=g).to(dtype).to(device))
        # ~5% of elements selected at alpha = 10 (a typical SSD selection)
        sel = torch.rand(n, generator=g) < 0.05
        forget.append(torch.where(sel, full_i * 20, full_i * 0.5).to(device))
        full.append(full_i.to(device))
    return params, forget, full


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small working set (not for reported numbers)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    total = 2_000_000 if args.quick else 80_000_000  # 80M elements x 12 B = 0.96 GB of inputs + theta writes
    ntensors = 200
    alpha, lam = 10.0, 1.0
    read_bw = harness.read_bandwidth_gbs(1 << (26 if args.quick else 30), device)
    copy_bw = harness.copy_bandwidth_gbs(1 << (26 if args.quick else 30), device)
    dev = harness.device_name(device)
    print(f"device: {dev}; measured read bandwidth {read_bw:.1f} GB/s, copy (R+W) {copy_bw:.1f} GB/s")
    rows, table = [], []
    for dtype, bpe in ((torch.float32, 16), (torch.bfloat16, 14)):
        params, forget, full = make_inputs(total, ntensors, dtype, device)
        n = sum(p.numel() for p in params)
        providers = {
            "unlearnx": lambda: ux.ops.ssd_dampen_(params, forget, full, alpha=alpha, lam=lam),
            "eager_torch": lambda: ssd_dampen_reference(params, forget, full, alpha, lam),
            "ssd_paper_loop": lambda: paper_loop(params, forget, full, alpha, lam),
        }
        if not args.no_compile:
            compiled = torch.compile(ssd_dampen_reference, dynamic=False)
            providers["torch_compile"] = lambda: compiled(params, forget, full, alpha, lam)
        results = {}
        for name, fn in providers.items():
            reps = 5 if name != "unlearnx" else 10
            p50, p20, p80 = harness.time_fn(fn, device=device, warmup=1, reps=reps)
            results[name] = (p50, p20, p80)
        fused = results["unlearnx"][0]
        for name, (p50, p20, p80) in results.items():
            gbs = bpe * n / (p50 * 1e-3) / 1e9
            table.append([str(dtype).removeprefix("torch."), name, f"{p50:.1f}", f"{gbs:.1f}",
                          f"{100 * gbs / read_bw:.0f}%", f"{p50 / fused:.1f}x"])
            rows.append(dict(kernel="ssd_dampen_", provider=name, mode=str(dtype).removeprefix("torch."),
                             metric="time", unit="ms", x=n, p50=f"{p50:.3f}", p20=f"{p20:.3f}", p80=f"{p80:.3f}",
                             device=dev))
            rows.append(dict(kernel="ssd_dampen_", provider=name, mode=str(dtype).removeprefix("torch."),
                             metric="pct_of_read_bw", unit="%", x=n, p50=f"{100 * gbs / read_bw:.1f}", device=dev))
        del params, forget, full
    print(f"{total / 1e6:.0f}M elements over {ntensors} tensors, alpha={alpha}, lambda={lam}")
    harness.print_table(["dtype", "provider", "ms (p50)", "GB/s at min traffic", "% of read BW", "time vs unlearnx"], table)
    if not args.no_save and not args.quick:
        path = harness.append_results("ssd", rows)
        print(f"appended {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
