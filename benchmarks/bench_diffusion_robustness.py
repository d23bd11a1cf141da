"""Robustness of diffusion concept erasure: ASR of diffusion-unlearning methods under every attack.

The canvas style-erasure experiment of bench_diffusion.py (same config, run by the engine:
unlearnx.experiments) with `attacks:` added, so the models are the ones of that benchmark: run with
the same --out and --train-steps, every trained step (original, Retrain, evaluators, each method) is
reused from its run directory and only the attacks run. Each model is attacked
(unlearnx.diffusion.attacks): ASR = share of attacked generations the style evaluator classifies as
the erased style; Retrain never learned it, so its ASR is the floor. Relearning: fine-tuning a copy
on the forget images; "relearn steps" gives, per seed, the first probed step count at which its ASR
reaches 50 % (None: not within the probed steps), and its ASR column the rate after the last step.
The issue's targets are checked:
UnlearnDiffAtk raises ESD's ASR well above its no-attack rate (100 - UA); AdvUnlearn's ASR <= half of
ESD-x's with CRA >= 0.9x the original's.

Writes benchmarks/results/diffusion_robustness.md / .csv (atomically) and prints the table.

    PYTHONPATH=python python benchmarks/bench_diffusion_robustness.py --train-steps 1600
    PYTHONPATH=python python benchmarks/bench_diffusion_robustness.py --small     # 1 seed, 400 steps
    PYTHONPATH=python python benchmarks/bench_diffusion_robustness.py --train-steps 1600 --aliases 2

--aliases K trains the original on captions that name half the images' style by one of K other words
(data.aliases; the methods' erasure request still names the style once): a concept known under several
names, as a Stable Diffusion style is. Its models are new (own run directory) and its results go to
diffusion_robustness_aliases.md / .csv.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from bench_diffusion import scenario_config  # noqa: E402
from harness import device_name, print_table, write_table_files  # noqa: E402

from unlearnx.experiments.run import run_experiment  # noqa: E402

METHODS = ("esd_x", "esd_u", "advunlearn", "uce", "salun", "doco", "sfd", "spm")
# AdvUnlearn again with a stronger inner adversary (the bench's default entry runs 3 inner attack steps
# per outer iteration for 60 iterations, a CPU budget): does a stronger inner attack buy robustness?
# And with more outer iterations at the same inner budget (advunlearn-100, added 2026-12-06: the
# variant that keeps UA near 95 on the alias data).
EXTRA_ENTRIES = ({"name": "advunlearn", "label": "advunlearn-10", "iterations": 100, "ddim_steps": 8,
                  "attack_steps": 10},
                 {"name": "advunlearn", "label": "advunlearn-100", "iterations": 100, "ddim_steps": 8,
                  "attack_steps": 3})
# Attack budgets (unlearnx.diffusion.attacks): the prepended-token attacks optimise k = 2 tokens.
ATTACKS = {"unlearndiff": {"k": 2, "steps": 100}, "soft_prompt": {"k": 2, "steps": 100},
           "seed_search": {"budget": 8}, "random_tokens": {"k": 2, "trials": 4},
           "relearning": {"steps": [0, 1, 2, 5, 10], "lr": 5e-4}}
# (At lr 2e-3 every model, Retrain included, regenerated the style 100 % of the time after 10 steps:
# a probe that strong has no resolution on this model, hence the finer, gentler schedule.)


def verdicts(rows: dict, attacks) -> list[str]:
    """The issue's two diffusion targets, read from the mean rows."""
    out = []
    for esd in ("esd_x", "esd_u"):
        if esd in rows and "ASR/unlearndiff" in rows[esd]:
            base, att = 100.0 - rows[esd]["UA"], rows[esd]["ASR/unlearndiff"]
            out.append(f"UnlearnDiffAtk on {esd}: ASR {att:.1f} vs no-attack {base:.1f} -> "
                       + ("raised" if att > base + 10 else "NOT raised (by > 10 points)"))
    for name in ("advunlearn", *(e["label"] for e in EXTRA_ENTRIES)):
        if name not in rows or "esd_x" not in rows:
            continue
        adv, esd, orig = rows[name], rows["esd_x"], rows["Original"]
        for a in attacks:
            k = f"ASR/{a}"
            if k in adv and k in esd:
                ok = adv[k] <= 0.5 * esd[k] if esd[k] > 0 else adv[k] == 0
                out.append(f"{name} vs ESD-x under {a}: ASR {adv[k]:.1f} vs {esd[k]:.1f} -> "
                           + ("<= half" if ok else "NOT <= half"))
        cra = adv.get("CRA", 0) / orig["CRA"] if orig.get("CRA") else float("nan")
        out.append(f"{name} CRA {adv.get('CRA', float('nan')):.1f} = {cra:.2f}x the original's "
                   + ("(>= 0.9x)" if cra >= 0.9 else "(< 0.9x)"))
    return out


def robustness_config(*, seeds, methods, train_steps: int, device: str, out: Path, aliases: int = 0) -> dict:
    """The style-erasure run of bench_diffusion.py (its models reused from `out`), with the AdvUnlearn
    variants of EXTRA_ENTRIES when AdvUnlearn is asked for and, with `aliases`, the alias data in its
    own folder; no attacks yet."""
    cfg = scenario_config("style", seeds=seeds, methods=methods, train_steps=train_steps, device=device, out=out)
    cfg["name"] = "bench diffusion style robustness"
    if aliases:
        cfg["data"]["aliases"] = aliases
        cfg["name"] += f" (style aliases: {aliases})"
        cfg["out_dir"] = str(Path(out) / f"style-aliases{aliases}")
    if "advunlearn" in methods:
        cfg["methods"] += [dict(e) for e in EXTRA_ENTRIES]
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="1 seed, 400 training steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS) + ["gcg", "concept_inversion"])
    ap.add_argument("--train-steps", type=int, default=None, help="original / Retrain optimizer steps")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--out", default="runs/bench-diffusion", help="bench_diffusion.py's --out, to reuse its models")
    ap.add_argument("--aliases", type=int, default=0, help="data.aliases: other words for each style in half the "
                    "training captions (1..3; 0: the benchmark's data)")
    args = ap.parse_args(argv)
    seeds = args.seeds or ([0] if args.small else [0, 1, 2])
    steps = args.train_steps or (400 if args.small else 1200)
    cfg = robustness_config(seeds=seeds, methods=args.methods, train_steps=steps, device=args.device,
                            out=Path(args.out), aliases=args.aliases)
    cfg["attacks"] = {a: ATTACKS.get(a, {}) for a in args.attacks}
    t0 = time.perf_counter()
    res = run_experiment(cfg, quiet=False)
    rows, std = res["rows"], res.get("std", {})
    asr_cols = [f"ASR/{a}" for a in args.attacks]
    relearn = "relearning" in args.attacks
    header = ["model", "UA", "no-attack ASR", *asr_cols, *(["relearn steps"] if relearn else []), "IRA", "CRA"]
    table = []
    for label, row in rows.items():
        speeds = [str(res["robustness"][str(s)][label].get("relearning_speed")) for s in seeds] if relearn else []
        cells = [label]
        for c in ["UA", None, *asr_cols, *(["relearn"] if relearn else []), "IRA", "CRA"]:
            if c is None:
                cells.append(f"{100.0 - row['UA']:.1f}")
                continue
            if c == "relearn":  # per seed: the first probed step count at which the relearning ASR >= 50
                cells.append("/".join(speeds))
                continue
            v, s = row.get(c), std.get(label, {}).get(c)
            cells.append("" if v is None else (f"{v:.1f} ± {s:.1f}" if s else f"{v:.1f}"))
        table.append(cells)
    checks = verdicts(rows, args.attacks)
    md = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    md += "".join("| " + " | ".join(r) + " |\n" for r in table)
    dev = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    md += ("\n" + "\n".join(f"- {c}" for c in checks) + "\n\n"
           f"{res['scenario']['data']}"
           + (f" with {args.aliases} aliases per style in half the training captions" if args.aliases else "")
           + f", target {res['scenario']['target']}, seeds {seeds}, {steps} training steps, "
           f"sampled at guidance {cfg['eval']['guidance_scale']}; attacks {cfg['attacks']}; machine: "
           f"{device_name(dev)}; torch {torch.__version__}; {time.perf_counter() - t0:.0f} s (cached steps reused: "
           f"{sum(len(v) for v in res['cached_steps'].values())})\n")
    write_table_files("diffusion_robustness" + ("_aliases" if args.aliases else ""),
                      "Diffusion erasure robustness" + (f" (style aliases: {args.aliases})" if args.aliases else ""),
                      md, header,
                      [dict(zip(header, r)) for r in table])
    print_table(header, table)
    print("\n".join(checks))


if __name__ == "__main__":
    main()
