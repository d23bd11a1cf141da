"""ULD generation end to end: tokens/s of the ULD model vs the target alone, on a tiny Llama.

ULD (Ji et al., 2024) decodes every token with the target and a K-layer assistant that has its own
LM head, so its floor is the extra compute: per token a Llama layer costs c_l = 4h² + 3h·I
multiply-adds and the head c_h = h·V, so tokens/s ≈ (N·c_l + c_h) / ((N+K)·c_l + 2·c_h) of the
target alone when compute dominates (h 256, I 1024, N 8, K 2, V 2048: 0.77; a 7B Llama with K 8:
0.79). Target: >= 0.75x.

Providers, each generating exactly `--new` tokens per row (no eos stop) from `--prompt`-token
prompts (rows left-padded to different lengths), greedy:
    target_hf       target.generate (transformers' loop), the baseline users run today
    target_loop     the target alone through unlearnx's decoding loop (KV cache, the fused sampler
                    with no assistant): the same loop ULD uses, minus the assistant
    uld_loop        ULDModel.generate: target + assistant, each with its own KV cache, one
                    logit_diff_sample per step
    uld_processor   target.generate(logits_processor=[ULDLogitsProcessor(assistant)])
Ratios: each ULD provider vs target_hf and vs target_loop, the median over rounds of the ratio
within a round (every provider once per round, back to back). Weights are random (speed only); the
assistant's adapters are merged, as in the model the uld method returns. One torch thread (a tiny model on a shared 2-core host).

    python benchmarks/bench_uld_e2e.py [--quick] [--hidden 256] [--layers 8] [--assistant-layers 2]

Rows go to benchmarks/results/uld_e2e.csv (harness schema) and benchmarks/results/uld_e2e.json.
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

from unlearnx.methods.llm.uld import ULDLogitsProcessor, ULDModel, build_assistant  # noqa: E402
from unlearnx.methods.llm.uld_model import _cache_arg, _positions, _run  # noqa: E402
from unlearnx.models.lm import tiny_llama  # noqa: E402
from unlearnx.ops.logit_diff import logit_diff_sample  # noqa: E402

PAD = 0


@torch.no_grad()
def target_loop(target, ids, mask, new: int) -> torch.Tensor:
    """The target alone through the same loop as ULDModel.generate (cache, fused greedy step)."""
    arg, cache, out = _cache_arg(target), None, []
    pos = _positions(mask)
    step_ids = ids
    for _ in range(new):
        z, cache, _ = _run(target, arg, step_ids, mask, pos, cache)
        tok, _ = logit_diff_sample(z[:, -1], None, mode="none", greedy=True)
        out.append(tok)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        step_ids, pos = tok[:, None], pos[:, -1:] + 1
    return torch.stack(out, 1)


def prompts(batch: int, length: int, vocab: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lens = [length - (i % 4) for i in range(batch)]  # different lengths: left padding is exercised
    ids = torch.full((batch, length), PAD, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lens):
        ids[r, length - n:] = torch.randint(4, vocab, (n,), generator=g)
        mask[r, length - n:] = 1
    return ids, mask


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens and repetitions")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--assistant-layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args(argv)
    if args.quick:
        args.new, args.reps = 16, 2
    torch.set_num_threads(1)
    target = tiny_llama(args.vocab, hidden=args.hidden, layers=args.layers, heads=4, seed=0)
    # As the uld method returns it: adapters merged into the assistant's weights.
    assistant = build_assistant(target, layers=args.assistant_layers).merge_and_unload().requires_grad_(False)
    uld = ULDModel(target, assistant).eval()
    no_eos = {"eos_token_id": [], "pad_token_id": PAD}
    device = harness.device_name("cpu")
    rows, csv_rows, table = [], [], []
    for b in args.batches:
        ids, mask = prompts(b, args.prompt, args.vocab, seed=b)

        def hf_target():
            return target.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=args.new,
                                   min_new_tokens=args.new, pad_token_id=PAD)

        def hf_processor():
            proc = ULDLogitsProcessor(assistant, weight=uld.weight, relative_top=uld.relative_top,
                                      prompt_attention_mask=mask)
            return target.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=args.new,
                                   min_new_tokens=args.new, pad_token_id=PAD, logits_processor=[proc])

        providers = {
            "target_hf": hf_target,
            "target_loop": lambda: target_loop(target, ids, mask, args.new),
            "uld_loop": lambda: uld.generate(ids, mask, max_new_tokens=args.new, **no_eos),
            "uld_processor": hf_processor,
        }
        # Same greedy tokens from both ULD paths (the benchmark measures equal work).
        assert torch.equal(providers["uld_loop"]()[:, args.prompt:], hf_processor()[:, args.prompt:])
        # Round-robin repetitions: on a shared host the load drifts over seconds, so each ratio is
        # taken within one round (providers timed back to back), then the median over rounds.
        times = {name: [] for name in providers}
        for fn in providers.values():
            fn()  # warm-up
        for _ in range(args.reps):
            for name, fn in providers.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        tokens = b * args.new
        tps = {name: tokens / statistics.median(ts) for name, ts in times.items()}
        x = f"B={b},h={args.hidden},L={args.layers},K={args.assistant_layers},V={args.vocab},new={args.new}"
        for name, ts in times.items():
            q = statistics.quantiles(ts, n=10) if len(ts) > 1 else [ts[0]] * 9
            csv_rows.append({"kernel": "uld_generate", "provider": name, "mode": "greedy", "metric": "tokens_per_s",
                             "unit": "tok/s", "x": x, "p50": round(tps[name], 1), "p20": round(tokens / q[7], 1),
                             "p80": round(tokens / q[1], 1), "device": device})

        def ratio(uld_name, base_name):
            return statistics.median(tb / tu for tu, tb in zip(times[uld_name], times[base_name]))

        row = {"batch": b, "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
               "uld_loop_vs_target_hf": ratio("uld_loop", "target_hf"),
               "uld_loop_vs_target_loop": ratio("uld_loop", "target_loop"),
               "uld_processor_vs_target_hf": ratio("uld_processor", "target_hf"),
               "uld_processor_vs_target_loop": ratio("uld_processor", "target_loop")}
        rows.append(row)
        table.append([b, *(f"{tps[k]:.0f}" for k in providers), f"{row['uld_loop_vs_target_hf']:.2f}",
                      f"{row['uld_loop_vs_target_loop']:.2f}", f"{row['uld_processor_vs_target_hf']:.2f}"])
    harness.print_table(["B", *providers, "loop/HF", "loop/loop", "proc/HF"], table)
    c_l, c_h = 4 * args.hidden ** 2 + 3 * args.hidden * 4 * args.hidden, args.hidden * args.vocab
    ideal = (args.layers * c_l + c_h) / ((args.layers + args.assistant_layers) * c_l + 2 * c_h)
    print(f"compute floor (N c_l + c_h) / ((N + K) c_l + 2 c_h) = {ideal:.2f}; target >= 0.75")
    from unlearnx.report import atomic_write_json

    result = {"benchmark": "uld_e2e", "device": device, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "config": vars(args), "ideal_ratio": ideal, "rows": rows}
    if not args.quick:
        harness.append_results("uld_e2e", csv_rows)
        atomic_write_json(harness.RESULTS_DIR / "uld_e2e.json", result)
    return result


if __name__ == "__main__":
    main()
