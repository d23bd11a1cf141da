"""Concept inversion alone against every model of the alias robustness benchmark (issue 21).

`bench_diffusion_robustness.py --aliases 2` runs every attack and re-evaluates every model; this
reruns only `concept_inversion` (at its default step, relative to the text encoder's embedding scale)
on the models that bench saved, so the column can be refreshed without the hour-long full run:

    PYTHONPATH=python python benchmarks/bench_diffusion_inversion.py --out runs/bench-diffusion [--seeds 0 1 2]

Needs the bench's run directory (<out>/style-aliases2; a missing model is trained first, as the bench
would). Writes benchmarks/results/diffusion_inversion_aliases.json: ASR per model and seed.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_diffusion_robustness as br  # noqa: E402  (same folder)

from unlearnx.diffusion import attacks as A  # noqa: E402
from unlearnx.experiments import get_task, validate_config  # noqa: E402
from unlearnx.experiments.run import Run, machine, versions  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench-diffusion", help="bench_diffusion_robustness.py's --out")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--merge", action="store_true", help="add these seeds to the results file's other seeds "
                    "(e.g. a seed whose models the bench has not written yet when the others are measured)")
    args = ap.parse_args(argv)
    res = Path(__file__).resolve().parent / "results" / "diffusion_inversion_aliases.json"
    earlier = json.loads(res.read_text()) if args.merge and res.is_file() else {"seeds": [], "asr": {}, "seconds": 0.0}
    torch.set_num_threads(1)
    methods = [*br.METHODS, "fmn", "concept_ablation", "erasediff", "scissorhands", "selective_amnesia"]
    cfg = validate_config(br.robustness_config(seeds=args.seeds, methods=methods, train_steps=1600, device="cpu",
                                               out=Path(args.out), aliases=2))
    task = get_task("diffusion")
    run = Run(cfg, Path(cfg["out_dir"]), quiet=True, eval_only=False, echo=lambda m: None, progress=False)
    out = {name: {int(k): v for k, v in per.items()} for name, per in earlier["asr"].items()}
    t0 = time.time()
    for seed in args.seeds:
        setup = task.setup(run, seed)
        orig, orec = task.original(run, setup)
        models = {"Retrain": task.oracle(run, setup)[0], "Original": orig}
        for e in cfg["_methods"]:
            models[e["label"]] = task.unlearn(run, setup, e, orig, orec)[0]
        ev, lab = setup.evaluators["style"], setup.data.styles.index(setup.target)
        kw = {"steps": cfg["eval"]["sample_steps"], "guidance_scale": cfg["eval"]["guidance_scale"]}
        for name, m in models.items():
            r = A.run_attack("concept_inversion", m, ev, lab, target_images=setup.forget.images,
                             target_conditions=setup.forget.prompts, concept_word=setup.target, seeds=(seed,),
                             sample_kw=kw, steps=100)
            out.setdefault(name, {})[seed] = r.asr
            print(f"seed {seed} {name}: concept_inversion ASR {r.asr:.1f} (lr {r.log['lr']:.2g}; "
                  f"{time.time() - t0:.0f} s)", flush=True)
    seeds = sorted(set(earlier["seeds"]) | set(args.seeds))
    res.write_text(json.dumps({"seeds": seeds, "asr": out, "seconds": earlier["seconds"] + time.time() - t0,
                               "versions": versions(), "machine": machine()}, indent=1))
    print(f"wrote {res}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
