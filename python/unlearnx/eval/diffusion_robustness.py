"""Robustness of concept erasure: UA and the attack success rate (ASR) of every attack, per model.

    table = robustness_table({"original": dm, "esd_x": esd, "retrain": rt}, evaluator, target_label=1,
                             target_images=forget.images, target_conditions=forget.prompts, forget=forget,
                             attacks={"unlearndiff": {"k": 3, "steps": 100}, "seed_search": {"budget": 8}},
                             seeds=(0, 1, 2), concept_word="ocean")

Retrain's ASR is the floor (a model that never learned the concept); UA = 100 − ASR without attack.
Relearning speed = the first fine-tuning step count at which the relearning ASR reaches `relearn_level`
(percent; None if never within the probed steps).
"""
from __future__ import annotations

import time

from unlearnx.diffusion.attacks import ATTACKS, attack_applies, run_attack

__all__ = ["robustness_table", "robustness_markdown"]


def robustness_table(models: dict, evaluator, target_label: int, *, target_images, target_conditions, forget=None,
                     attacks=None, seeds=(0,), concept_word=None, sample_kw=None, relearn_level: float = 50.0,
                     progress=None) -> dict:
    """Per model label: {"ua", "asr": {attack: percent (mean over seeds)}, "asr_std", "relearning_curve",
    "relearning_speed"}; attacks: {name: budget kwargs} (default: every attack that applies to the
    model kind with its default budget). Each attack runs once per seed (the seeds are passed on).
    progress: optional callable receiving one line per finished (model, attack)."""
    if not isinstance(models, dict) or not models:
        raise ValueError("models must be a non-empty dict {label: DiffusionModel}")
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise ValueError("seeds must be non-empty")
    out = {}
    for label, model in models.items():
        if attacks is None:
            names = [n for n in ATTACKS if attack_applies(n, model.kind)
                     and not (n == "relearning" and forget is None)
                     and not (n == "concept_inversion" and concept_word is None)]
            plan = {n: {} for n in names}
        else:
            plan = {n: dict(b or {}) for n, b in attacks.items()}
        plan.setdefault("none", {})
        row = {"asr": {}, "asr_std": {}}
        for name, budget in plan.items():
            vals, t0 = [], time.perf_counter()
            for s in seeds:
                res = run_attack(name, model, evaluator, target_label, target_images=target_images,
                                 target_conditions=target_conditions, forget=forget, concept_word=concept_word,
                                 seeds=(s,), sample_kw=sample_kw, **budget)
                vals.append(res.asr)
                if name == "relearning":
                    row.setdefault("relearning_curves", []).append(res.curve)
            mean = sum(vals) / len(vals)
            row["asr"][name] = mean
            row["asr_std"][name] = (sum((v - mean) ** 2 for v in vals) / max(1, len(vals) - 1)) ** 0.5
            if progress is not None:
                progress(f"{label}: {name} ASR {mean:.1f} ({time.perf_counter() - t0:.0f} s)")
        row["ua"] = 100.0 - row["asr"]["none"]
        if "relearning_curves" in row:
            curves = row["relearning_curves"]
            mean_curve = [(st, sum(c[i][1] for c in curves) / len(curves)) for i, (st, _) in enumerate(curves[0])]
            row["relearning_curve"] = mean_curve
            row["relearning_speed"] = next((st for st, a in mean_curve if a >= relearn_level), None)
            del row["relearning_curves"]
        out[label] = row
    return out


def robustness_markdown(table: dict) -> str:
    """The table as Markdown: one row per model, UA then ASR per attack (mean ± std over seeds)."""
    attacks = []
    for row in table.values():
        attacks += [a for a in row["asr"] if a not in attacks]
    lines = ["| model | UA | " + " | ".join(f"ASR {a}" for a in attacks) + " | relearn speed |",
             "|---" * (len(attacks) + 3) + "|"]
    for label, row in table.items():
        cells = [f"{row['asr'][a]:.1f} ± {row['asr_std'][a]:.1f}" if a in row["asr"] else "-" for a in attacks]
        lines.append(f"| {label} | {row['ua']:.1f} | " + " | ".join(cells) + f" | {row.get('relearning_speed', '-')} |")
    return "\n".join(lines) + "\n"
