"""The LLM demo with its tuned presets (`LLM_QUICK_TUNED`; `--full`: `LLM_DEMO_TUNED`) over several
seeds (issue 24).

Per seed one run of `llm_demo_config(quick=True)` (12 fictitious authors, forget10 = 40 QA, tiny
Llama; target and Retrain trained in the same run) with every method of `LLM_QUICK_TUNED` at its
tuned values and, in the same run (same target and Retrain), the same methods at the untuned
tiny-model values of `METHOD_HPARAMS` (labels "<method> (untuned)"). Prints per method forget quality
(median, min, max over seeds), MU / target (mean), forget probability (median), and how many seeds meet
the issue's bar: forget quality >= 0.05 at MU >= 0.9x the target's. One torch thread.

    python benchmarks/bench_llm_presets.py [--seeds 0 1 2] [--out runs/bench-llm-presets] [--no-untuned] [--full]

--full: the full-size demo (`llm_demo_config()`: 20 authors, 60-QA utility subset, 48-token answers)
with `LLM_DEMO_TUNED`. Results: <out>/seed<k>/results.json per seed and
benchmarks/results/llm_presets.json (llm_presets_full.json with --full).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from unlearnx.experiments.llm import llm_demo_config
from unlearnx.experiments.run import machine, run_experiment, versions
from unlearnx.methods.presets import LLM_DEMO_TUNED, LLM_QUICK_TUNED

FQ_BAR, MU_BAR = 0.05, 0.9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/bench-llm-presets")
    ap.add_argument("--no-untuned", action="store_true", help="only the tuned values")
    ap.add_argument("--full", action="store_true", help="the full-size demo with LLM_DEMO_TUNED")
    ap.add_argument("--results", default=None, help="default benchmarks/results/llm_presets[_full].json")
    args = ap.parse_args(argv)
    presets = LLM_DEMO_TUNED if args.full else LLM_QUICK_TUNED
    results = args.results or str(Path(__file__).resolve().parent / "results"
                                  / ("llm_presets_full.json" if args.full else "llm_presets.json"))
    names = list(presets)
    rows: dict[int, dict] = {}
    started = time.perf_counter()
    for seed in args.seeds:
        cfg = llm_demo_config(quick=not args.full, methods=names, seed=seed, out_dir=f"{args.out}/seed{seed}")
        if not args.no_untuned:
            cfg["methods"] += [{"name": m, "label": f"{m} (untuned)"} for m in names]
        res = run_experiment(cfg, quiet=True)
        rows[seed] = res["rows"]
        print(f"seed {seed}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    labels = list(rows[args.seeds[0]])
    table = []
    for label in labels:
        per = [rows[s][label] for s in args.seeds]
        fq = [r["forget_quality"] for r in per]
        mu = [r["MU/target"] for r in per]
        meets = sum(f >= FQ_BAR and m >= MU_BAR for f, m in zip(fq, mu))
        table.append({"label": label, "fq": fq, "mu_ratio": mu, "forget_prob": [r["forget_prob"] for r in per],
                      "truth_ratio": [r["forget_truth_ratio"] for r in per], "meets": meets})
    print(f"\n| method | FQ median [min, max] | MU/target mean [min, max] | forget prob median | truth ratio median "
          f"| seeds with FQ >= {FQ_BAR} & MU >= {MU_BAR}x |\n|---|---:|---:|---:|---:|---:|")
    for t in table:
        print(f"| {t['label']} | {statistics.median(t['fq']):.3g} [{min(t['fq']):.2g}, {max(t['fq']):.2g}] | "
              f"{statistics.mean(t['mu_ratio']):.2f} [{min(t['mu_ratio']):.2f}, {max(t['mu_ratio']):.2f}] | "
              f"{statistics.median(t['forget_prob']):.2g} | {statistics.median(t['truth_ratio']):.2f} | "
              f"{t['meets']}/{len(args.seeds)} |")
    out = Path(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seeds": args.seeds, "presets": presets, "full": args.full, "table": table, "rows": rows,
                               "seconds": time.perf_counter() - started, "versions": versions(),
                               "machine": machine()}, indent=1, default=str))
    print(f"\nwrote {out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
