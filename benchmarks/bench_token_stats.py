"""token_stats: one-pass per-token log p(label), mu, var vs log_softmax + gather + moment passes.

Baselines a user would otherwise write (Min-K%++ reference code style):
  "torch"      lp = log_softmax(z); lp.gather(label); p = exp(lp); mu = (p*lp).sum; var = (p*lp^2).sum - mu^2
  "torch_nll"  only -cross_entropy(z, label, reduction="none") (the NLL alone, no moments)
The limit is one read of the logits (N*V*elem bytes) at the read bandwidth measured in the same run
(harness.read_bandwidth_gbs). Peak memory: growth of the process's peak RSS during one call
(VmHWM, reset through /proc/self/clear_refs), i.e. the temporaries each path allocates.

    python benchmarks/bench_token_stats.py [--quick] [--tokens 2048] [--vocab 32000 128000]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import unlearnx as ux  # noqa: E402


def torch_moments(z, y):
    lp = z.float().log_softmax(-1)
    logp = lp.gather(-1, y[:, None])[:, 0]
    p = lp.exp()
    mu = (p * lp).sum(-1)
    var = (p * lp * lp).sum(-1) - mu * mu
    return logp, mu, var


def torch_nll(z, y):
    return -F.cross_entropy(z.float(), y, reduction="none")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return -1


def peak_extra_mib(fn) -> float:
    """Growth of peak RSS over current RSS while fn() runs (MiB); -1 where Linux peak reset is unavailable."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return -1.0
    base = _rss_kib("VmRSS:")
    out = fn()
    del out
    return (_rss_kib("VmHWM:") - base) / 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--vocab", type=int, nargs="+", default=[32000, 128000])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens, args.vocab, args.reps = 256, [32000], 3
    device = torch.device("cpu")
    bw = harness.read_bandwidth_gbs()
    machine = harness.device_name(device)
    print(f"{machine}; read bandwidth {bw:.1f} GB/s")
    rows, table = [], []
    for vocab in args.vocab:
        for dname in args.dtypes:
            dtype = getattr(torch, dname)
            g = torch.Generator().manual_seed(0)
            z = (torch.randn(args.tokens, vocab, generator=g) * 3).to(dtype)
            y = torch.randint(0, vocab, (args.tokens,), generator=g)
            nbytes = z.numel() * z.element_size()
            providers = {
                "unlearnx": lambda: ux.ops.token_stats(z, y),
                "torch": lambda: torch_moments(z, y),
                "torch_nll": lambda: torch_nll(z, y),
            }
            times = {}
            for name, fn in providers.items():
                p50, p20, p80 = harness.time_fn(fn, warmup=1, reps=args.reps)
                mem = peak_extra_mib(fn)
                times[name] = p50
                limit = 100 * (nbytes / (p50 * 1e-3) / 1e9) / bw
                x = f"N={args.tokens},V={vocab},{dname}"
                rows.append({"kernel": "token_stats", "provider": name, "mode": "forward", "metric": "time",
                             "unit": "ms", "x": x, "p50": f"{p50:.3f}", "p20": f"{p20:.3f}", "p80": f"{p80:.3f}",
                             "device": machine})
                rows.append({"kernel": "token_stats", "provider": name, "mode": "forward", "metric": "peak_extra_rss",
                             "unit": "MiB", "x": x, "p50": f"{mem:.1f}", "p20": "", "p80": "", "device": machine})
                table.append([x, name, f"{p50:.1f}", f"{limit:.0f}%", f"{mem:.0f}", ""])
            for r in table[-3:]:
                r[5] = f"{times['torch'] / times[r[1]]:.2f}x"
    harness.print_table(["shape", "provider", "p50 ms", "% of 1 read", "peak extra MiB", "torch / this"], table)
    if not args.no_save:
        print("appended to", harness.append_results("token_stats", rows))


if __name__ == "__main__":
    main()
