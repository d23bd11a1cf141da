"""LLM evaluation benchmark: suite throughput on tiny models and the end-to-end forget10 table.

    PYTHONPATH=python python benchmarks/bench_llm_eval.py [--authors 20] [--quick]

1. Data: the built-in fictitious authors. `make_authors(N + k)`: the first N authors are exactly
   those of `make_authors(N)` (its forget10 = the last k = ceil(10% N) of them, retain90 the
   rest); the k authors after them are a holdout never trained on (MIA / PrivLeak negatives).
   The held utility sets are the real_authors / world_facts splits. Every author also has a
   biography (MUSE-style verbatim text).
2. Models: a tiny Llama "target" trained on forget + retain QA, their biographies and the held
   sets; a "retain" oracle trained the same way without the forget authors.
3. Throughput: items/s of `evaluate_tofu` and `evaluate_muse` on the target (no cache).
4. Table: target, retain, and the LLM methods of `ux.methods` (GA, GradDiff, NPO, SimNPO,
   IdkDPO, FLAT, RMU; tiny-model hyper-parameters as in tests/methods_llm). Columns: forget quality, model utility (and its ratio to the
   target's), PrivLeak (Min-K% k=0.4, forget vs holdout QA, relative to the retain model),
   VerbMem (biographies), KnowMem, and the robustness probes.

Writes benchmarks/results/llm_eval.csv (throughput rows) and benchmarks/results/llm_eval.md.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import RESULTS_DIR, append_results, device_name  # noqa: E402

from unlearnx.eval.llm import (  # noqa: E402
    MetricCache,
    evaluate_muse,
    evaluate_tofu,
    in_context_reintroduction,
    linear_probe,
    quantization_probe,
    relearning_attack,
    summary_table,
)
from unlearnx.experiments.llm import (  # noqa: E402
    BASE_HPARAMS,
    METHOD_HPARAMS,
    build_authors_data,
    build_demo_tokenizer,
    train_lm,
)
from unlearnx.models.lm import build_lm  # noqa: E402
from unlearnx.report.io import atomic_write_text  # noqa: E402


# The built-in benchmark's recipe (experiments.llm defaults): memorizes forget10 (probability >= 0.9).
TRAIN = {"lr": 4e-3, "batch_size": 16, "group_by_length": True}


def build_data(n_authors: int):
    return build_authors_data(n_authors, n_real_authors=8, n_world_facts=18)


def train(tokenizer, items, *, epochs: int, seed: int, cache_dir: Path, tag: str):
    key = hashlib.sha256(repr((tag, len(items), epochs, seed, len(tokenizer), TRAIN)).encode()).hexdigest()[:16]
    path = cache_dir / f"{tag}-{key}.pt"
    model_cfg = {"name": "llama", "hidden": 64, "layers": 2, "heads": 4}
    if path.is_file():
        model = build_lm("llama", tokenizer=tokenizer, hidden=64, layers=2, heads=4, seed=seed)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model, 0.0
    t0 = time.perf_counter()
    model, _ = train_lm(tokenizer, items, model=model_cfg, train={"epochs": epochs, **TRAIN},
                        seed=seed)
    seconds = time.perf_counter() - t0
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return model, seconds


def library_methods() -> list[str]:
    """The LLM methods of ux.methods (task "causal_lm") this benchmark runs, in table order."""
    import unlearnx as ux

    try:
        names = set(ux.methods.available(task="causal_lm"))
    except (TypeError, ValueError):  # a branch without LLM methods
        return []
    return [n for n in METHOD_HPARAMS if n in names]


def evaluate(model, tok, data, *, reference_tofu, reference_muse, cache):
    # The utility retain set is the first 40 retain QA: generation dominates the CPU time.
    tofu = evaluate_tofu(model, tok, forget=data["forget"], retain=data["retain"][:40], held=data["held"],
                         reference=reference_tofu, max_new_tokens=48, cache=cache)
    muse = evaluate_muse(model, tok, forget=data["forget"], holdout=data["holdout"], forget_qa=data["forget"],
                         retain_qa=data["retain"][:23], verbmem_texts=data["forget_bios"],
                         reference=reference_muse, cache=cache)
    row = {"forget_quality": tofu.get("forget_quality"), "model_utility": tofu["model_utility"],
           "forget_prob": tofu["forget/probability"], "forget_rougeL": tofu["forget/rouge_l_recall"],
           "privleak": muse.get("privleak"), "verbmem": muse["verbmem_forget"],
           "knowmem_forget": muse["knowmem_forget"], "knowmem_retain": muse["knowmem_retain"]}
    row["relearn_prob"] = relearning_attack(model, tok, data["forget"], epochs=2, lr=1e-3)["after"]
    row["int4_prob"] = quantization_probe(model, tok, data["forget"], bits=4, group_size=32)["after"]
    row["probe_acc"] = linear_probe(model, tok, data["forget"], folds=5)["accuracy"]
    row["in_context_prob"] = in_context_reintroduction(model, tok, data["forget"])["after"]
    return tofu, muse, row


def throughput(target, tok, data, held):
    """items/s of one uncached evaluate_tofu / evaluate_muse call on the target; appended to the CSV."""
    n_tofu = len(data["forget"]) + len(data["retain"]) + len(held)
    t0 = time.perf_counter()
    evaluate_tofu(target, tok, forget=data["forget"], retain=data["retain"], held=data["held"], max_new_tokens=48)
    tofu_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluate_muse(target, tok, forget=data["forget"], holdout=data["holdout"], forget_qa=data["forget"],
                  retain_qa=data["retain"][:23], verbmem_texts=data["forget_bios"])
    muse_s = time.perf_counter() - t0
    n_muse = 2 * len(data["forget"]) + len(data["holdout"]) + 20 + len(data["forget_bios"])
    device = device_name()
    print(f"throughput on {device}: TOFU {n_tofu / tofu_s:.1f} items/s ({n_tofu} items, {tofu_s:.1f} s), "
          f"MUSE {n_muse / muse_s:.1f} items/s ({n_muse} items, {muse_s:.1f} s)")
    append_results("llm_eval", [
        {"kernel": "evaluate_tofu", "provider": "unlearnx", "mode": "eval", "metric": "throughput", "unit": "items/s",
         "x": f"authors={len(data['retain']) // 20 + len(data['forget']) // 20}", "p50": n_tofu / tofu_s, "p20": "", "p80": "", "device": device},
        {"kernel": "evaluate_muse", "provider": "unlearnx", "mode": "eval", "metric": "throughput", "unit": "items/s",
         "x": f"authors={len(data['retain']) // 20 + len(data['forget']) // 20}", "p50": n_muse / muse_s, "p20": "", "p80": "", "device": device},
    ])



def write_table(rows: dict, header: str) -> None:
    """Add MU/target and the goal check (FQ >= 0.05, MU >= 0.95 x target, PrivLeak in [-5, 5]),
    write benchmarks/results/llm_eval.md atomically and print it (called after every row)."""
    mu_target = rows["target"]["model_utility"]
    for row in rows.values():
        row["MU/target"] = row["model_utility"] / mu_target
        row["goal"] = "yes" if (row["forget_quality"] >= 0.05 and row["MU/target"] >= 0.95
                                and -5 <= row["privleak"] <= 5) else "no"
    columns = ["forget_quality", "model_utility", "MU/target", "privleak", "verbmem", "knowmem_forget",
               "knowmem_retain", "forget_prob", "forget_rougeL", "relearn_prob", "int4_prob", "probe_acc",
               "in_context_prob", "unlearn_s", "goal"]
    text = header + summary_table(rows, columns=columns)
    atomic_write_text(RESULTS_DIR / "llm_eval.md", text)
    print(text, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--authors", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--skip-throughput", action="store_true", help="only the end-to-end table")
    ap.add_argument("--quick", action="store_true", help="12 authors, 30 epochs (the quick demo's size)")
    ap.add_argument("--model-cache", default="/tmp/unlearnx-bench-llm-eval")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    if args.quick:
        args.authors, args.epochs = 12, 30

    data = build_data(args.authors)
    tok = build_demo_tokenizer(data, vocab_size=2048)
    held = [i for v in data["held"].values() for i in v]
    cache_dir = Path(args.model_cache)
    target, t_target = train(tok, data["forget"] + data["retain"] + held + data["forget_bios"] + data["retain_bios"],
                             epochs=args.epochs, seed=0, cache_dir=cache_dir, tag=f"target{args.authors}")
    retain, t_retain = train(tok, data["retain"] + held + data["retain_bios"], epochs=args.epochs, seed=0,
                             cache_dir=cache_dir, tag=f"retain{args.authors}")
    print(f"trained target in {t_target:.0f} s, retain in {t_retain:.0f} s (0 = loaded from {cache_dir})")

    if not args.skip_throughput:
        throughput(target, tok, data, held)
    cache = MetricCache()
    ref_tofu, ref_muse, ret_row = evaluate(retain, tok, data, reference_tofu=retain, reference_muse=retain,
                                           cache=cache)
    rows = {"Retrain": ret_row}
    _, _, rows["target"] = evaluate(target, tok, data, reference_tofu=ref_tofu, reference_muse=ref_muse,
                                    cache=cache)
    header = (f"forget10 of {args.authors} fictitious authors (forget {len(data['forget'])} QA, holdout "
              f"{len(data['holdout'])} QA; utility retain set: first 40 retain QA), tiny Llama (hidden 64, "
              f"2 layers), {args.epochs} epochs; {device_name()}; {time.strftime('%Y-%m-%d')}\n\n")
    write_table(rows, header)

    import unlearnx as ux

    for name in library_methods():
        try:
            hp = {**BASE_HPARAMS, **METHOD_HPARAMS[name]}
            res = ux.unlearn(copy.deepcopy(target), name, forget=data["forget"], retain=data["retain"],
                             tokenizer=tok, progress=False, **hp)
            print(f"{name}: unlearned in {res.seconds:.1f} s with {hp}")
            _, _, rows[name] = evaluate(res.model, tok, data, reference_tofu=ref_tofu, reference_muse=ref_muse,
                                        cache=cache)
            rows[name]["unlearn_s"] = res.seconds
            write_table(rows, header)
        except Exception as e:  # noqa: BLE001  (report a method that fails on this data, keep the rest)
            print(f"method {name}: failed ({type(e).__name__}: {e})")
    write_table(rows, header)


if __name__ == "__main__":
    main()
