"""logit_diff: one fused ULD decoding step vs what ULD's code and transformers' samplers do.

Per decode step on [B, V] target and assistant logit rows (ULD, w = 1, r = 0.1):
  greedy     unlearnx  ux.ops.logit_diff_sample(..., greedy=True)
             uld_ref   ULD's step: log_softmax(z_t), a full descending sort for the ⌊rV⌋-th log-prob,
                       the relative-top mask, z_t − w·z_a where it holds, log_softmax, argmax
  sampling   unlearnx  ux.ops.logit_diff_sample(..., temperature=0.7, top_k=50, top_p=0.9, seed=s)
             hf_chain  the materialized difference z_t − w·z_a (no filter: cheaper than ULD's, a
                       generous baseline), TemperatureLogitsWarper + TopKLogitsWarper +
                       TopPLogitsWarper (its sort), softmax, torch.multinomial
The limit is one read of both rows (2·B·V·elem bytes) at the read bandwidth measured in the same run
(harness.read_bandwidth_gbs); "% of limit" = that time / the measured time.
Rows go to benchmarks/results/logit_diff.csv (harness schema) and logit_diff.json (this run).

    python benchmarks/bench_logit_diff.py [--quick] [--vocab 32000 128000] [--batch 1 64] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import unlearnx as ux  # noqa: E402

WEIGHT, RELATIVE_TOP = 1.0, 0.1
TEMPERATURE, TOP_K, TOP_P = 0.7, 50, 0.9


def uld_reference_step(zt, za):
    """ULD's decoding step: relative-top filter on log-probs through a full sort, then argmax."""
    zt, za = zt.float(), za.float()
    lp = zt.log_softmax(-1)
    ordered = lp.sort(-1, descending=True).values
    k = max(1, math.floor(RELATIVE_TOP * zt.shape[-1]))
    thr = torch.minimum(lp.amax(-1, keepdim=True) + math.log(RELATIVE_TOP), ordered[:, k - 1:k])
    c = torch.where(lp >= thr, zt - WEIGHT * za, zt)
    logp = c.log_softmax(-1)
    tok = logp.argmax(-1)
    return tok, logp.gather(-1, tok[:, None])[:, 0]


def make_hf_chain():
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    chain = LogitsProcessorList([TemperatureLogitsWarper(TEMPERATURE), TopKLogitsWarper(TOP_K),
                                 TopPLogitsWarper(TOP_P)])

    def step(zt, za):
        c = zt.float() - WEIGHT * za.float()
        scores = chain(None, c)
        return torch.multinomial(scores.softmax(-1), 1)[:, 0]

    return step


def atomic_write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--vocab", type=int, nargs="+", default=[32000, 128000])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.vocab, args.batch, args.reps = [32000], [1, 8], 5
    device = torch.device("cpu")
    dtype = getattr(torch, args.dtype)
    bw = harness.read_bandwidth_gbs(1 << 28)
    machine = harness.device_name(device)
    print(f"{machine}; read bandwidth {bw:.1f} GB/s; {args.dtype} rows, ULD w={WEIGHT} r={RELATIVE_TOP}")
    hf_step = make_hf_chain()
    rows, table, records = [], [], []
    for vocab in args.vocab:
        for batch in args.batch:
            g = torch.Generator().manual_seed(0)
            zt = (torch.randn(batch, vocab, generator=g) * 3).to(dtype)
            za = (torch.randn(batch, vocab, generator=g) * 2).to(dtype)
            nbytes = 2 * zt.numel() * zt.element_size()
            limit_us = nbytes / (bw * 1e9) * 1e6
            # Big baselines take seconds per step on 2 cores: fewer repetitions where a step is slow.
            reps = max(3, args.reps // max(1, batch * vocab // 1_000_000))
            groups = {
                "greedy": {
                    "unlearnx": lambda: ux.ops.logit_diff_sample(zt, za, weight=WEIGHT, relative_top=RELATIVE_TOP,
                                                                 greedy=True),
                    "uld_ref": lambda: uld_reference_step(zt, za),
                },
                "sampling": {
                    "unlearnx": lambda: ux.ops.logit_diff_sample(zt, za, weight=WEIGHT, relative_top=RELATIVE_TOP,
                                                                 temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P,
                                                                 seed=1),
                    "hf_chain": lambda: hf_step(zt, za),
                },
            }
            x = f"B={batch},V={vocab},{args.dtype}"
            for mode, providers in groups.items():
                times = {}
                for name, fn in providers.items():
                    p50, p20, p80 = harness.time_fn(fn, warmup=1, reps=reps)
                    times[name] = p50 * 1e3  # µs
                    rows.append({"kernel": "logit_diff", "provider": name, "mode": mode, "metric": "time",
                                 "unit": "us", "x": x, "p50": f"{p50 * 1e3:.1f}", "p20": f"{p20 * 1e3:.1f}",
                                 "p80": f"{p80 * 1e3:.1f}", "device": machine})
                base = [n for n in providers if n != "unlearnx"][0]
                speedup = times[base] / times["unlearnx"]
                for name in providers:
                    pct = 100 * limit_us / times[name]
                    table.append([x, mode, name, f"{times[name]:.0f}", f"{pct:.1f}%",
                                  f"{speedup:.1f}x" if name == "unlearnx" else ""])
                records.append({"batch": batch, "vocab": vocab, "dtype": args.dtype, "mode": mode,
                                "us_per_step": times, "baseline": base, "speedup_vs_baseline": speedup,
                                "limit_us": limit_us, "pct_of_limit": 100 * limit_us / times["unlearnx"]})
    harness.print_table(["shape", "step", "provider", "µs / step", "% of 2-row read limit", "speed-up"], table)
    if not args.no_save:
        print("appended to", harness.append_results("logit_diff", rows))
        out = harness.RESULTS_DIR / "logit_diff.json"
        atomic_write_json(out, {"machine": machine, "read_bandwidth_gbs": bw, "threads": torch.get_num_threads(),
                                "torch": torch.__version__, "results": records})
        print("wrote", out)


if __name__ == "__main__":
    main()
