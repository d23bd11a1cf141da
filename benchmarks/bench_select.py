"""Global selection: unlearnx radix select (+ masks) vs what users otherwise run.

Workload: fp32 tensors of LLM-like shapes (per layer q/k/v/o, gate/up/down, two norms; ~200
tensors), ranked by |x| (magnitude pruning, saliency), threshold keeping the top 50% (SalUn's
global median) and the top 5% (prune-first at 95% sparsity).

Providers:
  unlearnx_select       ux.ops.global_select (value + exact tie limits)
  unlearnx_select_mask  ux.ops.topk_masks (select + one mask pass, bool masks)
  kthvalue_cat          torch.kthvalue(torch.cat([|x|...]))
  topk_cat              torch.topk(torch.cat([|x|...]), k)
  prune_global          torch.nn.utils.prune.global_unstructured(L1Unstructured) (+ prune.remove)
  salun_argsort         SalUn's generate_mask: two full argsorts of the concatenation, masks by rank

Physical limit: one read of the input (4 B/element) at the read bandwidth measured in the same run;
"% of one read" = one-read time / measured time. Extra memory: peak RSS growth during the call
(Linux clear_refs), as % of the input bytes.

    python benchmarks/bench_select.py [--quick] [--sizes 1e8 2.7e8] [--skip-slow]
"""
from __future__ import annotations

import argparse
import gc
import math
import sys
from pathlib import Path

import torch
import torch.nn.utils.prune as prune
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import unlearnx as ux  # noqa: E402


def llm_like(total: float, layers: int = 22, seed: int = 0) -> list[torch.Tensor]:
    """~9 tensors per layer (4 h x h, 3 h x 2.75h, 2 norms of h), h chosen to reach `total`."""
    h = int(math.sqrt(total / (layers * 12.25)))
    g = torch.Generator().manual_seed(seed)
    shapes = []
    for _ in range(layers):
        shapes += [(h, h)] * 4 + [(int(2.75 * h), h)] * 3 + [(h,), (h,)]
    xs = []
    for i, s in enumerate(shapes):
        x = torch.empty(s)
        if len(s) == 1:
            x.normal_(1.0, 0.05, generator=g)  # norm weights
        else:
            x.normal_(0.0, 0.02 * (1 + (i % 7) / 7), generator=g)
        xs.append(x)
    return xs


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def peak_extra_bytes(fn) -> int:
    """Peak RSS growth while fn() runs (resets the high-water mark through /proc/self/clear_refs)."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return -1
    before = _rss_kib("VmRSS")
    out = fn()
    peak = _rss_kib("VmHWM")
    del out
    gc.collect()
    return max(0, peak - before) * 1024


def salun_argsort(xs, r):
    all_elements = -torch.cat([x.abs().flatten() for x in xs])
    threshold_index = int(len(all_elements) * r)
    positions = torch.argsort(all_elements)
    ranks = torch.argsort(positions)
    out, start = [], 0
    for x in xs:
        out.append((ranks[start:start + x.numel()] < threshold_index).reshape(x.shape))
        start += x.numel()
    return out


def prune_global(xs, amount):
    modules = []
    for x in xs:
        m = nn.Module()
        m.weight = nn.Parameter(x, requires_grad=False)
        modules.append(m)
    prune.global_unstructured([(m, "weight") for m in modules], pruning_method=prune.L1Unstructured, amount=amount)
    masks = [m.weight_mask for m in modules]
    for m in modules:
        prune.remove(m, "weight")  # writes weight_orig * mask back; undo it for the next repetition
    return masks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small working set (not for reported numbers)")
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e8, 2.7e8])
    ap.add_argument("--skip-slow", action="store_true", help="skip the sort-based baselines (topk, prune, SalUn)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    sizes = [2e6] if args.quick else args.sizes
    read_bw = harness.read_bandwidth_gbs(1 << (26 if args.quick else 30))
    dev = harness.device_name("cpu")
    print(f"device: {dev}; measured read bandwidth {read_bw:.1f} GB/s")
    rows, table = [], []
    for target in sizes:
        xs = llm_like(target)
        n = sum(x.numel() for x in xs)
        in_bytes = 4 * n
        one_read_ms = in_bytes / read_bw / 1e6
        for keep in (0.5, 0.05):
            k = int(keep * n)
            mode = f"N={n / 1e6:.0f}M,L={len(xs)},keep={keep:g}"
            # the originals are not modified by any provider (prune_global writes the same values back)
            providers = {
                "unlearnx_select": lambda: ux.ops.global_select(xs, k, absolute=True, largest=True),
                "unlearnx_select_mask": lambda: ux.ops.topk_masks(xs, k, absolute=True, largest=True),
                "kthvalue_cat": lambda: torch.kthvalue(torch.cat([x.abs().flatten() for x in xs]), n - k + 1),
            }
            if not args.skip_slow:
                providers["topk_cat"] = lambda: torch.topk(torch.cat([x.abs().flatten() for x in xs]), k)
                providers["prune_global"] = lambda: prune_global(xs, 1.0 - keep)
                providers["salun_argsort"] = lambda: salun_argsort(xs, keep)
            # correctness of the compared threshold before timing
            v = ux.ops.global_select(xs, k, absolute=True, largest=True)[0]
            assert v == torch.kthvalue(torch.cat([x.abs().flatten() for x in xs]), n - k + 1).values
            results = {}
            for name, fn in providers.items():
                reps = 5 if name.startswith("unlearnx") else (3 if name == "kthvalue_cat" else 1)
                results[name] = harness.time_fn(fn, warmup=1 if reps > 1 else 0, reps=reps)
                extra = peak_extra_bytes(fn)
                results[name] = (*results[name], extra)
                gc.collect()
            base = results["unlearnx_select"][0]
            for name, (p50, p20, p80, extra) in results.items():
                pct_read = 100 * one_read_ms / p50
                table.append([mode, name, f"{p50:.0f}", f"{pct_read:.0f}%", f"{p50 / base:.1f}x",
                              f"{100 * extra / in_bytes:.1f}%" if extra >= 0 else "n/a"])
                common = dict(kernel="global_select", provider=name, mode=mode, x=n, device=dev)
                rows.append(dict(common, metric="time", unit="ms", p50=f"{p50:.3f}", p20=f"{p20:.3f}", p80=f"{p80:.3f}"))
                rows.append(dict(common, metric="pct_of_one_read", unit="%", p50=f"{pct_read:.1f}"))
                rows.append(dict(common, metric="extra_memory_pct_of_input", unit="%", p50=f"{100 * extra / in_bytes:.2f}"))
        del xs
        gc.collect()
    harness.print_table(["workload", "provider", "ms (p50)", "% of one read", "time vs unlearnx select",
                         "extra memory / input"], table)
    if not args.no_save and not args.quick:
        path = harness.append_results("select", rows)
        print(f"appended {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
