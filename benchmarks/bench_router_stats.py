"""moe_router_stats_: fused softmax + top-k + per-expert accumulation vs the one_hot path.

Synthetic router logits (default 1e6 tokens x 64 experts x 4 layers, top-2, fp32; flags 1/2 at
random, 5% padding). Baselines in the same run:
  "one_hot"   the Hugging Face-style path: softmax, topk, renormalize, one_hot [T, k, E], masked
              sums per group (unlearnx.ops.moe_router_stats_reference with torch.topk order)
The limit is one read of the logits + flags at the read bandwidth measured in the same run.
Attribution overhead: unlearnx.stats.expert_attribution over a tiny Qwen2-MoE forward vs the same
forwards without hooks (% added to the forward pass).

    python benchmarks/bench_router_stats.py [--quick] [--tokens 1000000] [--experts 64] [--layers 4]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import unlearnx as ux  # noqa: E402
from unlearnx.models.lm import tiny_moe  # noqa: E402
from unlearnx.stats import expert_attribution  # noqa: E402


def one_hot_path(logits, flags, k):
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


def attribution_overhead(reps: int, batch: int, seq: int):
    model = tiny_moe(1000, hidden=64, layers=4, heads=4, experts=8, top_k=2, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(3, 1000, (batch, seq), generator=g),
                "attention_mask": torch.ones(batch, seq, dtype=torch.long)} for _ in range(4)]

    def plain():
        with torch.no_grad():
            for b in batches:
                model(**b)

    def attributed():
        expert_attribution(model, batches, progress=False)

    # The op alone on logits of the same shapes (16 router calls of [8*128, 8]): its share of the forward,
    # below the noise of the end-to-end difference on a shared machine.
    g2 = torch.Generator().manual_seed(1)
    z = [torch.randn(batch * seq, 8, generator=g2) for _ in range(16)]
    fl = torch.ones(batch * seq, dtype=torch.long)
    buf = ux.ops.router_stats_buffer(8)
    t_op = harness.time_fn(lambda: [ux.ops.moe_router_stats_(buf, x, fl, top_k=2) for x in z], warmup=1, reps=reps)[0]
    # Interleaved so that load from other processes on a shared machine hits both alike; medians.
    plain(), attributed()
    tp, ta = [], []
    for _ in range(reps):
        for fn, acc in ((plain, tp), (attributed, ta)):
            t0 = time.perf_counter()
            fn()
            acc.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(tp), statistics.median(ta), t_op


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens, args.reps = 50_000, 2
    device = torch.device("cpu")
    bw = harness.read_bandwidth_gbs()
    machine = harness.device_name(device)
    print(f"{machine}; read bandwidth {bw:.1f} GB/s; threads {torch.get_num_threads()}")
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(args.tokens, args.experts, generator=g) * 2 for _ in range(args.layers)]
    flags = torch.randint(1, 3, (args.tokens,), generator=g)
    flags[torch.rand(args.tokens, generator=g) < 0.05] = 0
    nbytes = sum(z.numel() * z.element_size() for z in layers) + flags.numel() * 8 * args.layers
    stats = [ux.ops.router_stats_buffer(args.experts) for _ in layers]
    providers = {
        "unlearnx": lambda: [ux.ops.moe_router_stats_(s, z, flags, top_k=args.top_k) for s, z in zip(stats, layers)],
        "one_hot": lambda: [one_hot_path(z, flags, args.top_k) for z in layers],
    }
    x = f"T={args.tokens},E={args.experts},L={args.layers},k={args.top_k},float32"
    rows, table, times = [], [], {}
    for name, fn in providers.items():
        p50, p20, p80 = harness.time_fn(fn, warmup=1, reps=args.reps)
        times[name] = p50
        limit = 100 * (nbytes / (p50 * 1e-3) / 1e9) / bw
        rows.append({"kernel": "moe_router_stats", "provider": name, "mode": "forward", "metric": "time", "unit": "ms",
                     "x": x, "p50": f"{p50:.3f}", "p20": f"{p20:.3f}", "p80": f"{p80:.3f}", "device": machine})
        table.append([x, name, f"{p50:.1f}", f"{limit:.1f}%", ""])
    for r in table:
        r[4] = f"{times['one_hot'] / times[r[1]]:.2f}x"
    harness.print_table(["shape", "provider", "p50 ms", "% of 1 read", "one_hot / this"], table)

    t_plain, t_attr, t_op = attribution_overhead(max(args.reps, 7), batch=8, seq=128)
    pct = 100 * (t_attr - t_plain) / t_plain
    print(f"tiny Qwen2-MoE (4 layers, 8 experts, top-2, hidden 64), 4 batches of 8x128 tokens: forward "
          f"{t_plain:.1f} ms, with expert_attribution {t_attr:.1f} ms ({pct:+.1f}%, median of interleaved runs); "
          f"the op alone on the same router logits {t_op:.2f} ms ({100 * t_op / t_plain:.2f}% of the forward)")
    rows.append({"kernel": "moe_router_stats", "provider": "expert_attribution", "mode": "forward",
                 "metric": "overhead", "unit": "%", "x": "tiny_moe,4x8x128", "p50": f"{pct:.2f}", "p20": "",
                 "p80": "", "device": machine})
    rows.append({"kernel": "moe_router_stats", "provider": "op_in_forward", "mode": "forward", "metric": "share",
                 "unit": "%", "x": "tiny_moe,4x8x128", "p50": f"{100 * t_op / t_plain:.3f}", "p20": "", "p80": "",
                 "device": machine})
    if not args.no_save:
        print("appended to", harness.append_results("router_stats", rows))


if __name__ == "__main__":
    main()
