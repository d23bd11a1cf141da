"""The classification demo's panel with its tuned presets over several seeds (issue 24).

Per scenario (class-wise forgetting of digit 0; 10% random forgetting) and per seed, one run of the
classification demo's config (digits, small_cnn, 20 epochs; Original and Retrain trained in the same
run) with, in the same run:
  * the demo's methods at their tuned values (`DIGITS_CLASSWISE_TUNED` / `DIGITS_RANDOM_TUNED`,
    labels "<method> (tuned)"),
  * the same methods at the digits presets the tuning started from (`DIGITS_CLASSWISE_HPARAMS` /
    `DIGITS_HPARAMS`, labels "<method> (preset)"),
  * the SSD framework's peers ASSD, JiT and UNSIR at their digits presets (not tuned).
Prints and writes per scenario UA / RA / TA / MIA-Efficacy / Avg. Gap (mean ± std over seeds), the
seeds on which the model forgot (class-wise: UA >= 90), and the issue's checks: SalUn (tuned)'s Avg.
Gap against the best non-saliency method per seed. One torch thread.

    python benchmarks/bench_classifier_presets.py [--seeds 0 1 2] [--scenarios class random] [--out DIR]

Results: benchmarks/results/classifier_presets.{md,csv}; <out>/<scenario>-seed<k>/ per run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from unlearnx.experiments import get_task
from unlearnx.experiments.run import machine, run_experiment, versions
from unlearnx.methods import presets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import write_table_files  # noqa: E402  (the shared benchmark harness, same folder)

METRICS = ("UA", "RA", "TA", "MIA-Efficacy", "Avg.Gap")
PANEL = ("ft", "ga", "rl", "l1_sparse", "salun", "ssd")
PEERS = ("assd", "jit", "unsir")
SALIENCY = ("salun", "salun_soft")


def scenario_presets(scenario: str) -> tuple[dict, dict]:
    """(tuned values, the digits presets the tuning started from) of a scenario."""
    if scenario == "class":
        return presets.DIGITS_CLASSWISE_TUNED, presets.DIGITS_CLASSWISE_HPARAMS
    return presets.DIGITS_RANDOM_TUNED, presets.DIGITS_HPARAMS


def run_scenario(scenario: str, seed: int, out: Path) -> dict:
    tuned, start = scenario_presets(scenario)
    task = get_task("classification")
    cfg = task.demo_config(methods=list(PANEL), out_dir=str(out / f"{scenario}-seed{seed}"),
                           options={"random": scenario == "random"})
    cfg["seeds"] = [seed]
    cfg["methods"] = ([{"name": m, "label": f"{m} (tuned)", **tuned[m]} for m in PANEL if m in tuned]
                      + [{"name": m, "label": f"{m} (preset)", **start.get(m, {})} for m in PANEL]
                      + [{"name": m, "label": f"{m} (preset)", **start.get(m, {})} for m in PEERS])
    return run_experiment(cfg, quiet=True)["rows"]


def summarize(scenario: str, per_seed: dict[int, dict]) -> tuple[str, list[dict]]:
    seeds = list(per_seed)
    labels = list(per_seed[seeds[0]])
    head = "| model | " + " | ".join(METRICS) + " | Avg.Gap per seed | forgot (UA ≥ 90) |"
    lines = [head, "|---|" + "---:|" * (len(METRICS) + 2)]
    records = []
    for label in labels:
        rec = {"scenario": scenario, "model": label}
        cells = []
        for m in METRICS:
            vals = [per_seed[s][label].get(m) for s in seeds]
            vals = [v for v in vals if v is not None]
            if not vals:
                cells.append("–")
                continue
            mean, std = statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)
            rec[f"{m} mean"], rec[f"{m} std"] = mean, std
            cells.append(f"{mean:.2f} ± {std:.2f}")
        gaps = [per_seed[s][label].get("Avg.Gap") for s in seeds]
        forgot = sum((per_seed[s][label].get("UA") or 0) >= 90 for s in seeds)
        rec["forgot"] = forgot
        gap_cell = "/".join("–" if g is None else f"{g:.2f}" for g in gaps)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {gap_cell} | {forgot}/{len(seeds)} |")
        records.append(rec)
    checks = []
    for s in seeds:
        rows = per_seed[s]
        sal = rows.get("salun (tuned)", rows.get("salun"))
        others = {k: r["Avg.Gap"] for k, r in rows.items() if k not in ("Original", "Retrain")
                  and k.split(" ")[0] not in SALIENCY and r.get("Avg.Gap") is not None}
        best = min(others, key=others.get)
        ok = sal["Avg.Gap"] <= others[best]
        checks.append(f"seed {s}: SalUn (tuned) Avg. Gap {sal['Avg.Gap']:.2f} vs best non-saliency {best} "
                      f"{others[best]:.2f} -> {'<=' if ok else 'NOT <='}")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {c}" for c in checks) + "\n", records


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scenarios", nargs="+", choices=("class", "random"), default=["class", "random"])
    ap.add_argument("--out", default="runs/bench-classifier-presets")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    text, records = [], []
    for scenario in args.scenarios:
        per_seed = {}
        for seed in args.seeds:
            per_seed[seed] = run_scenario(scenario, seed, Path(args.out))
            print(f"{scenario} seed {seed}: done ({time.perf_counter() - started:.0f} s)", flush=True)
        what = "class-wise forgetting of digit 0" if scenario == "class" else "10% random forgetting"
        table, recs = summarize(scenario, per_seed)
        text.append(f"### {what}, digits / small_cnn, seeds {args.seeds}\n\n{table}")
        records += recs
        print(f"\n### {what}\n\n{table}", flush=True)
    footer = (f"Machine: {machine()}; versions: {versions()}; {time.perf_counter() - started:.0f} s; "
              f"tuned values: class {presets.DIGITS_CLASSWISE_TUNED}, random "
              f"{presets.DIGITS_RANDOM_TUNED}.\n")
    print(footer)
    if not args.no_write:
        fields = ["scenario", "model", *(f"{m} {s}" for m in METRICS for s in ("mean", "std")), "forgot"]
        write_table_files("classifier_presets", "Classification demo panel: tuned presets vs digits presets",
                          "\n".join(text) + "\n" + footer, fields, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
