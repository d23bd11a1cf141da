"""LLM unlearning methods on a small Llama: step time and peak memory; full vs LoRA; cached vs live reference.

Per method and configuration, each in a fresh process (so the allocator's peak is its own):
`prepare` seconds (datasets, LoRA, reference cache), median step time (forward + backward + AdamW
step over a {"forget", "retain"} batch) and the growth of the process's peak RSS (VmHWM) over the
RSS with the model built, which counts the optimizer state, activations, caches and any
reference-model copy. One thread (a tiny model on a shared 2-core host runs far slower on two).

    python benchmarks/bench_llm_methods.py [--quick] [--hidden 512] [--layers 4] [--steps 6]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import unlearnx as ux  # noqa: E402
from unlearnx.data.authors import make_authors  # noqa: E402
from unlearnx.data.lm_batches import QATemplate  # noqa: E402
from unlearnx.data.text import build_tokenizer  # noqa: E402
from unlearnx.methods.llm.base import _to_device, prepare_lm  # noqa: E402
from unlearnx.models.lm import build_lm  # noqa: E402

CONFIGS = [
    ("ga", {}), ("graddiff", {}), ("graddiff", {"retain_loss": "kl"}),
    ("npo", {"reference": "cached"}), ("npo", {"reference": "live"}), ("npo", {"lora": True}),
    ("simnpo", {}), ("idknll", {}), ("idkdpo", {"reference": "cached"}), ("idkdpo", {"reference": "live"}),
    ("undial", {"reference": "cached"}), ("undial", {"reference": "live"}), ("wga", {}), ("flat", {}),
    ("rmu", {}), ("rmu", {"lora": True}), ("whp", {"reinforce_epochs": 1}),
    ("ga", {"lora": True}), ("ga", {"gradient_checkpointing": True}), ("wagle", {"base": "npo"}),
]


def measure(model_fn, qa, tok, method, hp, steps):
    model = model_fn()
    algo = ux.methods.get(method, "causal_lm")(batch_size=8, lr=1e-4, **hp)
    algo.seed = 0
    base = harness.rss_kib("VmRSS:")
    t0 = time.perf_counter()
    model, loader = prepare_lm(algo, model, qa["forget10"], qa["retain90"], tokenizer=tok, progress=False)
    prepare = time.perf_counter() - t0
    params = algo.trainable_parameters(model)
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    times, it = [], iter(loader)
    for _ in range(steps):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        batch = _to_device(batch, "cpu")
        t = time.perf_counter()
        loss, _ = algo.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append((time.perf_counter() - t) * 1e3)
    peak = (harness.rss_kib("VmHWM:") - base) / 1024
    trainable = sum(p.numel() for p in params)
    return prepare, statistics.median(times[1:] or times), peak, trainable


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "HP_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.hidden, args.steps = 128, 3
    torch.set_num_threads(args.threads)
    qa = make_authors(40, n_real_authors=0, n_world_facts=0)
    t = QATemplate()
    tok = build_tokenizer(qa.texts() + [t.render(i.question, i.answer) for i in qa["full"]], vocab_size=4000)

    def build():
        return build_lm("llama", tokenizer=tok, layers=args.layers, hidden=args.hidden, heads=8)

    if args.one:
        print("RESULT", json.dumps(measure(build, qa, tok, args.one[0], json.loads(args.one[1]), args.steps)))
        return
    nparams = sum(p.numel() for p in build().parameters())
    machine = harness.device_name("cpu")
    print(f"{machine}; tiny Llama {args.layers} layers, hidden {args.hidden}, vocab {len(tok)}: "
          f"{nparams / 1e6:.1f}M params ({nparams * 4 / 2**20:.0f} MiB fp32); forget10 = {len(qa['forget10'])} QAs, batch 8")
    rows, table = [], []
    for method, hp in CONFIGS:
        cmd = [sys.executable, __file__, "--one", method, json.dumps(hp), "--hidden", str(args.hidden),
               "--layers", str(args.layers), "--steps", str(args.steps), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        prepare, step, peak, trainable = json.loads(out.split("RESULT", 1)[1])
        cfg = ",".join(f"{k}={v}" for k, v in hp.items()) or "default"
        x = f"{method}[{cfg}],h={args.hidden},L={args.layers}"
        table.append([method, cfg, f"{prepare:.2f}", f"{step:.0f}", f"{peak:.0f}", f"{trainable / 1e6:.2f}M"])
        for metric, unit, val in (("prepare", "s", prepare), ("step", "ms", step), ("peak_extra_rss", "MiB", peak)):
            rows.append({"kernel": "llm_method", "provider": method, "mode": cfg, "metric": metric, "unit": unit,
                         "x": x, "p50": f"{val:.3f}", "p20": "", "p80": "", "device": machine})
    harness.print_table(["method", "config", "prepare s", "step ms (p50)", "peak extra MiB", "trainable"], table)
    if not args.no_save:
        print("appended to", harness.append_results("llm_methods", rows))


if __name__ == "__main__":
    main()
