"""O3 guard: inference overhead per generated token vs the bare model, and quality on the built-in data.

Setup: a tiny Llama trained on 10 fictitious authors (the test recipe); O3 request 1 = forget10
(1 author, 20 QAs), request 2 = the last retain author; "other" = the 8 authors of neither.

Overhead (CPU, one thread, batch `--batch`): a prefill of the prompts, then `--new-tokens` greedy
decode steps with the KV cache (no stop at <eos>, so every run decodes the same number of
tokens). Timed for the bare model, the guard on prompts it does not flag (detector heads only)
and the guard on prompts it flags (the LoRA hooks run: every target layer adds its adapters).

Quality (per model): TOFU probability exp(-avg NLL) of the answers of request 1, request 2 and
the other authors (whole QAs, teacher-forced), ROUGE-L recall of greedy answers to request 1's
questions, the detector's false-positive rate on the other authors' prompts and its
true-positive rate on unseen questions of an author (detector fitted on 10 of the 20 QAs, scored
on the other 10), with CEL training of the heads off (default) and on. GA and NPO (full
fine-tuning, same lr / epochs) are the weight-editing rows.

    python benchmarks/bench_o3.py [--quick] [--new-tokens 32] [--batch 1]
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
from unlearnx.data.lm_batches import QADataset, QATemplate, pad_batch  # noqa: E402
from unlearnx.data.text import build_tokenizer  # noqa: E402
from unlearnx.eval.llm import greedy_generate, rouge_l  # noqa: E402
from unlearnx.guards.o3 import O3Guard  # noqa: E402
from unlearnx.models.lm import build_lm  # noqa: E402
from unlearnx.models.lm_training import answer_nll, finetune_lm  # noqa: E402

HP = {"lr": 1e-2, "epochs": 5, "batch_size": 8}


def setup(epochs: int, hidden: int = 64, layers: int = 4):
    qa = make_authors(10, n_real_authors=0, n_world_facts=0)
    t = QATemplate()
    tok = build_tokenizer(qa.texts() + [t.render(i.question, i.answer) for i in qa["full"]], vocab_size=600)
    model = build_lm("llama", tokenizer=tok, layers=layers, hidden=hidden, heads=max(1, hidden // 16))
    finetune_lm(model, QADataset(qa["full"], tok), epochs=epochs, lr=3e-3, batch_size=16, progress=False)
    return qa, tok, model.eval()


def prompts(tok, items):
    ids = [tok(QATemplate().prompt(i.question))["input_ids"] for i in items]
    return pad_batch([{"input_ids": x, "labels": x} for x in ids], pad_token_id=tok.pad_token_id)


@torch.no_grad()
def probability(model, tok, items) -> float:
    ds = QADataset(items, tok)
    return answer_nll(model, ds.collate(list(ds))).neg().exp().mean().item()


@torch.no_grad()
def decode(model, batch, new_tokens: int) -> None:
    """Prefill, then new_tokens cached greedy steps (left padding irrelevant: equal-length prompts)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    out = model(input_ids=ids, attention_mask=mask, use_cache=True)
    cache = out.cache
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(new_tokens):
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
        out = model(input_ids=nxt, attention_mask=mask, cache=cache, use_cache=True)
        cache = out.cache
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)


def same_length(tok, items, batch: int):
    """`batch` prompts of one token length (no padding: a clean per-token timing)."""
    by_len: dict[int, list] = {}
    for it in items:
        by_len.setdefault(len(tok(QATemplate().prompt(it.question))["input_ids"]), []).append(it)
    group = max(by_len.values(), key=len)
    if len(group) < batch:
        raise SystemExit(f"--batch: only {len(group)} equal-length prompts available")
    return prompts(tok, group[:batch])


def detector_rates(model, tok, qa, other, cel_epochs: int) -> tuple[float, float]:
    """(TPR on 10 unseen questions of the forget author, FPR on the other authors' prompts)."""
    seen, unseen = qa["forget10"][:10], qa["forget10"][10:]
    g = O3Guard(model, **HP, detector_epochs=cel_epochs)
    g.add_request(seen, tokenizer=tok, progress=False)
    rate = []
    for items in (unseen, other):
        b = prompts(tok, items)
        rate.append((g.gate_weights(g.detector_scores(b["input_ids"], b["attention_mask"])) > 0).float().mean().item())
    return rate[0], rate[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=12, help="training epochs of the tiny model")
    ap.add_argument("--hidden", type=int, default=64, help="hidden size of the tiny Llama")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers of the tiny Llama")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import copy

    qa, tok, base = setup(args.epochs, args.hidden, args.layers)
    shape = f"h={args.hidden},L={args.layers}"
    first, second = qa["forget10"], qa["retain90"][-20:]
    other = qa["retain90"][:160]
    device = harness.device_name("cpu")

    t0 = time.perf_counter()
    guard = ux.unlearn(base, "o3", forget=first, tokenizer=tok, progress=False, **HP).model
    request_s = [time.perf_counter() - t0]
    t0 = time.perf_counter()
    guard.add_request(second, tokenizer=tok, seed=1, progress=False)
    request_s.append(time.perf_counter() - t0)

    # ---- overhead ---------------------------------------------------------------------------
    rows, table = [], []
    reps = 5 if args.quick else 20
    flagged_b, clean_b = same_length(tok, first, args.batch), same_length(tok, other, args.batch)
    guard(**{k: flagged_b[k] for k in ("input_ids", "attention_mask")})
    assert (guard.gates > 0).any(0).all(), "flagged prompts were not flagged"
    guard(**{k: clean_b[k] for k in ("input_ids", "attention_mask")})
    assert not (guard.gates > 0).any(), "unflagged prompts were flagged"
    cases = [("bare", base, clean_b), ("guard_unflagged", guard, clean_b), ("guard_flagged", guard, flagged_b),
             ("bare_flagged_prompts", base, flagged_b)]
    # Interleaved rounds (every case once per round): load from other jobs on the shared host hits
    # all cases alike instead of whichever ran during a busy spell.
    samples = {name: ([], []) for name, _, _ in cases}
    for _ in range(reps):
        for name, model, b in cases:
            pre = harness.time_fn(lambda: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                                use_cache=True), warmup=1, reps=3)[0]
            full = harness.time_fn(lambda: decode(model, b, args.new_tokens), warmup=0, reps=1)[0]
            samples[name][0].append(pre)
            samples[name][1].append((full - pre) / args.new_tokens)
    timing = {}
    for name, _, b in cases:
        pre, per_token = statistics.median(samples[name][0]), statistics.median(samples[name][1])
        q_pre, q_tok = statistics.quantiles(samples[name][0], n=10), statistics.quantiles(samples[name][1], n=10)
        timing[name] = (pre, per_token)
        x = f"B={args.batch},prompt={b['input_ids'].shape[1]},new={args.new_tokens},{shape}"
        rows += [{"kernel": "o3_guard", "provider": name, "mode": "prefill", "metric": "time", "unit": "ms",
                  "x": x, "p50": round(pre, 4), "p20": round(q_pre[1], 4), "p80": round(q_pre[7], 4), "device": device},
                 {"kernel": "o3_guard", "provider": name, "mode": "decode", "metric": "time_per_token", "unit": "ms",
                  "x": x, "p50": round(per_token, 4), "p20": round(q_tok[1], 4), "p80": round(q_tok[7], 4),
                  "device": device}]
    for name, ref in (("guard_unflagged", "bare"), ("guard_flagged", "bare_flagged_prompts")):
        (p, d), (pr, dr) = timing[name], timing[ref]
        table.append([name, f"{p:.2f} ({p / pr:.2f}x)", f"{d:.3f} ({d / dr:.2f}x)"])
    print(f"\nOverhead vs the bare model ({device}, {shape}), batch {args.batch}, {args.new_tokens} new tokens")
    print("prefill ms / decode ms per token, ratio to the bare model on the same prompts")
    harness.print_table(["case", "prefill ms", "decode ms/token"], table)
    print(f"request training + detector fit: {request_s[0]:.1f} s, {request_s[1]:.1f} s")

    # ---- quality ----------------------------------------------------------------------------
    qrows = []
    models = {"original": base, "o3 (2 requests)": guard}
    # Weight-editing methods with the tiny-model settings of tests/methods_llm (lr 1e-3, 3 epochs);
    # GradDiff and NPO(+RT) get the other authors as retain data, which O3 never sees.
    for method in ("ga", "graddiff", "npo"):
        m = copy.deepcopy(base)
        for req in (first, second):  # the same two requests, applied one after the other
            m = ux.unlearn(m, method, forget=req, retain=None if method == "ga" else other, tokenizer=tok,
                           progress=False, lr=1e-3, epochs=3, batch_size=8).model
        models[f"{method} (2 requests)"] = m
    questions = [QATemplate().prompt(i.question) for i in first]
    for name, m in models.items():
        gen = greedy_generate(m, tok, questions, max_new_tokens=24)
        rouge = sum(rouge_l(gen, [i.answer for i in first], use_stemmer=True, kind="recall")) / len(first)
        vals = [probability(m, tok, first), probability(m, tok, second), probability(m, tok, other), rouge]
        qrows.append([name] + [f"{v:.3f}" for v in vals])
        for metric, v in zip(("p_request1", "p_request2", "p_other", "rouge_request1"), vals):
            rows.append({"kernel": "o3_quality", "provider": name, "mode": "tofu", "metric": metric, "unit": "",
                         "x": f"authors=10,{shape}", "p50": round(v, 4), "device": device})
    for cel in (0, 20):
        tpr, fpr = detector_rates(copy.deepcopy(base), tok, qa, other, cel)
        qrows.append([f"detector (CEL epochs {cel})", f"TPR unseen {tpr:.2f}", "", f"FPR {fpr:.3f}", ""])
        for metric, v in (("tpr_unseen", tpr), ("fpr_other", fpr)):
            rows.append({"kernel": "o3_detector", "provider": f"cel_epochs={cel}", "mode": "prompts", "metric": metric,
                         "unit": "", "x": f"authors=10,{shape}", "p50": round(v, 4), "device": device})
    b = prompts(tok, other)
    fpr = (guard.gate_weights(guard.detector_scores(b["input_ids"], b["attention_mask"])) > 0).any(0).float().mean()
    qrows.append(["o3 guard, other prompts flagged", "", "", f"FPR {fpr.item():.3f}", ""])
    rows.append({"kernel": "o3_detector", "provider": "guard_2_requests", "mode": "prompts", "metric": "fpr_other",
                 "unit": "", "x": f"authors=10,{shape}", "p50": round(fpr.item(), 4), "device": device})
    print("\nQuality (TOFU probability of the answers; ROUGE-L recall of generated answers)")
    harness.print_table(["model", "p request 1", "p request 2", "p other authors", "ROUGE-L request 1"], qrows)
    path = harness.append_results("o3", rows)
    print(f"\nrows appended to {path}")


if __name__ == "__main__":
    main()
