"""Every registered diffusion-unlearning method against a Retrain oracle on the built-in benchmark.

Two scenarios, each a `task: diffusion` experiment run by the engine (unlearnx.experiments), so the
numbers are the ones `unlearnx run` reports:
- canvas style erasure: a tiny text-to-image model (UNet2DConditionModel + CLIPTextModel) on the
  built-in canvas (4 styles x 4 objects, 16x16), the first style erased; UA / IRA / CRA /
  evaluator-FID as UnlearnCanvas defines them (docs/metrics.md);
- digits class-wise forgetting: a class-conditional UNet2DModel on scikit-learn's digits, class 0
  forgotten; UA and retain accuracy (IRA column).
Retrain (trained without the forget data from the same initial weights) is in the same run for every
seed. The issue's target is checked per method: UA >= 95%, IRA and CRA >= 0.9x the original's,
evaluator-FID <= 1.2x the original's, unlearning time <= 10% of Retrain's.

Writes benchmarks/results/diffusion_<scenario>.md / .csv (mean ± std over seeds) and the run
directories under --out (results.json, report.md/html with image grids).

    PYTHONPATH=python python benchmarks/bench_diffusion.py                 # 3 seeds, both scenarios
    PYTHONPATH=python python benchmarks/bench_diffusion.py --small         # 1 seed, short training
    PYTHONPATH=python python benchmarks/bench_diffusion.py --device cuda --train-steps 6000
    PYTHONPATH=python python benchmarks/bench_diffusion.py --scenarios class --methods salun doco \
        --tuned benchmarks/results/tuned_digits_class.yaml    # + rows at `unlearnx tune`'s chosen values
    PYTHONPATH=python python benchmarks/bench_diffusion.py --scenarios class --blocks 32 64   # a 4x wider UNet
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from harness import device_name, print_table, write_table_files  # noqa: E402

import unlearnx as ux  # noqa: E402
from unlearnx.experiments.run import run_experiment  # noqa: E402

# Tiny-model hyper-parameters (the papers' values are for Stable Diffusion; docs/diffusion.md).
BENCH_HPARAMS = {
    "esd_x": {"lr": 1e-3, "ddim_steps": 8, "iterations": 100},
    "esd_u": {"lr": 1e-3, "ddim_steps": 8, "iterations": 100},
    "salun": {"steps": 100},
    "advunlearn": {"iterations": 60, "ddim_steps": 8, "attack_steps": 3},
}
# Sampled without classifier-free guidance: at w = 3 the tiny CPU model's generations are noise to the
# evaluators (Original IRA 31%, chance 25%), at w = 1 they render (IRA 97%); docs/benchmarks.md.
EVAL_GUIDANCE = 1.0


DEFAULT_BLOCKS = (16, 32)


def scenario_config(scenario: str, *, seeds, methods, train_steps: int, device: str, out: Path,
                    blocks=DEFAULT_BLOCKS) -> dict:
    if scenario == "style":
        data = {"name": "canvas", "size": 16, "n_per_pair": 16, "n_styles": 4, "n_objects": 4}
        sc = {"kind": "style"}
    else:
        data = {"name": "digits", "size": 16}
        sc = {"kind": "class", "target": 0}
    entries = []
    for m in methods:
        if m == "retrain" or (scenario == "class" and "class" not in ux.methods.get(m, task="diffusion").model_kinds):
            continue  # Retrain is in every run; text-only methods (prompts, cross-attention) skip the digits
        entries.append({"name": m, **BENCH_HPARAMS.get(m, {})})
    return {
        "task": "diffusion", "name": f"bench diffusion {scenario}", "out_dir": str(out / scenario),
        "seeds": list(seeds), "device": device, "threads": 1,
        "data": data, "scenario": sc,
        "model": {"block_out_channels": list(blocks), "layers_per_block": 1, "text_dim": 32,
                  "prediction_type": "v_prediction"},
        "train": {"steps": train_steps, "lr": 3e-3, "batch_size": 32},
        "evaluator": {"epochs": 15, "n_per_pair": 32},
        "methods": entries,
        "eval": {"n_per_prompt": 6, "sample_steps": 20, "guidance_scale": EVAL_GUIDANCE, "grid_prompts": 4},
    }


def tuned_entries(path: str) -> list[dict]:
    """The `methods:` list written by `unlearnx tune ... --write-presets FILE`, each labelled '<label> (tuned)'."""
    import yaml

    entries = yaml.safe_load(Path(path).read_text())["methods"]
    return [{**e, "label": f"{e.get('label', e['name'])} (tuned)"} for e in entries]


def rows_labels(results: dict) -> list[str]:
    return [label for label in results["rows"] if label not in ("Original", "Retrain")]


def target_check(row: dict, original: dict, retrain: dict) -> str:
    """Which of the issue's bounds the row meets (UA >= 95, IRA/CRA >= 0.9x, FID <= 1.2x, time <= 10%)."""
    misses = []
    if row.get("UA", 0) < 95:
        misses.append("UA")
    for k in ("IRA", "CRA"):
        if k in row and original.get(k) and row[k] < 0.9 * original[k]:
            misses.append(k)
    if row.get("FID-eval") is not None and original.get("FID-eval") and row["FID-eval"] > 1.2 * original["FID-eval"]:
        misses.append("FID")
    if row.get("RTE-s") is not None and retrain.get("RTE-s") and row["RTE-s"] > 0.1 * retrain["RTE-s"]:
        misses.append("time")
    return "met" if not misses else "misses " + ", ".join(misses)


def table(results: dict) -> tuple[list[str], list[list]]:
    rows, std = results["rows"], results.get("std", {})
    orig, ret = rows["Original"], rows["Retrain"]
    cols = [c for c in ("UA", "IRA", "CRA", "FID-eval", "Avg.Gap", "RTE-s") if c in orig or c in ret]
    header = ["model", *cols, "IRA/orig", "CRA/orig", "FID/orig", "time/Retrain", "target"]
    out = []
    for label, row in rows.items():
        cells = [label]
        for c in cols:
            v, s = row.get(c), std.get(label, {}).get(c)
            cells.append("" if v is None else (f"{v:.2f} ± {s:.2f}" if s else f"{v:.2f}"))
        for k in ("IRA", "CRA", "FID-eval"):
            cells.append(f"{row[k] / orig[k]:.2f}x" if row.get(k) is not None and orig.get(k) else "")
        cells.append(f"{row['RTE-s'] / ret['RTE-s']:.1%}" if row.get("RTE-s") and ret.get("RTE-s") else "")
        cells.append("" if label in ("Original", "Retrain") else target_check(row, orig, ret))
        out.append(cells)
    return header, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="1 seed, 400 training steps (minutes on a CPU)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--scenarios", nargs="+", choices=("style", "class"), default=["style", "class"])
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered diffusion method")
    ap.add_argument("--train-steps", type=int, default=None, help="original / Retrain optimizer steps")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--out", default="runs/bench-diffusion")
    ap.add_argument("--blocks", type=int, nargs=2, default=list(DEFAULT_BLOCKS), metavar=("C1", "C2"),
                    help="UNet block widths (default 16 32); other widths write diffusion_<scenario>_blocks<C1>-<C2>.*")
    ap.add_argument("--tuned", default=None, help="methods list of `unlearnx tune --write-presets` (tuned on other "
                    "concepts of another seed): adds '<label> (tuned)' rows; results go to diffusion_<scenario>_tuned.*")
    args = ap.parse_args(argv)
    seeds = args.seeds or ([0] if args.small else [0, 1, 2])
    steps = args.train_steps or (400 if args.small else 1200)
    methods = args.methods or list(ux.methods.available("diffusion"))
    for scenario in args.scenarios:
        cfg = scenario_config(scenario, seeds=seeds, methods=methods, train_steps=steps, device=args.device,
                              out=Path(args.out), blocks=args.blocks)
        size = "" if tuple(args.blocks) == DEFAULT_BLOCKS else f"_blocks{args.blocks[0]}-{args.blocks[1]}"
        if args.tuned:
            cfg["methods"] = cfg["methods"] + tuned_entries(args.tuned)
        res = run_experiment(cfg, quiet=False)
        header, rows = table(res)
        dev = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
        title = f"Diffusion unlearning: {scenario} erasure" + (f" (UNet blocks {args.blocks})" if size else "")
        md = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
        md += "".join("| " + " | ".join(str(c) for c in r) + " |\n" for r in rows)
        md += (f"\n{res['scenario']['data']}, target {res['scenario']['target']}, seeds {seeds}, {steps} training "
               f"steps; machine: {device_name(dev)}; torch {torch.__version__}; evaluators' held-out accuracy "
               f"{res['evaluators']}\n")
        per_seed = res.get("per_seed_metrics", {})
        if len(per_seed) > 1:  # the target per seed, each method against that seed's Original and Retrain
            md += "\nTarget met per seed: " + "; ".join(
                f"{label} {sum(target_check(m[label], m['Original'], m['Retrain']) == 'met' for m in per_seed.values())}"
                f"/{len(per_seed)}" for label in rows_labels(res)) + "\n"
        write_table_files(f"diffusion_{scenario}{size}" + ("_tuned" if args.tuned else ""), title, md, header,
                          [dict(zip(header, r)) for r in rows])
        print(f"\n{title}")
        print_table(header, rows)


if __name__ == "__main__":
    main()
