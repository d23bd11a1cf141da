"""Step time of LLM unlearning (GA) on a tiny Llama: 1 process vs 2 processes under torchrun (CPU, gloo).

    python benchmarks/bench_distributed.py [--steps 6] [--batch 16] [--hidden 128] [--layers 4] [--no-save]

The same global batch in every configuration: 1 process x 1 thread, 1 process x 2 threads (the
fair baseline: it uses both cores too) and 2 processes x 1 thread (each rank runs half the batch;
gradients all-reduced over gloo). Per-step time = (time of `warmup + steps` steps - time of `warmup`
steps) / steps, so the setup (reference caches, optimizer creation) is excluded; median of 3 such
measurements (the CSV's p20/p80 columns hold the min/max of the 3). The physical limit here is
the core count: 2 processes can at best halve the 1-thread step (ratio 2.0); the printed
efficiency is ratio / 2.

This measures CPU/gloo scaling only: NCCL, FSDP2 sharding and per-GPU memory need GPUs and are
not measured by this script. The development machine has 2 cores shared with other jobs: treat
the numbers as indicative (min..max of the 3 measurements is reported).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "python"))


def worker(args) -> None:
    import torch

    import unlearnx as ux
    from unlearnx import distributed as D
    from unlearnx.data.authors import make_authors
    from unlearnx.data.lm_batches import QATemplate
    from unlearnx.data.text import build_tokenizer
    from unlearnx.models.lm import build_lm

    torch.set_num_threads(args.threads)
    ctx = D.init_distributed("cpu")
    qa = make_authors(4, n_real_authors=0, n_world_facts=0)
    t = QATemplate()
    tok = build_tokenizer(qa.texts() + [t.render(i.question, i.answer) for i in qa["full"]], vocab_size=500)
    torch.manual_seed(0)
    model = build_lm("llama", tokenizer=tok, layers=args.layers, hidden=args.hidden)
    forget = list(qa["full"])[: args.batch * (args.steps + 2)]
    kw = dict(forget=forget, tokenizer=tok, lr=1e-4, batch_size=args.batch, epochs=1, warmup_epochs=0, progress=False)

    def run(steps: int) -> float:
        ctx.barrier()
        start = time.perf_counter()
        ux.unlearn(model, "ga", max_steps=steps, **kw)
        ctx.barrier()
        return time.perf_counter() - start

    run(1)  # first-call costs (allocator, lazy imports)
    per_step = [(run(2 + args.steps) - run(2)) / args.steps for _ in range(3)]
    if ctx.is_main:
        Path(args.out).write_text(json.dumps({"per_step_s": per_step, "world": ctx.world_size}))
    D.shutdown(ctx)


def launch(args, nproc: int, threads: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        script = [str(Path(__file__).resolve()), "--worker", "--out", str(out), "--threads", str(threads),
                  "--steps", str(args.steps), "--batch", str(args.batch), "--hidden", str(args.hidden),
                  "--layers", str(args.layers)]
        cmd = [sys.executable, *script] if nproc == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *script]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return json.loads(out.read_text())["per_step_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    from harness import append_results, device_name, print_table

    configs = (("1 process x 1 thread", 1, 1), ("1 process x 2 threads", 1, 2), ("2 processes x 1 thread", 2, 1))
    times = {name: launch(args, nproc, threads) for name, nproc, threads in configs}
    base = statistics.median(times["1 process x 1 thread"])
    rows, table = [], []
    x = json.dumps({"model": f"llama L{args.layers} H{args.hidden}", "global_batch": args.batch, "method": "ga"})
    for name, nproc, threads in configs:
        t = sorted(times[name])
        med = statistics.median(t)
        table.append([name, f"{med * 1e3:.1f}", f"{t[0] * 1e3:.1f}..{t[-1] * 1e3:.1f}", f"{base / med:.2f}",
                      f"{base / med / 2:.0%}" if nproc * threads == 2 else ""])
        rows.append({"kernel": "lm_step_ga", "provider": name, "mode": "train", "metric": "step_time", "unit": "ms",
                     "x": x, "p50": med * 1e3, "p20": t[0] * 1e3, "p80": t[-1] * 1e3,
                     "device": device_name("cpu").rsplit(" x", 1)[0] + f" ({nproc} proc x {threads} thr)"})
    print_table(["configuration", "step ms (median)", "min..max", "speed-up vs 1x1", "of 2x limit"], table)
    print("machine: 2 shared cores; indicative only (other jobs run on the same cores)")
    if not args.no_save:
        print("appended to", append_results("distributed", rows))


if __name__ == "__main__":
    main()
