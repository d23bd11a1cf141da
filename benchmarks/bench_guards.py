"""ECO prompt guards on a tiny Llama trained on fictitious authors: overhead and quality.

Overhead: per generated token, the guard (prompt classification + embedding corruption in the
prefill) vs the bare model, Hugging Face `generate` with a KV cache, greedy, exactly `--new-tokens`
tokens per prompt, one batch of unflagged (retain) prompts and one of flagged (forget) prompts.
The guard's extra work is one clean prompt forward to classify, plus the corruption: it is paid once
per prompt, so its share per token falls as answers get longer.

Quality (per corruption mode, strength searched onto the forget probability of a retain oracle
trained without the forget author): TOFU forget probability on the forget set (the classifier
decides, as at inference), forget quality vs the oracle, model utility, the answer probability on
retain authors the classifier never saw (utility on unflagged inputs) and the classifier's
false-positive rate there. Original model and oracle rows for comparison.

    python benchmarks/bench_guards.py [--quick] [--threads 1] [--no-save]
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
from unlearnx.data.authors import make_authors  # noqa: E402
from unlearnx.data.lm_batches import QADataset, QATemplate  # noqa: E402
from unlearnx.data.text import build_tokenizer  # noqa: E402
from unlearnx.guards import CORRUPTIONS, build_eco_guard, forget_probability  # noqa: E402
from unlearnx.models.lm import build_lm  # noqa: E402
from unlearnx.models.lm_training import finetune_lm  # noqa: E402


def trained(tok, items, *, hidden, layers, epochs):
    model = build_lm("llama", tokenizer=tok, layers=layers, hidden=hidden)
    finetune_lm(model, QADataset(items, tok), epochs=epochs, lr=3e-3, batch_size=16, progress=False)
    return model.eval()


def interleaved_ms(fns: dict, reps: int) -> dict:
    """{name: (p50, p20, p80)} wall ms, the functions timed in turn rep after rep: on a shared host
    a slow spell then hits every provider alike instead of whichever ran during it."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10)
        out[name] = (statistics.median(ts), q[1], q[7])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    reps = 5 if args.quick else 20
    torch.set_num_threads(args.threads)
    qa = make_authors(10, n_real_authors=0, n_world_facts=0)
    t = QATemplate()
    tok = build_tokenizer(qa.texts() + [t.render(i.question, i.answer) for i in qa["full"]], vocab_size=600)
    forget, retain = qa["forget10"], qa["retain90"]
    fit_retain, unseen = retain[:120], retain[120:]  # the classifier never sees the last 3 retain authors
    t0 = time.perf_counter()
    model = trained(tok, qa["full"], hidden=args.hidden, layers=args.layers, epochs=args.epochs)
    oracle = trained(tok, retain, hidden=args.hidden, layers=args.layers, epochs=args.epochs)
    machine = harness.device_name("cpu")
    print(f"{machine}; tiny Llama {args.layers} layers, hidden {args.hidden}; 10 authors, forget10 = "
          f"{len(forget)} QAs; models trained in {time.perf_counter() - t0:.0f} s")
    rows = []
    x = f"h={args.hidden},L={args.layers}"

    def row(kernel, provider, mode, metric, unit, p50, p20="", p80=""):
        fmt = (lambda v: f"{v:.6g}" if isinstance(v, float) else v)
        rows.append({"kernel": kernel, "provider": provider, "mode": mode, "metric": metric, "unit": unit, "x": x,
                     "p50": fmt(p50), "p20": fmt(p20), "p80": fmt(p80), "device": machine})

    # ---- quality ----------------------------------------------------------------------------------
    held = {"unseen_retain": unseen}
    kw = dict(suite="tofu", tokenizer=tok, forget=forget, retain=fit_retain[:40], held=held, max_new_tokens=24)
    oracle_eval = ux.evaluate(oracle, **kw)
    table, guards = [], {}
    unseen_ds = QADataset(unseen, tok)
    for name, m in (("original", model), ("oracle", oracle)):
        res = ux.evaluate(m, reference=oracle_eval, **kw)
        table.append([name, "–", "–", f"{res['forget/probability']:.3f}", f"{res['forget_quality']:.3g}",
                      f"{res['model_utility']:.3f}", f"{res['unseen_retain/probability']:.3f}", "–", "–", "–"])
    for mode in CORRUPTIONS:
        t0 = time.perf_counter()
        guard, log = build_eco_guard(model, forget, fit_retain, tokenizer=tok, oracle=oracle, mode=mode,
                                     progress=False)
        fit_s = time.perf_counter() - t0
        guards[mode] = guard
        res = ux.evaluate(guard, reference=oracle_eval, **kw)
        enc = unseen_ds.collate(list(unseen_ds))
        fpr = float(guard.flag(enc["input_ids"], enc["attention_mask"]).double().mean())
        util_guard, util_model = forget_probability(guard, unseen_ds), forget_probability(model, unseen_ds)
        table.append([f"eco[{mode}]", f"{log['strength']:.4g}", f"{log['target']:.3f}",
                      f"{res['forget/probability']:.3f}", f"{res['forget_quality']:.3g}", f"{res['model_utility']:.3f}",
                      f"{res['unseen_retain/probability']:.3f}", f"{fpr:.3f}", f"{log['classifier']['auc']:.3f}",
                      f"{fit_s:.1f}"])
        for metric, unit, v in (("strength", "", log["strength"]), ("forget_probability", "p",
                                res["forget/probability"]), ("forget_quality", "p-value", res["forget_quality"]),
                                ("model_utility", "hmean", res["model_utility"]),
                                ("unseen_retain_probability", "p", util_guard),
                                ("unseen_retain_probability_drop", "p", util_model - util_guard),
                                ("classifier_fpr_unseen", "fraction", fpr),
                                ("classifier_auc_holdout", "auc", log["classifier"]["auc"]), ("fit", "s", fit_s)):
            row("eco_quality", "eco", mode, metric, unit, float(v))
    harness.print_table(["model", "strength", "target p", "forget p", "forget_quality", "model_utility",
                         "unseen retain p", "FPR unseen", "AUC holdout", "fit s"], table)

    # ---- overhead per generated token ---------------------------------------------------------------
    guard = guards["rand_noise_first_n"]
    n = args.new_tokens
    table = []
    for label, items in (("unflagged", unseen[:args.batch]), ("flagged", forget[:args.batch])):
        enc = tok([t.prompt(i.question) for i in items], padding=True, return_tensors="pt")
        # Left padding for generation, as greedy decoding of a batch needs.
        ids, att = enc["input_ids"], enc["attention_mask"]
        width = att.sum(1)
        ids = torch.stack([torch.cat([r[a.bool()].new_full((ids.shape[1] - w,), tok.pad_token_id), r[a.bool()]])
                           for r, a, w in zip(ids, att, width)])
        att = (torch.arange(ids.shape[1])[None, :] >= (ids.shape[1] - width)[:, None]).long()
        flags = guard.flag(ids, att)
        gen = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
        tokens = len(items) * n
        ms = interleaved_ms({"bare": lambda: model.generate(ids, attention_mask=att, **gen),
                             "guard": lambda: guard.generate(ids, attention_mask=att, **gen),
                             "classify": lambda: guard.flag(ids, att)}, reps)
        bare, guarded = (tuple(v / tokens for v in ms[k]) for k in ("bare", "guard"))
        classify = ms["classify"][0]
        table.append([label, f"{int(flags.sum())}/{len(items)}", f"{bare[0]:.3f}", f"{guarded[0]:.3f}",
                      f"{guarded[0] / bare[0]:.3f}", f"{classify:.2f}"])
        mode = f"{label},B={len(items)},new={n}"
        row("eco_generate", "bare", mode, "per_token", "ms", *bare)
        row("eco_generate", "eco_guard", mode, "per_token", "ms", *guarded)
        row("eco_generate", "eco_guard", mode, "ratio_vs_bare", "x", guarded[0] / bare[0])
        row("eco_classify", "eco_guard", mode, "batch", "ms", classify)
    harness.print_table(["prompts", "flagged", "bare ms/token", "guard ms/token", "ratio", "classify ms/batch"], table)
    if not args.no_save:
        print("appended to", harness.append_results("guards", rows))


if __name__ == "__main__":
    main()
