"""Benchmark of the classifier unlearning methods on scikit-learn's digits (small_cnn).

For each scenario (10% random forgetting; class-wise forgetting of one class) and each seed:
train the original model, run Retrain (same recipe, on D_r) and every method, and evaluate
UA / RA / TA / MIA-Efficacy (SalUn protocol), Avg. Gap to Retrain, seconds and RTE ratio to Retrain.
Prints a Markdown table (mean ± std over seeds) and writes it to
benchmarks/results/methods_classification.md and .csv (atomically).

    PYTHONPATH=python python benchmarks/bench_methods_classification.py [--seeds 0 1 2] [--methods ft ga ...]

Hyper-parameters: the methods' defaults, except the per-method overrides in DIGITS_HPARAMS (printed
with the results), which scale reference-code values meant for ResNet-18 on CIFAR-10 (45k retain
images, 5k forget images per class) to a 1.4k-image data set with a ~20k-parameter CNN.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import torch

import unlearnx as ux
from unlearnx.data import class_forget, digits_dataset, random_forget
from unlearnx.methods import train_classifier
from unlearnx.methods.presets import DIGITS_HPARAMS
from unlearnx.models import small_cnn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import device_name, write_table_files  # noqa: E402  (the shared benchmark harness, same folder)

METRICS = ("UA", "RA", "TA", "MIA-Efficacy", "Avg.Gap", "RTE-s", "RTE-ratio")
PART1 = ("ft", "ga", "rl", "l1_sparse", "boundary_shrink", "boundary_expand", "scrub", "bad_teacher", "laf")
PART2 = ("salun", "salun_soft", "ssd", "lfssd", "fisher", "influence", "prune_first")
ALL = PART1 + PART2
# The recipe of the original model; Retrain re-runs it on D_r.
RECIPE = {"epochs": 20, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4,
          "batch_size": 64, "schedule": "cosine"}
def run_scenario(scenario, seed: int, methods, progress: bool) -> dict[str, dict[str, float]]:
    torch.manual_seed(seed)
    original = small_cnn()
    train_classifier(original, scenario.train, seed=seed, progress=progress, **RECIPE)
    retrain = ux.unlearn(original, "retrain", retain=scenario.retain, seed=seed, progress=progress, **RECIPE)
    ref = ux.evaluate(retrain.model, scenario=scenario, seconds=retrain.seconds)
    rows = {"Original": ux.evaluate(original, scenario=scenario, reference=ref), "Retrain": {**ref, "Avg.Gap": 0.0,
                                                                                          "RTE-ratio": 1.0}}
    for name in methods:
        res = ux.unlearn(original, name, forget=scenario.forget, retain=scenario.retain, seed=seed,
                         progress=progress, **DIGITS_HPARAMS.get(name, {}))
        rows[name] = ux.evaluate(res.model, scenario=scenario, reference=ref, seconds=res.seconds)
    return rows


def summarize(per_seed: list[dict[str, dict[str, float]]]) -> tuple[str, list[dict]]:
    table = ["| Method | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    records = []
    for name in per_seed[0]:
        cells = []
        rec = {"method": name}
        for m in METRICS:
            vals = [rows[name][m] for rows in per_seed if m in rows[name]]
            if not vals:
                cells.append("–")
                continue
            mean = statistics.fmean(vals)
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            rec[f"{m} mean"], rec[f"{m} std"] = mean, std
            cells.append(f"{mean:.2f} ± {std:.2f}")
        table.append(f"| {name} | " + " | ".join(cells) + " |")
        records.append(rec)
    return "\n".join(table) + "\n", records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(ALL), help=f"registered names (default {ALL})")
    parser.add_argument("--forget-class", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared host)")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods if m not in ux.methods.available()]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; available: {ux.methods.available()}")
    torch.set_num_threads(args.threads)
    train, test = digits_dataset(seed=0)
    out = io.StringIO()
    csv_rows = []
    start = time.perf_counter()
    for label, build in (("10% random forgetting", lambda s: random_forget(train, test, fraction=0.1, seed=s)),
                         (f"class-wise forgetting (class {args.forget_class})",
                          lambda s: class_forget(train, test, classes=args.forget_class))):
        per_seed = [run_scenario(build(s), s, args.methods, args.progress) for s in args.seeds]
        table, records = summarize(per_seed)
        out.write(f"### {label}, digits / small_cnn, seeds {args.seeds}\n\n{table}\n")
        csv_rows += [{"scenario": label, **r} for r in records]
        print(f"### {label}\n\n{table}", flush=True)
    elapsed = time.perf_counter() - start
    footer = (f"Machine: {device_name('cpu')}; torch {torch.__version__}; unlearnx {ux.__version__}; "
              f"total {elapsed:.0f} s.\nOriginal/Retrain recipe: {RECIPE}.\n"
              f"Per-method overrides of the defaults: {DIGITS_HPARAMS or 'none'}.\n")
    print(footer)
    if not args.no_write:
        write_table_files("methods_classification", "Classifier unlearning methods on digits", out.getvalue() + footer,
                          ["scenario", "method"] + [f"{m} {s}" for m in METRICS for s in ("mean", "std")], csv_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
