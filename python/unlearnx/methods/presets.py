"""Hyper-parameter overrides measured on scikit-learn's digits with small_cnn (15k parameters), and
the values tuned for the quick built-in LLM benchmark (`LLM_QUICK_TUNED`) and for the diffusion demo
(`DIFFUSION_DEMO_TUNED`).

The papers' defaults were chosen for ResNets on CIFAR-10/100 with thousands of forget images; on
digits (a 145-image forget set at 10 % random forgetting, 1,437 training images) several of them
barely move the model or destroy it. These overrides are what the tests and
benchmarks/bench_methods_classification.py use; each was measured, the reason is given per entry.
"""
from __future__ import annotations

__all__ = ["DIGITS_HPARAMS", "DIGITS_CLASSWISE_HPARAMS", "DIGITS_CLASSWISE_TUNED", "DIGITS_RANDOM_TUNED", "LLM_QUICK_TUNED", "LLM_DEMO_TUNED", "DIFFUSION_DEMO_TUNED"]

DIGITS_HPARAMS: dict[str, dict] = {
    # The reference lrs (GA 1e-4, Boundary 1e-5, SCRUB 5e-4, Bad teacher 1e-4, LAF 5e-5/1e-4) barely
    # move a model after the few steps a 145-image forget set gives; these forget without collapse.
    "ga": {"lr": 0.02},
    "l1_sparse": {"gamma": 0.003, "lr": 0.03},
    "boundary_shrink": {"lr": 0.03, "epochs": 20},
    "boundary_expand": {"lr": 0.01},
    "scrub": {"lr": 0.002},
    "bad_teacher": {"lr": 0.003, "epochs": 2},
    "laf": {"lr": 5e-4, "lr_align": 1e-3, "epochs": 10, "vae_epochs": 10},
    # SSD/LFSSD: with α 10 (the paper's) SSD dampens 13 % of the CNN's weights on a class-wise request
    # and costs ~7 points of RA on one seed; α 30 keeps RA within 1.5 points and forgets the class on
    # 4 of 5 seeds (seed 1 dampens only 101 weights).
    "ssd": {"alpha": 30.0},
    "lfssd": {"alpha": 3.0},
    # UNSIR: the reference sizes (20 copies of a 256-image noise batch, batch 256, one repair epoch)
    # are for 5,000 images per class; on digits the noise outnumbers D_r^sub 20:1 and one epoch is 1-2
    # steps, so the model collapses (RA 12 %). 128 noise images per class, batch 32, half of D_r and five
    # repair epochs at 1e-3 keep the paper's impair lr 0.02: class 0 forgotten (UA 100) at RA 98.
    "unsir": {"noise_batch": 64, "noise_copies": 2, "batch_size": 32, "retain_fraction": 0.5,
              "lr_repair": 1e-3, "repair_epochs": 5},
    # JiT: no setting forgets a digits class: lr 1e-4 leaves the CNN unchanged, from lr 2e-3 (batch 1)
    # the retain loss rises with the forget loss and from 3e-3 RA collapses before UA moves (class 0:
    # UA 18 / RA 51). lr 1e-3 with σ 0.1 smooths the forget samples at RA 99.3 (UA stays 0).
    "jit": {"lr": 1e-3, "noise_std": 0.1},
}

# Class-wise forgetting only: FF (defaults α 1e-6, σ_max 1e-3) needs σ_max ~0.1 and IU (α 100) α ~300
# to forget a class on digits, and both settings then destroy 10 %-random forgetting, so the
# random-forgetting runs keep their defaults.
DIGITS_CLASSWISE_HPARAMS: dict[str, dict] = {
    **DIGITS_HPARAMS,
    "fisher": {"alpha": 1e-4, "max_std": 0.1},
    "influence": {"alpha": 300.0},
}

# The values `unlearnx tune` chose for the classification demo's scenario (digits, small_cnn, 20
# epochs, class-wise forgetting; docs/tuning.md), used by `unlearnx demo` for class-wise forgetting:
#   unlearnx tune configs/tune/digits_classwise.yaml --trials 8
# 8 TPE trials per method (seed 0; trial 0 = the DIGITS_CLASSWISE_HPARAMS / default values) on two
# tuning scenarios carved from the reported D_r (forget digit 1, forget digit 2; tuning test set 20%
# of D_r; the reported digit-0 forget set and the test set are never seen): objective the mean Avg.
# Gap to the tuning Retrains with RA and TA within 2 points of the tuning originals in both; rounded
# to 4 significant digits. 2026-12-04, 2-core shared x86-64 CPU (load 3-11), 1 torch thread, 566 s.
# Mean tuning Avg. Gap chosen (start): FT 43.0 (49.8), GA 26.6 (46.7, start infeasible: RA -88),
# RL 0.19 (= start), l1-sparse 15.3 (33.6), SalUn 0.53 (1.30), SSD 0.23 (0.29). FT does not forget a
# class within the budget at any searched setting. docs/benchmarks.md: the reported scenario.
DIGITS_CLASSWISE_TUNED: dict[str, dict] = {
    "ft": {"lr": 0.07911, "epochs": 19},
    "ga": {"lr": 0.008807, "epochs": 2},
    "rl": {"lr": 0.013, "epochs": 10},
    "l1_sparse": {"gamma": 0.002174, "lr": 0.03556, "epochs": 19},
    "salun": {"lr": 0.02112, "epochs": 6, "mask_ratio": 0.3063},
    "ssd": {"alpha": 31.95, "lam": 0.1315},
}

# The values `unlearnx tune` chose for 10% random forgetting in the classification demo (`unlearnx demo
# --random`: digits, small_cnn, 20 epochs):
#   unlearnx tune configs/tune/digits_random.yaml          (20 trials per method, tune.scenarios 3)
# 20 TPE trials per method (seed 0; trial 0 = the DIGITS_HPARAMS / default values) on three random 10%
# draws from a tuning training set carved out of the reported D_r (tuning test set 20% of D_r; the
# reported forget set and the test set are never seen): objective the mean Avg. Gap to the tuning
# Retrains with RA and TA within 2 points of the tuning originals in all three; rounded to 4
# significant digits. 2026-12-06, 2-core shared x86-64 CPU, 1 torch thread, 333 s.
# Mean tuning Avg. Gap chosen (start): FT 1.62 (1.93), GA 1.59 (1.67), RL 1.13 (5.46), l1-sparse 0.81
# (= start), SalUn 1.14 (2.71), SSD 0.95 (1.99). docs/benchmarks.md: the reported scenario, seeds 0-2.
DIGITS_RANDOM_TUNED: dict[str, dict] = {
    "ft": {"lr": 0.09682, "epochs": 18},
    "ga": {"lr": 0.01407, "epochs": 7},
    "rl": {"lr": 0.00209, "epochs": 2},
    "l1_sparse": {"gamma": 0.003, "lr": 0.03, "epochs": 10},
    "salun": {"lr": 0.003725, "epochs": 2, "mask_ratio": 0.2899},
    "ssd": {"alpha": 7.502, "lam": 6.075},
}

# The values `unlearnx tune` chose for the quick LLM demo (`unlearnx demo --task llm --quick`,
# `llm_demo_config(quick=True)`: 12 fictitious authors, forget10 = 2 authors = 40 QA, tiny Llama
# hidden 64 / 2 layers), used by that demo for these methods (the full-size demo has its own,
# LLM_DEMO_TUNED below). Found with
#   unlearnx tune configs/tune/llm_quick.yaml          (40 trials, tune.scenarios 3)
# 40 TPE trials per method (seed 0; trial 0 = the METHOD_HPARAMS start values; search spaces in the
# config), each scored on three tuning runs (seeds 0, 1, 2) of the first 10 authors (the reported
# forget10 authors are never trained on, unlearned or evaluated) that forget their last 2 authors
# (40 QA, the reported forget set's size) and score utility on tuning retain QA disjoint from the
# reported utility subset. Objective: the geometric mean forget quality (KS p-value vs each seed's
# tuning Retrain) subject to model utility >= 0.9x the tuning target's on every seed; rounded to 4
# significant digits; batch 8 (BASE_HPARAMS). 2026-12-05, 2-core shared x86-64 CPU, 1 torch
# thread, 1252 s for the six studies.
# Per entry: the chosen trial's tuning objective (geometric mean FQ over the 3 tuning seeds / lowest
# MU÷target) and the start values' FQ. docs/benchmarks.md ("Tuned presets for the quick LLM demo")
# measures them on the reported forget10, seeds 0-2, and the single-seed tunings that transferred worse.
LLM_QUICK_TUNED: dict[str, dict] = {
    # trial #35: FQ 4.2e-6 / 0.95x (start 4.3e-5, below 0.9x): no GA trial forgets within the budget on
    # all three seeds (every trial with FQ >= 0.01 dropped one seed's utility to 0).
    "ga": {"lr": 0.0002576, "epochs": 9},
    # trial #38: FQ 1.3e-4 / 0.96x (start 8.9e-6, below 0.9x)
    "graddiff": {"lr": 0.0007382, "epochs": 10, "alpha": 4.441},
    # trial #21: FQ 0.19 / 0.91x (start 3.1e-5, below 0.9x)
    "npo": {"lr": 0.002396, "epochs": 10, "beta": 0.1671, "alpha": 0.6916},
    # trial #36: FQ 0.10 / 0.98x (start 3.0e-5)
    "simnpo": {"lr": 0.001519, "epochs": 8, "beta": 0.7779, "gamma": 0.2848},
    # trial #34: FQ 0.064 / 0.98x (start 1.6e-3)
    "rmu": {"lr": 0.02835, "epochs": 38, "alpha": 3.228, "steering_scale": 1.205},
    # trial #18: FQ 2.5e-6 / 0.90x (start 4.6e-7, below 0.9x): no UNDIAL trial reached FQ 0.001
    "undial": {"lr": 0.005765, "epochs": 2, "beta": 3.334},
    # Second study (same config and tuning runs, 2026-12-05, 977 s for these four):
    # trial #13: FQ 8.1e-7 / 0.95x (start 1.6e-6, below 0.9x): no FLAT trial within the budget forgets
    "flat": {"lr": 0.0003708, "epochs": 4, "divergence": "tv"},
    # trial #31: FQ 0.26 / 0.91x (start 1.1e-7): NPO at its tuned beta / alpha on the top 66% of weights
    "wagle": {"lr": 0.004259, "epochs": 6, "fraction": 0.6571, "base": "npo", "beta": 0.1671, "alpha": 0.6916},
    # trial #23: FQ 3.0e-5 / 0.91x (start 2.3e-6)
    "idknll": {"lr": 0.001289, "epochs": 9, "alpha": 8.457},
    # trial #37: FQ 2.3e-6 / 0.97x (start 9.4e-7): forget quality is not what it moves (docs/benchmarks.md)
    "concept_poison": {"lr": 0.001078, "epochs": 6, "alpha": 0.3262, "labels": "targeted"},
    # Third study (`--methods idkdpo wga`, same config and tuning runs, 2026-12-06, 1642 s with other jobs):
    # trial #17: FQ 0.11 / 0.93x (start 4.0e-7)
    "idkdpo": {"lr": 0.001862, "epochs": 10, "beta": 0.07776, "alpha": 4.806},
    # trial #22: FQ 0.060 / 0.93x (start 7.0e-7)
    "wga": {"lr": 0.0007224, "epochs": 9, "beta": 0.4962, "alpha": 1.373},
}

# The values `unlearnx tune` chose for the full-size LLM demo (`unlearnx demo --task llm`,
# `llm_demo_config()`: 20 fictitious authors, forget10 = 2 authors = 40 QA, 60-QA utility subset,
# 48-token answers, tiny Llama hidden 64 / 2 layers), used by that demo for its default methods:
#   unlearnx tune configs/tune/llm_demo.yaml          (30 trials, tune.scenarios 3)
# 30 TPE trials per method (seed 0; trial 0 = the METHOD_HPARAMS start values), each scored on three
# tuning runs (seeds 0, 1, 2) of the first 18 authors forgetting their last 2 (the reported forget10
# authors are never trained on, unlearned or evaluated), utility on tuning retain QA disjoint from the
# reported utility subset. Objective: the geometric mean forget quality subject to model utility >=
# 0.9x the tuning target's on every seed; rounded to 4 significant digits; batch 8 (BASE_HPARAMS).
# 2026-12-06, 2-core shared x86-64 CPU, 1 torch thread, 897 s. Per entry: chosen trial's tuning
# objective (geometric mean FQ / lowest MU÷target) and the start values' FQ.
LLM_DEMO_TUNED: dict[str, dict] = {
    # trial #28: FQ 0.032 / 0.94x (start 0.032 / 0.93x: GA's start was already the best found)
    "ga": {"lr": 0.0005653, "epochs": 5},
    # trial #18: FQ 0.030 / 0.92x (start 0.014)
    "graddiff": {"lr": 0.0006356, "epochs": 5, "alpha": 0.4199},
    # trial #16: FQ 0.49 / 0.96x (start 0.019)
    "npo": {"lr": 0.002469, "epochs": 10, "beta": 0.2428, "alpha": 4.123},
    # trial #18: FQ 0.55 / 0.93x (start 0.057)
    "simnpo": {"lr": 0.002334, "epochs": 9, "beta": 0.7442, "gamma": 0.2174},
}

# The values `unlearnx tune configs/tune/canvas_demo.yaml` chose for the diffusion demo
# (`unlearnx demo --task diffusion`, `diffusion_demo_config()`: canvas 4 styles x 4 objects at 16x16,
# 400 training steps; not --quick, whose 150-step model was not tuned). 6 TPE trials per method
# (seed 0; trial 0 = the demo's hand-set DIFFUSION_DEMO_HPARAMS), each scored on two tuning runs that
# erase other styles than the reported one on another seed's images, evaluators, weights and noise.
# Objective: UA subject to IRA and CRA >= 0.9x the tuning original's. 2026-12-05, 2-core shared
# x86-64 CPU, 1 torch thread, 1176 s. Only methods with a feasible trial are listed:
#   salun trial #1: UA 100 / retain 0.909x (start: UA 100 / 0.818x, below the budget).
#   uce: all 6 trials feasible; the start value lam 0.1 (its default) was best (UA 68.8 / 0.952x).
#   esd_x, esd_u, fmn: no trial of 6 within the budget (ESD's retain 0.35-0.64x, FMN's 0.29-0.78x):
#   they keep the hand-set values. docs/benchmarks.md ("Tuned presets for the diffusion demo")
#   measures the reported scenario.
DIFFUSION_DEMO_TUNED: dict[str, dict] = {
    "salun": {"steps": 77, "lr": 0.001252, "mask_ratio": 0.5822, "beta": 3.732},
}
