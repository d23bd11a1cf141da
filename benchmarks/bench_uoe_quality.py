"""UOE vs the same base method on all parameters, on a tiny MoE trained on the built-in fictitious authors.

Zhuang et al., 2025, "UOE: Unlearning One Expert Is Enough for Mixture-of-Experts LLMs": unlearning
one expert (plus a router anchor) keeps utility and routing where unlearning every parameter does
not. Per seed: a tiny MoE (`--arch`, default Qwen2-MoE) is fine-tuned on 10 fictitious authors
(the tests' TinySetup recipe); then, for each base method (GA, GradDiff, NPO) and learning rate,
UOE(base) and the base method on all parameters run with the same lr / epochs / batch size.

Reported per run (answer tokens only; forget10 = one author, 20 QAs; retain = 40 other QAs):
  forget NLL / forget p   mean answer NLL and mean exp(-NLL) (TOFU's probability) on forget10
  retain NLL              the same on retain (utility; the trained model's value is the target)
  routing drift           fraction of (retain token, MoE layer) pairs whose top-k expert set
                          differs from the trained model's (padding excluded)
  touched                 fraction of parameter entries that changed
  time                    wall seconds of `ux.unlearn` (attribution included for UOE)
Means ± std over seeds go to stdout as a markdown table and to benchmarks/results/uoe_quality.md,
per-run rows to uoe_quality.csv and uoe_quality.json (written atomically).

    python benchmarks/bench_uoe_quality.py [--seeds 0 1 2] [--lrs 1e-3 1e-2] [--arch moe] [--quick]
"""
from __future__ import annotations

import argparse
import csv
import io
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
from unlearnx.models.lm import build_lm  # noqa: E402
from unlearnx.models.lm_training import answer_nll, finetune_lm  # noqa: E402
from unlearnx.report.io import atomic_write_json, atomic_write_text  # noqa: E402
from unlearnx.stats.experts import find_moe_blocks  # noqa: E402

BASES = ("ga", "graddiff", "npo")
METRICS = ("forget_nll", "forget_p", "retain_nll", "routing_drift", "touched", "seconds")
MODEL = {"layers": 2, "hidden": 64, "heads": 4, "experts": 8, "top_k": 2}
TRAIN = {"epochs": 10, "lr": 3e-3, "batch_size": 16}


@torch.no_grad()
def answer_metrics(model, data: QADataset) -> tuple[float, float]:
    nll = answer_nll(model, data.collate(list(data)))
    return nll.mean().item(), nll.neg().exp().mean().item()


@torch.no_grad()
def topk_sets(model, batch) -> torch.Tensor:
    """[L, N_valid, k] sorted top-k expert indices per MoE layer for the batch's non-padding tokens."""
    blocks = find_moe_blocks(model)
    logits = {}
    hooks = [b.router.register_forward_hook(
        lambda _m, _i, out, n=b.name: logits.__setitem__(n, out[0] if isinstance(out, tuple) else out))
        for b in blocks]
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in hooks:
            h.remove()
    valid = batch["attention_mask"].reshape(-1).bool()
    return torch.stack([b.probability_logits(logits[b.name]).topk(b.top_k, -1).indices.sort(-1).values[valid]
                        for b in blocks])


def run_one(trained, setup, method: str, base: str, lr: float, epochs: int, seed: int) -> dict:
    before = dict(trained.named_parameters())
    hp = {"base": base} if method == "uoe" else {}
    t0 = time.perf_counter()
    res = ux.unlearn(trained, method if method == "uoe" else base, forget=setup["forget"], retain=setup["retain"],
                     tokenizer=setup["tok"], lr=lr, epochs=epochs, batch_size=8, seed=seed, progress=False, **hp)
    seconds = time.perf_counter() - t0
    model = res.model.eval()
    f_nll, f_p = answer_metrics(model, setup["forget_eval"])
    r_nll, _ = answer_metrics(model, setup["retain_eval"])
    drift = (topk_sets(model, setup["retain_batch"]) != setup["retain_topk"]).any(-1).float().mean().item()
    changed = sum(int((p != before[n]).sum()) for n, p in model.named_parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"forget_nll": f_nll, "forget_p": f_p, "retain_nll": r_nll, "routing_drift": drift,
            "touched": changed / total, "seconds": seconds,
            "experts": res.log.get("uoe_experts", "all")}


def build_setup(arch: str, seed: int, train: dict) -> tuple[torch.nn.Module, dict]:
    qa = make_authors(10, n_real_authors=0, n_world_facts=0)
    t = QATemplate()
    tok = build_tokenizer(qa.texts() + [t.render(i.question, i.answer) for i in qa["full"]], vocab_size=600)
    model = build_lm(arch, tokenizer=tok, seed=seed, **MODEL)
    finetune_lm(model, QADataset(qa["full"], tok), seed=seed, progress=False, **train)
    model.eval()
    retain_eval = QADataset(qa["retain90"][:40], tok)
    setup = {"tok": tok, "forget": qa["forget10"], "retain": qa["retain90"],
             "forget_eval": QADataset(qa["forget10"], tok), "retain_eval": retain_eval,
             "retain_batch": retain_eval.collate(list(retain_eval))}
    setup["retain_topk"] = topk_sets(model, setup["retain_batch"])
    return model, setup


def _fmt(values: list[float], spec: str) -> str:
    mean = statistics.fmean(values)
    return f"{mean:{spec}}" + (f" ± {statistics.stdev(values):{spec}}" if len(values) > 1 else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--bases", nargs="+", default=list(BASES), choices=BASES)
    ap.add_argument("--arch", default="moe", choices=["moe", "mixtral", "olmoe", "deepseek"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: a tiny model runs faster on a busy host)")
    ap.add_argument("--quick", action="store_true", help="one seed, one lr, 2 epochs of unlearning, 4 of training")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    train = dict(TRAIN)
    if args.quick:
        args.seeds, args.lrs, args.epochs, train["epochs"] = args.seeds[:1], args.lrs[-1:], 2, 4
    if any(lr <= 0 for lr in args.lrs) or args.epochs < 1:
        ap.error("--lrs must be > 0 and --epochs >= 1")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows, originals = [], []
    for seed in args.seeds:
        trained, setup = build_setup(args.arch, seed, train)
        f_nll, f_p = answer_metrics(trained, setup["forget_eval"])
        originals.append({"seed": seed, "forget_nll": f_nll, "forget_p": f_p,
                          "retain_nll": answer_metrics(trained, setup["retain_eval"])[0]})
        for lr in args.lrs:
            for base in args.bases:
                for method, variant in (("uoe", "UOE"), ("all", "all params")):
                    r = run_one(trained, setup, method, base, lr, args.epochs, seed)
                    rows.append({"seed": seed, "lr": lr, "base": base, "variant": variant, **r})
                    print(f"seed {seed} lr {lr:g} {base:8s} {rows[-1]['variant']:10s} "
                          + " ".join(f"{m} {r[m]:.4g}" for m in METRICS), flush=True)
    elapsed = time.perf_counter() - start

    table = []
    table.append(["trained model", "", "", _fmt([o["forget_nll"] for o in originals], ".2f"),
                  _fmt([o["forget_p"] for o in originals], ".2g"), _fmt([o["retain_nll"] for o in originals], ".2f"),
                  "0", "0", ""])
    for lr in args.lrs:
        for base in args.bases:
            for variant in ("UOE", "all params"):
                sel = [r for r in rows if r["lr"] == lr and r["base"] == base and r["variant"] == variant]
                table.append([variant, base, f"{lr:g}"] + [
                    _fmt([r[m] for r in sel], d) for m, d in zip(METRICS, (".2f", ".2g", ".2f", ".3f", ".4f", ".1f"))])
    headers = ["variant", "base", "lr", "forget NLL ↑", "forget p ↓", "retain NLL ↓", "routing drift ↓",
               "touched", "time s"]
    buf = io.StringIO()
    sys_stdout, sys.stdout = sys.stdout, buf
    try:
        harness.print_table(headers, table)
    finally:
        sys.stdout = sys_stdout
    machine = harness.device_name("cpu")
    cfg = (f"tiny {args.arch} ({', '.join(f'{k} {v}' for k, v in MODEL.items())}), trained {train}; "
           f"unlearning: {args.epochs} epochs, batch 8, AdamW; seeds {args.seeds}")
    footer = (f"\nMachine: {machine}; {args.threads} thread(s); torch {torch.__version__}; unlearnx {ux.__version__}; "
              f"total {elapsed:.0f} s.\n{cfg}.\n")
    print("\n" + buf.getvalue() + footer)
    if not args.no_write:
        results = harness.RESULTS_DIR
        atomic_write_text(results / "uoe_quality.md", "# UOE vs all-parameter unlearning (bench_uoe_quality.py)\n\n"
                          + buf.getvalue() + footer)
        atomic_write_json(results / "uoe_quality.json", {"config": cfg, "machine": machine, "originals": originals,
                                                          "runs": rows})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["seed", "lr", "base", "variant", *METRICS, "experts"])
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(results / "uoe_quality.csv", out.getvalue())
        print("wrote", results / "uoe_quality.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
