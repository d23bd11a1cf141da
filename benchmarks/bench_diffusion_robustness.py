"""Robustness of diffusion concept erasure: ASR of every registered diffusion method under every attack.

Built-in canvas (styles x objects), one text-conditional tiny model trained in the run, a style
evaluator and an object evaluator trained in the run; the target style is erased by every method
(Retrain in the same run: its ASR is the floor); each model is attacked (unlearnx.diffusion.attacks)
and evaluated with eval.diffusion_robustness.robustness_table (UA, ASR per attack, relearning speed)
plus CRA (object accuracy on the retained styles' generations, eval.diffusion.canvas_metrics).
Writes benchmarks/results/diffusion_robustness.md / .csv (atomically) and prints the table.

    PYTHONPATH=python python benchmarks/bench_diffusion_robustness.py            # full: 3 seeds, 16x16
    PYTHONPATH=python python benchmarks/bench_diffusion_robustness.py --small    # minutes on a CPU
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import device_name, write_table_files  # noqa: E402

import unlearnx as ux  # noqa: E402
from unlearnx.data.canvas import canvas_dataset  # noqa: E402
from unlearnx.diffusion import tiny_text_model, train_diffusion  # noqa: E402
from unlearnx.eval.diffusion import canvas_metrics, train_evaluator  # noqa: E402
from unlearnx.eval.diffusion_robustness import robustness_markdown, robustness_table  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="8x8, 3x3 canvas, short training, 1 seed, 3 methods")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--target", default="ocean")
    args = ap.parse_args(argv)
    small = args.small
    size, n_sty, n_obj, n_pair = (8, 3, 3, 8) if small else (16, 4, 4, 20)
    train_steps = 400 if small else 2000
    seeds = args.seeds or ([0] if small else [0, 1, 2])
    methods = args.methods or (["retrain", "esd_x", "advunlearn"] if small
                               else ["retrain", *[m for m in ux.methods.available("diffusion") if m != "retrain"]])
    sample_kw = {"steps": 10 if small else 20, "guidance_scale": 3.0}
    it = 30 if small else 150
    hparams = {
        "retrain": {"steps": train_steps, "lr": 2e-3, "batch_size": 16, "warmup": 20},
        "esd_x": {"iterations": it, "ddim_steps": 10 if small else 20},
        "esd_u": {"iterations": it, "ddim_steps": 10 if small else 20},
        "advunlearn": {"iterations": it, "ddim_steps": 10 if small else 20, "attack_steps": 3 if small else 5},
    }
    attacks = {"unlearndiff": {"k": 2, "steps": 30 if small else 100},
               "soft_prompt": {"k": 2, "steps": 30 if small else 100},
               "seed_search": {"budget": 4 if small else 8},
               "random_tokens": {"k": 2, "trials": 2 if small else 4},
               "relearning": {"steps": (0, 10, 30) if small else (0, 10, 30, 100), "lr": 2e-3}}
    if not small:
        attacks["gcg"] = {"k": 2, "steps": 20}
        attacks["concept_inversion"] = {"steps": 100}
    t0 = time.perf_counter()
    data = canvas_dataset(n_per_pair=n_pair, size=size, n_styles=n_sty, n_objects=n_obj, seed=0)
    forget, retain = data.split_style(args.target)
    torch.manual_seed(0)
    dm = tiny_text_model(data.prompts, image_size=size, block_out_channels=(16, 32) if small else (32, 64),
                         max_length=12)
    train_diffusion(dm, data, steps=train_steps, lr=2e-3, batch_size=16, warmup=20, seed=0)
    style_clf, s_acc = train_evaluator(data.style_labeled(), data.style_labeled(), num_classes=n_sty, in_channels=3)
    object_clf, o_acc = train_evaluator(data.object_labeled(), data.object_labeled(), num_classes=n_obj,
                                        in_channels=3)
    print(f"trained model + evaluators in {time.perf_counter() - t0:.0f}s (style acc {s_acc:.2f}, object acc {o_acc:.2f})",
          flush=True)
    models = {"original": dm}
    for m in methods:
        t = time.perf_counter()
        models[m] = ux.unlearn(copy.deepcopy(dm), m, forget=forget, retain=retain, seed=0, progress=False,
                               **hparams.get(m, {})).model
        print(f"{m}: {time.perf_counter() - t:.0f}s", flush=True)
    target_label = data.styles.index(args.target)
    table = robustness_table(models, style_clf, target_label, target_images=forget.images,
                             target_conditions=forget.prompts, forget=forget, attacks=attacks, seeds=seeds,
                             concept_word=args.target, sample_kw=sample_kw)
    rows = []
    for label, model in models.items():
        cm = canvas_metrics(model, style_clf=style_clf, object_clf=object_clf, styles=data.styles,
                            objects=data.objects, target=args.target, n_per_prompt=4, seed=0, **sample_kw)
        table[label]["cra"], table[label]["ira"] = cm["cra"], cm["ira"]
        rows.append({"model": label, "ua": table[label]["ua"], "ira": cm["ira"], "cra": cm["cra"],
                     **{f"asr_{a}": v for a, v in table[label]["asr"].items()},
                     "relearning_speed": table[label].get("relearning_speed")})
    md = robustness_markdown(table)
    md += "\n| model | IRA | CRA |\n|---|---|---|\n" + "".join(
        f"| {r['model']} | {r['ira']:.1f} | {r['cra']:.1f} |\n" for r in rows)
    md += (f"\nmachine: {device_name('cpu')}; torch {torch.__version__}; {'small' if small else 'full'} run; "
           f"seeds {seeds}; canvas {n_sty}x{n_obj} at {size}x{size}; {time.perf_counter() - t0:.0f}s total\n")
    print(md)
    write_table_files("diffusion_robustness", "Diffusion erasure robustness", md, list(rows[0]), rows)


if __name__ == "__main__":
    main()
