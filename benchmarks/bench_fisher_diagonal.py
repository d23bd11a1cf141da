"""Per-sample gradient statistics over a layer (ux.stats.fisher_diagonal): unlearnx vs the ways users
compute them today. (The ops alone, linear_sq_grad_accum_ / linear_grad_sq_norm_accum_, on CPU or
CUDA with eager and compiled baselines: `unlearnx bench --family grad_stats`.)

For one layer (a transformer MLP Linear on [B, T, d], a Linear on [B, d], a Conv2d), the diagonal
empirical Fisher sum_i g_i^2 of its weight over one batch, where g_i is sample i's loss gradient:

  unlearnx         ux.stats.fisher_diagonal(mode="per_sample"): forward + hooked backward (no
                   weight-gradient GEMM) + the fused per-sample tile op
  fused_op         the op alone on (X, G): its FLOP rate vs the weight-gradient GEMM on the same shape
  vmap_grad        torch.func vmap(grad) over functional_call + square-sum (B x P memory)
  backpack_einsum  BackPACK-style: every per-sample gradient by one einsum (B x P), square-sum
  bs1_loop         a forward + backward per sample (batch size 1)
  fwd_bwd          a plain forward + backward of the summed loss (the floor)
  wgrad_gemm       the weight-gradient GEMM G^T X alone (the physical limit: 2 B T d_in d_out FLOPs)

Times: median of --reps rounds, the providers called round-robin within each round (fair on a
shared machine). Peak memory: ru_maxrss growth over the inputs of one call, per provider in a
fresh child process.

    python benchmarks/bench_fisher_diagonal.py [--quick] [--no-save]   (rows: results/grad_stats.csv)
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import unlearnx as ux  # noqa: E402

PROVIDERS = ["unlearnx", "fused_op", "vmap_grad", "backpack_einsum", "bs1_loop", "fwd_bwd", "wgrad_gemm"]


def cases(quick: bool):
    if quick:
        return {
            "mlp_seq": dict(kind="linear", B=4, T=64, d_in=256, d_out=512),
            "mlp_flat": dict(kind="linear", B=64, T=1, d_in=256, d_out=256),
            "cnn": dict(kind="conv", B=8, C_in=16, C_out=32, H=16, k=3),
        }
    return {
        "mlp_seq": dict(kind="linear", B=16, T=256, d_in=1024, d_out=4096),
        "mlp_flat": dict(kind="linear", B=128, T=1, d_in=1024, d_out=1024),
        "cnn": dict(kind="conv", B=32, C_in=64, C_out=64, H=32, k=3),
    }


def build(case: dict):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if case["kind"] == "linear":
        model = nn.Linear(case["d_in"], case["d_out"], bias=False)
        shape = (case["B"], case["T"], case["d_in"]) if case["T"] > 1 else (case["B"], case["d_in"])
        x = torch.randn(*shape, generator=g)
    else:
        model = nn.Conv2d(case["C_in"], case["C_out"], case["k"], padding=1, bias=False)
        x = torch.randn(case["B"], case["C_in"], case["H"], case["H"], generator=g)
    with torch.no_grad():
        r = torch.randn(model(x).shape, generator=g)  # per-sample loss <y_i, r_i>: G = r exactly

    def loss_fn(m, batch):
        return (m(batch[0]) * batch[1]).flatten(1).sum(1)

    return model, (x, r), loss_fn


def flops(case: dict) -> float:
    if case["kind"] == "linear":
        return 2.0 * case["B"] * case["T"] * case["d_in"] * case["d_out"]
    L = case["H"] * case["H"]
    return 2.0 * case["B"] * L * case["C_in"] * case["k"] ** 2 * case["C_out"]


def provider_fn(name: str, model, batch, loss_fn):
    x, r = batch
    params = {"weight": model.weight}
    if name == "unlearnx":
        return lambda: ux.stats.fisher_diagonal(model, [batch], loss_fn, progress=False)
    if name in ("fused_op", "wgrad_gemm"):
        if isinstance(model, nn.Conv2d):
            X = torch.nn.functional.unfold(x, model.kernel_size, padding=model.padding).transpose(1, 2).contiguous()
            G = r.flatten(2).transpose(1, 2).contiguous()
        else:
            X, G = x, r
        F = torch.zeros(G.shape[-1], X.shape[-1])
        if name == "fused_op":
            return lambda: ux.ops.linear_sq_grad_accum_(F, X, G)
        X2, G2 = X.reshape(-1, X.shape[-1]), G.reshape(-1, G.shape[-1])
        return lambda: torch.mm(G2.t(), X2, out=F)
    if name == "vmap_grad":
        def one(p, xi, ri):
            y = torch.func.functional_call(model, p, (xi.unsqueeze(0),))
            return (y * ri.unsqueeze(0)).sum()

        def run():
            per = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))({k: v.detach() for k, v in params.items()}, x, r)
            return per["weight"].square().sum(0)
        return run
    if name == "backpack_einsum":
        def run():
            if isinstance(model, nn.Conv2d):
                X = torch.nn.functional.unfold(x, model.kernel_size, padding=model.padding)  # [B, K, L]
                P = torch.einsum("bol,bkl->bok", r.flatten(2), X)
            elif x.dim() == 3:
                P = torch.einsum("bto,bti->boi", r, x)
            else:
                P = torch.einsum("bo,bi->boi", r, x)
            return P.square().sum(0)
        return run
    if name == "bs1_loop":
        def run():
            F = torch.zeros_like(model.weight)
            for i in range(x.shape[0]):
                (g,) = torch.autograd.grad(loss_fn(model, (x[i:i + 1], r[i:i + 1])).sum(), [model.weight])
                F.addcmul_(g, g)
            return F
        return run
    if name == "fwd_bwd":
        def run():
            model.weight.grad = None
            loss_fn(model, batch).sum().backward()
        return run
    raise ValueError(name)


def child(case_name: str, provider: str, quick: bool) -> None:
    """Peak memory of one provider call, in a fresh process (ru_maxrss never goes down)."""
    case = cases(quick)[case_name]
    model, batch, loss_fn = build(case)
    fn = provider_fn(provider, model, batch, loss_fn)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    print(json.dumps(dict(peak_mib=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)))


def interleaved_times(fns: dict, reps: int) -> dict:
    """p50/p20/p80 ms per provider, the providers timed round-robin (one call each per round) so a
    shared machine's changing load hits them alike."""
    for fn in fns.values():
        fn()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for k, ts in times.items():
        q = statistics.quantiles(ts, n=10)
        out[k] = dict(p50=statistics.median(ts), p20=q[1], p80=q[7])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes (not for reported numbers)")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--cases", default=None, help="comma-separated subset of the cases")
    ap.add_argument("--reps", type=int, default=5, help="timed rounds (each provider once per round)")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "PROVIDER"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(*args.child, args.quick)
    dev = harness.device_name("cpu")
    print(f"device: {dev}")
    rows, table = [], []
    selected = cases(args.quick)
    if args.cases:
        selected = {k: v for k, v in selected.items() if k in args.cases.split(",")}
    # Peak memory first, while this process is small: Linux children start with the parent's
    # ru_maxrss, so a child spawned after the timings would see no growth.
    peaks = {}
    for case_name in selected:
        peaks[case_name] = {}
        for prov in PROVIDERS:
            cmd = [sys.executable, __file__, "--child", case_name, prov] + (["--quick"] if args.quick else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"{case_name}/{prov} failed:\n{out.stderr[-2000:]}")
            peaks[case_name][prov] = json.loads(out.stdout.strip().splitlines()[-1])
    for case_name, case in selected.items():
        P = (case["d_in"] * case["d_out"]) if case["kind"] == "linear" else case["C_in"] * case["C_out"] * case["k"] ** 2
        model, batch, loss_fn = build(case)
        res = interleaved_times({p: provider_fn(p, model, batch, loss_fn) for p in PROVIDERS}, args.reps)
        for prov in PROVIDERS:
            res[prov].update(peaks[case_name][prov])
        fused = res["unlearnx"]["p50"]
        gemm_rate = flops(case) / (res["wgrad_gemm"]["p50"] * 1e-3) / 1e9
        for prov, r in res.items():
            extra = ""
            if prov in ("fused_op", "wgrad_gemm"):
                extra = f"{flops(case) / (r['p50'] * 1e-3) / 1e9:.0f} GFLOP/s"
                if prov == "fused_op":
                    extra += f" ({100 * flops(case) / (r['p50'] * 1e-3) / 1e9 / gemm_rate:.0f}% of GEMM)"
            table.append([case_name, prov, f"{r['p50']:.1f}", f"{r['p50'] / fused:.2f}x", f"{r['peak_mib']:.0f}",
                          f"{r['peak_mib'] * 2**20 / (4 * P):.2f}", extra])
            x = json.dumps({k: v for k, v in case.items()})
            for metric, unit, val in (("time", "ms", r["p50"]), ("peak_rss_growth", "MiB", r["peak_mib"])):
                rows.append(dict(kernel="fisher_diagonal", provider=prov, mode=case_name, metric=metric, unit=unit, x=x,
                                 p50=f"{val:.3f}", p20=f"{r['p20']:.3f}" if metric == "time" else "",
                                 p80=f"{r['p80']:.3f}" if metric == "time" else "", device=dev))
        print(f"{case_name}: {case}; parameters {4 * P / 2**20:.1f} MiB; weight-gradient GEMM {gemm_rate:.0f} GFLOP/s")
    harness.print_table(["case", "provider", "ms (p50)", "time vs unlearnx", "peak growth MiB", "peak / param bytes", "rate"], table)
    if not args.no_save and not args.quick:
        path = harness.append_results("grad_stats", rows)
        print(f"appended {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
