"""One NPO step (forget + retain batch) with unlearnx's cached reference log-probs vs a live reference.

NPO + retain NLL (beta 0.1, gamma 1, alpha 1; Zhang et al. 2024, docs/llm-methods.md) on a
Llama-shaped model with random weights. One step = forget forward + retain forward + backward +
AdamW step. Variants, each in a fresh process (so its peak memory is its own):

  unlearnx_cached   unlearnx's NPO (reference="cached"): log pi_ref(y|x) of the forget batch is
                    computed once before training (as prepare_lm's cache does) and looked up by
                    example index; no reference model in memory; log-probs through token_stats
  unlearnx_live     unlearnx's NPO with reference="live": a frozen deep copy runs every step
  live_reference    the step as open-unlearning runs NPO: a frozen reference copy of the model,
                    the per-sequence NLL of model and reference through logits + cross_entropy
                    (reduction none, summed over the answer), the retain NLL as the Hugging Face
                    model's own loss (labels passed to the model)

Reported per variant: median step ms, tokens/s (forget + retain tokens per step / step time),
and peak memory: on CUDA torch.cuda.max_memory_allocated over the whole process (model, reference,
optimizer state, activations); on CPU the growth of the peak RSS (VmHWM) over the RSS before the
model is built (a coarser measure: allocator caching and the Python heap count too).

Shapes: CUDA default a 1.2B Llama-3.2-1B-shaped model (vocab 128256, hidden 2048, 16 layers,
32 heads, 8 KV heads, MLP 8192, tied embeddings), bf16, batch 8 + 8, sequence 512 (the answer is
the second half). CPU default: hidden 512, 4 layers, vocab 32000, batch 4 + 4, sequence 256, fp32.
--quick: hidden 64, 2 layers, vocab 512, batch 2 + 2, sequence 32.

    python benchmarks/bench_npo_memory.py [--device cpu|cuda] [--quick] [--steps 4] [--no-save]
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import unlearnx as ux  # noqa: E402
from unlearnx.bench.harness import BenchError, resolve_device  # noqa: E402
from unlearnx.methods.llm.losses import forward_logits, sequence_logprob  # noqa: E402
from unlearnx.models.lm import tiny_llama  # noqa: E402

VARIANTS = ("unlearnx_cached", "unlearnx_live", "live_reference")
BETA, ALPHA, GAMMA = 0.1, 1.0, 1.0


def shapes(device: torch.device, quick: bool) -> dict:
    if quick:
        return dict(vocab=512, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, batch=2, seq=32,
                    dtype="float32")
    if device.type == "cuda":
        return dict(vocab=128256, hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, batch=8,
                    seq=512, dtype="bfloat16")
    return dict(vocab=32000, hidden=512, layers=4, heads=8, kv_heads=8, intermediate=2048, batch=4, seq=256,
                dtype="float32")


def build_model(s: dict, device: torch.device):
    dtype = getattr(torch, s["dtype"])
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # initialise on the device, in the dtype: no fp32 CPU copy of 1B params
            model = tiny_llama(s["vocab"], hidden=s["hidden"], layers=s["layers"], heads=s["heads"],
                               kv_heads=s["kv_heads"], intermediate=s["intermediate"], max_positions=2 * s["seq"],
                               tie_embeddings=True)
    finally:
        torch.set_default_dtype(old)
    return model.to(device=device, dtype=dtype)


def make_batch(s: dict, device: torch.device, seed: int, index_base: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, s["vocab"], (s["batch"], s["seq"]), generator=g)
    labels = ids.clone()
    labels[:, : s["seq"] // 2] = -100  # the question half is not scored
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": labels.to(device), "index": torch.arange(index_base, index_base + s["batch"]).to(device)}


def open_unlearning_nll(model, batch) -> torch.Tensor:
    """Per-sequence NLL [B] as open-unlearning computes it: logits, shift, cross_entropy (none), sum."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = batch["labels"][:, 1:]
    return F.cross_entropy(logits[:, :-1].transpose(-1, -2), shifted, ignore_index=-100, reduction="none").sum(-1)


def run_variant(variant: str, device: torch.device, s: dict, steps: int) -> dict:
    from transformers import LlamaForCausalLM  # noqa: F401  (imported before the RSS baseline)

    torch.manual_seed(0)
    base_rss = harness.rss_kib("VmRSS:")
    model = build_model(s, device)
    forget = make_batch(s, device, 1, 0)
    retain = make_batch(s, device, 2, 0)
    batch = {"forget": forget, "retain": retain}
    t_setup = time.perf_counter()
    if variant.startswith("unlearnx"):
        algo = ux.methods.get("npo", "causal_lm")(beta=BETA, gamma=GAMMA, alpha=ALPHA, retain_loss="nll",
                                                  reference=variant.removeprefix("unlearnx_"))
        algo._has_retain, algo._peft, algo._ref_model, algo.ref_cache = True, None, None, {}
        if variant == "unlearnx_cached":
            with torch.no_grad():  # what prepare_lm's cache_reference computes, before the first step
                algo.ref_cache["forget"] = sequence_logprob(forward_logits(model.eval(), forget), forget["labels"]).cpu()
        else:
            import copy

            algo._ref_model = copy.deepcopy(model).eval().requires_grad_(False)

        def loss_fn():
            return algo.loss(model, batch)[0]
    else:
        import copy

        ref = copy.deepcopy(model).eval().requires_grad_(False)

        def loss_fn():
            nll = open_unlearning_nll(model, forget)
            with torch.no_grad():
                ref_nll = open_unlearning_nll(ref, forget)
            forget_loss = -(2.0 / BETA) * F.logsigmoid(BETA * (nll - ref_nll)).mean()
            retain_loss = model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"],
                                labels=retain["labels"]).loss
            return GAMMA * forget_loss + ALPHA * retain_loss
    setup_s = time.perf_counter() - t_setup
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for _ in range(steps + 1):  # the first step allocates the optimizer state: not timed
        harness.sync(device)
        t0 = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        harness.sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    if not torch.isfinite(loss.detach()).item():
        raise RuntimeError(f"{variant}: non-finite loss {loss.item()}")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = (harness.rss_kib("VmHWM:") - base_rss) / 1024
    step_ms = statistics.median(times[1:])
    tokens = 2 * s["batch"] * s["seq"]
    return dict(variant=variant, step_ms=step_ms, tokens_per_s=tokens / (step_ms * 1e-3), peak_mib=peak,
                setup_s=setup_s, params=sum(p.numel() for p in model.parameters()), loss=float(loss.item()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant (after one untimed)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads on CPU (0: default)")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.steps < 1:
        print(f"error: --steps must be >= 1, got {args.steps}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    s = shapes(device, args.quick)
    if args.one:
        print("RESULT", json.dumps(run_variant(args.one, device, s, args.steps)))
        return 0
    machine = harness.device_name(device)
    print(f"{machine}; torch {torch.__version__}; NPO + retain NLL step; model {json.dumps(s)}", flush=True)
    results, failed = {}, []
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--one", variant, "--device", args.device, "--steps", str(args.steps),
               "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:  # reported; the other variants still run (GPU time is scarce)
            print(proc.stderr[-3000:], file=sys.stderr)
            print(f"error: variant {variant} failed ({proc.returncode})", file=sys.stderr)
            failed.append(variant)
            continue
        results[variant] = json.loads(proc.stdout.split("RESULT", 1)[1])
    if not results:
        return 1
    base = results.get("live_reference", next(iter(results.values())))
    table, rows = [], []
    x = f"L={s['layers']},h={s['hidden']},V={s['vocab']},B={s['batch']}+{s['batch']},T={s['seq']},{s['dtype']}"
    for v, r in results.items():
        table.append([v, f"{r['params'] / 1e6:.1f}M", f"{r['step_ms']:.1f}", f"{r['tokens_per_s']:.0f}",
                      f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x", f"{r['peak_mib']:.0f}",
                      f"{r['peak_mib'] / base['peak_mib']:.2f}x", f"{r['setup_s']:.2f}"])
        for metric, unit, val in (("step", "ms", r["step_ms"]), ("tokens_per_s", "1/s", r["tokens_per_s"]),
                                  ("peak_memory", "MiB", r["peak_mib"])):
            rows.append({"kernel": "npo_step", "provider": v, "mode": "cuda_max_allocated" if device.type == "cuda"
                         else "cpu_peak_rss_growth", "metric": metric, "unit": unit, "x": x, "p50": f"{val:.3f}",
                         "device": machine})
    harness.print_table(["variant", "params", "step ms (p50)", "tokens/s", f"speed vs {base['variant']}",
                         "peak MiB", f"memory vs {base['variant']}", "setup s"], table)
    print("peak memory: " + ("torch.cuda.max_memory_allocated of the process" if device.type == "cuda"
                             else "growth of the process's peak RSS over the RSS before the model was built"))
    if not args.no_save and not args.quick:
        print("appended to", harness.append_results("npo_memory", rows))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
