"""The LLM task (`task: llm` configs, `unlearnx demo --task llm`): TOFU-style forget10 on the built-in
fictitious authors, or a pretrained model on published benchmark files.

Pretrained models and benchmark files (`model.pretrained` + `data.benchmark`; docs/llm-eval.md "From
the CLI"): the target is loaded with `load_pretrained_lm` (not trained; its path and a fingerprint of
its files key the unlearning steps), `oracle.pretrained` is the retain model (none: the metrics that
need one are left out), the data come from `unlearnx.data.benchmarks` (`load_benchmark_files`) and
each benchmark is evaluated by its suite: TOFU `evaluate_tofu`, MUSE `evaluate_muse`, WMDP
`evaluate_wmdp`, RWKU `evaluate_rwku` per target after unlearning a corpus the target model wrote
itself (`rwku_forget_corpus`, the zero-shot batch setting). `eval.lm_eval` (lm-evaluation-harness) and
`eval.parametric` (concept vectors) apply to every model, built-in or pretrained (`extra_evals`).
`model.dtype` is the storage dtype of pretrained weights; the top-level `dtype` the autocast precision.

Pipeline (the reusable parts of benchmarks/bench_llm_eval.py):

1. Data (`build_authors_data`): `make_authors(N + k)`; the first N authors are exactly those of
   `make_authors(N)`, whose forget10 is the last k = ceil(10% N) of them (`data.forget_authors`
   overrides k; `unlearnx tune` uses it) and retain90 the rest;
   the k authors after them are a holdout never trained on. The held utility sets are the
   real_authors / world_facts splits; every author also has a biography (verbatim text).
2. Models: a byte-level BPE tokenizer trained on the data, a tiny Llama "target" trained on
   forget + retain QA, their biographies and the held sets, and a retain oracle ("Retrain")
   trained with the same recipe without the forget authors (`train_lm`).
3. Unlearning: GA, GradDiff, NPO, SimNPO, ULD (`LLM_DEMO_METHODS`; any method not registered is
   skipped with a note) from the target on forget10, with the tiny-model hyper-parameters of
   tests/methods_llm (`METHOD_HPARAMS`: lr 1e-3, i.e. ~100x the 7B defaults, 3 epochs, batch 8;
   SimNPO gamma 1 and 6 epochs; ULD a 1-layer assistant, lr 1e-2, 60 epochs); the quick demo runs
   the methods of `unlearnx.methods.presets.LLM_QUICK_TUNED` with the values `unlearnx tune
   configs/tune/llm_quick.yaml` chose. A method whose result is a wrapper (ULD's target + assistant)
   is reloaded through its `result_skeleton`.
4. Evaluation: `evaluate_tofu` (Maini et al. 2024, TOFU) against the retain oracle of the same run:
   forget quality = p-value of the two-sample KS test between the forget-set truth ratios of the
   model and of the oracle (so the oracle's own forget quality is 1), model utility (harmonic
   mean of probability, ROUGE-L recall and truth ratio on retain + held sets) and its ratio to
   the target's, forget probability / ROUGE-L recall / truth ratio.

Device and precision: `device` (cpu, cuda, auto) is where data, models, the oracle, methods and
evaluation run; `dtype: bfloat16` runs every forward and backward pass under torch.autocast in
bf16 while the weights and the optimizer state stay fp32 (master weights: small updates are not
lost to bf16 rounding); results.json records the device, the GPU name and the dtype.

Resumable: every trained or unlearned model is saved (safetensors, atomically) under
out/models/ with a JSON record holding sha256(config of that step); a rerun with the same config
loads them instead of training again, and the TOFU metric values are kept in out/cache/
(`MetricCache`, keyed by the model weights), so a complete rerun does no training, unlearning or
model forward pass. results.json lists the reused steps under "cached_steps".

Sizes and measured wall times (2-core x86-64 AMD EPYC, shared: load average 3-5 from other jobs,
native kernels built, torch 2.13 CPU, 1 torch thread); training recipe AdamW lr 4e-3, batch 16,
30 epochs, batches grouped by length (`train.group_by_length`: the few long biographies share a
few batches instead of padding most QA batches to ~180 tokens; 4x faster at the same memorization):
- quick: 12 authors (forget10 = 40 QA of 2 authors), utility on 20 retain QA + 12 held QA, 24-token
  answers: 65 s end to end (target 21 s, Retrain 21 s, GA/GradDiff/NPO/SimNPO ~3 s, ULD 10 s,
  evaluation 8 s); target forget probability 0.98, ROUGE-L recall 1.00; Retrain MU 1.01x the target's.
- full (the schema defaults): 20 authors (forget10 = 40 QA of 2 authors), utility on 60 retain QA +
  34 held QA, 48-token answers: 89 s with eight methods (target 30 s, Retrain 29 s, evaluation 13 s);
  target forget probability 0.99, ROUGE-L 1.00; Retrain MU 0.99x the target's.
- TOFU's size, `data.authors: 200` (forget10 = 400 QA; the one setting to change, with `device: cuda`
  on a GPU): the target memorizes with the same recipe (forget probability 0.999, ROUGE-L 1.00),
  610 s for the target on this CPU; not measured on a GPU.
- Before (lr 2e-3, uniform batches): quick was 6 authors / 15 epochs = 150 AdamW steps, too few to
  memorize (forget probability 0.41); the full size memorized (0.975) but took 195 s per model.
- a rerun with the same config: ~1 s (everything loaded). 1 vs 2 torch threads measured the same
  within the noise of the shared machine; 1 thread avoids stalls on a descheduled worker thread, as
  in the classification demo.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from unlearnx.experiments.config import (ConfigError, Field, check_range, check_value, normalise_name, suggest,
                                        validate_methods)
from unlearnx.experiments.run import Run, step_key
from unlearnx.experiments.tasks import ExperimentTask, register_task

__all__ = ["LLM_DEMO_METHODS", "METHOD_HPARAMS", "BASE_HPARAMS", "LLMTask", "llm_demo_config", "build_authors_data",
           "build_demo_tokenizer", "EncodedItems", "train_lm", "run_llm_demo", "llm_summary_table"]

# Unlearning methods of the demo; "uld" is picked up (and until then skipped with a note) once registered.
LLM_DEMO_METHODS = ("ga", "graddiff", "npo", "simnpo", "uld")

# Tiny-model hyper-parameters (lr ~100x the 7B defaults), as in tests/methods_llm.
BASE_HPARAMS = {"lr": 1e-3, "epochs": 3, "batch_size": 8}
METHOD_HPARAMS = {
    "ga": {}, "graddiff": {}, "npo": {}, "simnpo": {"gamma": 1.0, "epochs": 6}, "idkdpo": {},
    "flat": {"epochs": 2},
    # ULD: a 1-layer assistant of the 2-layer target; its reversed goals need ~60 epochs of 3 steps
    # (30 epochs: MU/target 0.58; 60: 0.86, forget probability 0.36 -> 0.01; quick demo, 2-core CPU).
    "uld": {"layers": 1, "lr": 1e-2, "epochs": 60},
    # RMU: adaptive c (5 x the layer-l activation norm); alpha 30, not the 7B 1200 (docs/llm-methods.md)
    "rmu": {"lr": 1e-2, "epochs": 20, "alpha": 30.0},
}

# Columns of the printed table / report, with how to read them.
COLUMNS = {
    "forget_quality": "KS-test p-value vs the retain oracle's forget truth ratios (↑, oracle = 1)",
    "model_utility": "harmonic mean of probability, ROUGE-L, truth ratio on retain + held sets (↑)",
    "MU/target": "model utility / the target's (↑, ≥ 0.95 keeps utility)",
    "forget_prob": "mean P(answer | question) on forget10 (→ oracle)",
    "forget_rougeL": "ROUGE-L recall of greedy answers on forget10 (→ oracle)",
    "forget_truth_ratio": "mean min(R, 1/R) on forget10 (→ oracle)",
    "forget_fact": "share of greedy forget10 answers that state the true fact (not TOFU; built-in data) (→ oracle)",
    # MUSE (Shi et al., 2024)
    "verbmem_forget": "VerbMem: ROUGE-L F1 ×100 of the continuation of forget texts (↓, → oracle)",
    "knowmem_forget": "KnowMem on forget QA: ROUGE-L F1 ×100 (↓, → oracle)",
    "knowmem_retain": "KnowMem on retain QA: ROUGE-L F1 ×100 (↑)",
    "mink_auc": "MUSE AUC of Min-K% (k 0.4), forget vs holdout texts",
    "privleak": "PrivLeak: (AUC − AUC_oracle) / AUC_oracle ×100 (→ 0; needs the oracle)",
    # RWKU (Jin et al., 2024): ROUGE-L recall of greedy answers, mean over the targets
    "forget_fb": "RWKU forget fill-in-the-blank probes, ROUGE-L recall (↓)",
    "forget_qa": "RWKU forget QA probes, ROUGE-L recall (↓)",
    "forget_aa": "RWKU forget adversarial-attack probes, ROUGE-L recall (↓)",
    "neighbor_fb": "RWKU neighbor fill-in-the-blank probes, ROUGE-L recall (↑)",
    "neighbor_qa": "RWKU neighbor QA probes, ROUGE-L recall (↑)",
    "mia/auc/loss": "RWKU MIA: LOSS AUC, forget vs retain MIA texts",
    "mia/auc/min_k": "RWKU MIA: Min-K% (k 0.2) AUC, forget vs retain MIA texts",
    "utility_general": "RWKU general utility: few-shot MMLU accuracy (↑)",
    "utility_factuality_f1": "RWKU factuality utility: TriviaQA token F1 (↑)",
    # ConceptVectors (Hong et al., 2024)
    "cv_cosine": "concept vectors: mean cosine(before, after) (1 = unchanged)",
    "cv_topk_overlap": "concept vectors: overlap of the top projected tokens before/after (1 = unchanged)",
    "cv_score": "concept vectors: mean concept score after (z-score of the concept's tokens)",
    "unlearn_s": "unlearning wall time (s)",
}


def _columns(rows: dict) -> list[str]:
    """The table's columns: those of COLUMNS in its order, then any other (WMDP subjects, lm-eval
    scores) in the order the rows have them, unlearn_s last."""
    present = list(dict.fromkeys(c for r in rows.values() for c in r))
    known = [c for c in COLUMNS if c in present and c != "unlearn_s"]
    return known + [c for c in present if c not in COLUMNS] + (["unlearn_s"] if "unlearn_s" in present else [])


def _column_help(c: str) -> str:
    if c in COLUMNS:
        return COLUMNS[c]
    if c.startswith("wmdp_"):
        return (f"WMDP {c[5:]} accuracy, 4-way multiple choice by log-probability as lm-eval's wmdp task "
                "(↓, chance 0.25)")
    return "lm-evaluation-harness score (task/metric)"


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PRETRAINED_DTYPES = ("auto", "float32", "float16", "bfloat16")  # unlearnx.models.lm.PRETRAINED_DTYPES
BENCHMARKS = ("tofu", "muse", "wmdp", "rwku")  # unlearnx.data.benchmarks.BENCHMARKS
# Keys added for pretrained models and benchmark files: left out of step keys while unset, so the
# built-in authors' run folders keep their keys.
_NEW_KEYS = {"model": ("pretrained", "dtype", "lora"),
             "data": ("benchmark", "path", "split", "subset", "targets", "forget_corpus", "retain_corpus",
                      "corpus_texts", "corpus_tokens", "max_items", "forget_authors")}


def _keyed(cfg: dict, section: str) -> dict:
    """cfg[section] without the new keys that are unset (the step-key view of the section)."""
    return {k: v for k, v in cfg[section].items() if not (k in _NEW_KEYS.get(section, ()) and v is None)}


def _llm_schema() -> dict:
    return {
        "task": Field("str", "llm", choices=("llm",)),
        "name": Field("str", "llm experiment", help="report title, default output folder"),
        "out_dir": Field("str", None, help="run directory (default runs/<name>)"),
        "seed": Field("int", 0, help="data order, model initialisation and every method's seed"),
        "device": Field("str", "cpu", choices=("cpu", "cuda", "auto"),
                        help="where data, models, the oracle, methods and evaluation run"),
        "dtype": Field("str", "float32", choices=tuple(DTYPES),
                       help="bfloat16: forward/backward under autocast in bf16, fp32 weights and optimizer state"),
        "threads": Field("int", 1, help="torch CPU threads during the run (0: torch's default)"),
        "data": {
            "authors": Field("int", 20, help="fictitious authors (forget10 = the last ceil(10%) of them)"),
            "forget_authors": Field("int", None, help="forget this many of the last authors instead of ceil(10%) "
                                                      "(unlearnx tune: the reported forget set's size)"),
            "n_real_authors": Field("int", 8, help="held 'real authors' utility set size"),
            "n_world_facts": Field("int", 18, help="held 'world facts' utility set size"),
            "vocab_size": Field("int", 2048, help="byte-level BPE vocabulary trained on the data"),
            "benchmark": Field("str", None, choices=BENCHMARKS, help="benchmark files instead of the built-in "
                                                                      "authors (needs model.pretrained)"),
            "path": Field("str", None, help="the benchmark's folder (TOFU, MUSE corpus, WMDP, RWKU Target dir)"),
            "split": Field("any", None, help="tofu: forget01|forget05|forget10; wmdp: subject(s) bio|cyber|chem"),
            "subset": Field("str", None, help="muse: the retain split of raw/ (retain1 or retain2)"),
            "targets": Field("any", None, help="rwku: target names (default: every target under data.path)"),
            "forget_corpus": Field("str", None, help="wmdp: forget corpus file (relative to data.path or absolute)"),
            "retain_corpus": Field("str", None, help="wmdp: retain corpus file (relative to data.path or absolute)"),
            "corpus_texts": Field("int", None, help="rwku: texts the model writes about each target (default 8)"),
            "corpus_tokens": Field("int", None, help="rwku: new tokens per generated text (default 512)"),
            "max_items": Field("int", None, help="use at most this many items of each file (a quick look)"),
        },
        "model": {
            "name": Field("str", "llama", help="a builder of unlearnx.models.lm (available_lms())"),
            "hidden": Field("int", 64), "layers": Field("int", 2), "heads": Field("int", 4),
            "kwargs": Field("dict", {}, help="other builder arguments (e.g. experts, top_k for moe)"),
            "pretrained": Field("str", None, help="a save_pretrained directory (or a hub name in the local "
                                                   "cache): the target; then data.benchmark is required"),
            "dtype": Field("str", None, choices=PRETRAINED_DTYPES,
                           help="storage dtype of the pretrained weights (default auto: the checkpoint's)"),
            "lora": Field("any", None, help="{r, alpha, dropout, target_modules} (or true): train LoRA adapters"),
        },
        "oracle": {"pretrained": Field("str", None, help="the retain model (e.g. TOFU's retain90 checkpoint)")},
        "train": {"epochs": Field("int", 30), "lr": Field("number", 4e-3), "batch_size": Field("int", 16),
                  "group_by_length": Field("bool", True, help="batch QA items and biographies of similar length "
                                                             "together (4x faster at the same memorization)")},
        "methods": Field("any", list(LLM_DEMO_METHODS),
                         help="list of method names or {name, label?, optional?, <hparams>}; hyper-parameters "
                              "default to BASE_HPARAMS and METHOD_HPARAMS (tiny-model values)"),
        "eval": {"retain_subset": Field("int", 60, help="retain QA scored for model utility"),
                 "max_new_tokens": Field("int", 48, help="greedy answer length for ROUGE"),
                 "lm_eval": Field("dict", None, help="{tasks: [...], limit: N, batch_size, num_fewshot}: "
                                                     "lm-evaluation-harness on every model"),
                 "parametric": Field("dict", None, help="{concept: [words], top_n: 10, top_k: 50}: concept-vector "
                                                        "drift (Hong et al., 2024)")},
    }


def _epoch_means(losses: Sequence[float], epochs: int) -> list[float]:
    # Per-step losses -> one mean per epoch (what the loss-curve figure shows).
    n = max(1, len(losses) // max(1, epochs))
    return [float(sum(losses[i:i + n]) / len(losses[i:i + n])) for i in range(0, len(losses), n)]


class _Setup:
    """The data, tokenizer and step keys of an LLM run."""

    def __init__(self, run: Run):
        from unlearnx.eval.llm import fingerprint_tokenizer

        cfg = run.cfg
        t0 = time.perf_counter()
        dc = cfg["data"]
        self.seed = cfg["seed"]
        self.data = build_authors_data(dc["authors"], n_real_authors=dc["n_real_authors"],
                                       n_world_facts=dc["n_world_facts"], n_forget=dc["forget_authors"])
        self.tok = build_demo_tokenizer(self.data, vocab_size=dc["vocab_size"])
        self.held = [i for v in self.data["held"].values() for i in v]
        if run.ctx.world_size > 1 and len(set(run.ctx.all_gather(fingerprint_tokenizer(self.tok)))) > 1:
            # Each rank trains its own tokenizer; different vocabularies would pair unrelated models.
            raise RuntimeError("the ranks built different tokenizers from the same data; run with one process")
        self.timings = {"data_tokenizer_s": time.perf_counter() - t0}
        # bf16 training gives other weights; fp32 keys stay those of earlier run folders.
        self.base_key = (_keyed(cfg, "data"), _keyed(cfg, "model"), cfg["train"], self.seed) + (
            (cfg["dtype"],) if cfg["dtype"] != "float32" else ())
        self.model_kw = {**{k: v for k, v in _keyed(cfg, "model").items() if k not in ("name", "kwargs")},
                         **cfg["model"]["kwargs"]}
        self.dtype = cfg["dtype"]

    def fresh(self, cfg: dict):
        from unlearnx.models.lm import build_lm

        return build_lm(cfg["model"]["name"], tokenizer=self.tok, seed=self.seed, **self.model_kw)

    def precision(self, device: torch.device):
        """The autocast context of the run's dtype (fp32: nothing)."""
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=DTYPES[self.dtype])


@register_task
class LLMTask(ExperimentTask):
    """Causal LMs: TOFU-style forget10 of the built-in fictitious authors, retain oracle in the same run."""

    name = "llm"
    method_task = "causal_lm"
    demo_help = "a tiny Llama on fictitious authors (TOFU forget10); needs the llm extra"
    original_label = "target"

    def schema(self) -> dict:
        return _llm_schema()

    def seeds(self, cfg: dict) -> list[int]:
        return [cfg["seed"]]

    def validate(self, cfg: dict) -> dict:
        """Ranges, the model, and the methods: hparams = BASE_HPARAMS < METHOD_HPARAMS < the entry's
        own, limited to the method's hyper-parameters; each method is instantiated once so bad values
        fail here, before any work."""
        import unlearnx as ux
        from unlearnx.models.lm import available_lms

        for path, value, low in (("threads", cfg["threads"], 0), ("data.authors", cfg["data"]["authors"], 2),
                                 ("data.vocab_size", cfg["data"]["vocab_size"], 300),
                                 ("data.n_real_authors", cfg["data"]["n_real_authors"], 0),
                                 ("data.n_world_facts", cfg["data"]["n_world_facts"], 0),
                                 ("model.hidden", cfg["model"]["hidden"], 1),
                                 ("model.layers", cfg["model"]["layers"], 1),
                                 ("model.heads", cfg["model"]["heads"], 1), ("train.epochs", cfg["train"]["epochs"], 1),
                                 ("train.batch_size", cfg["train"]["batch_size"], 1),
                                 ("eval.retain_subset", cfg["eval"]["retain_subset"], 1),
                                 ("eval.max_new_tokens", cfg["eval"]["max_new_tokens"], 1)):
            if value < low:
                raise ConfigError(f"config key {path!r}: expected an integer >= {low}, got {value}")
        check_range("train.lr", cfg["train"]["lr"], low=0, low_open=True)
        if cfg["model"]["name"] not in available_lms():
            raise ConfigError(f"config key 'model.name': unknown model {cfg['model']['name']!r}"
                              f"{suggest(cfg['model']['name'], available_lms())}")
        clash = sorted(set(cfg["model"]["kwargs"]) & {"hidden", "layers", "heads", "vocab_size", "tokenizer", "seed"})
        if clash:
            raise ConfigError(f"config key 'model.kwargs': {clash} are set elsewhere (model.hidden/layers/heads; the "
                              "vocabulary comes from the tokenizer, the seed from 'seed')")
        pretrained = _validate_pretrained(cfg)
        methods, skipped = validate_methods(cfg["methods"], self.method_task)
        for i, entry in enumerate(methods):
            cls = ux.methods.get(entry["method"], task="causal_lm")
            # Pretrained models start from each method's own (paper) defaults; the tiny-model values
            # (lr ~100x the 7B defaults) are for the built-in models only.
            base = {} if pretrained else {k: v for k, v in {**BASE_HPARAMS, **METHOD_HPARAMS.get(entry["method"], {})}
                                          .items() if k in cls.defaults}
            entry["hparams"] = {**base, **entry["hparams"]}
            hp = entry["hparams"]
            if "concept_tokens" in cls.defaults and hp.get("concept_tokens") is None:
                if not (cfg["eval"]["parametric"] or {}).get("concept"):
                    raise ConfigError(f"config key 'methods[{i}].concept_tokens': {entry['method']} needs the "
                                      "concept: give eval.parametric.concept (words) or concept_tokens (ids)")
                hp = {**hp, "concept_tokens": [0]}  # stands in for the concept's ids (the tokenizer gives them)
            try:
                _method_instance(entry["method"], hp)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"config key 'methods[{i}]' ({entry['method']}): {exc}") from None
        cfg["_methods"], cfg["_skipped"] = methods, skipped
        return cfg

    def demo_config(self, *, methods=None, quick=False, out_dir=None, device="cpu", options=None) -> dict:
        return llm_demo_config(quick=quick, methods=methods, out_dir=out_dir or "runs/demo-llm", device=device,
                               **(options or {}))

    def demo_options(self) -> dict[str, str]:
        return {}

    # ---- steps
    def setup(self, run: Run, seed: int):
        if run.cfg["model"]["pretrained"] is not None:
            return _PretrainedSetup(run)
        return _Setup(run)

    def _train(self, run: Run, setup: _Setup, label: str, items):
        cfg = run.cfg

        def compute():
            run.echo(f"{label}: training on {len(items)} QA items / texts for {cfg['train']['epochs']} epochs")
            t = time.perf_counter()
            with setup.precision(run.device):
                model, losses = train_lm(setup.tok, items, model={"name": cfg["model"]["name"], **setup.model_kw},
                                         train=cfg["train"], seed=setup.seed, progress=run.progress,
                                         device=run.device)
            return model, {"seconds": time.perf_counter() - t,
                           "loss_curve": _epoch_means(losses, cfg["train"]["epochs"])}

        model, rec = run.steps.run(label, step_key("train", label, setup.base_key), run.out / "models" / label,
                                   lambda: setup.fresh(cfg), compute)
        return model.to(run.device).eval(), rec

    def original(self, run: Run, setup: _Setup):
        if isinstance(setup, _PretrainedSetup):
            return setup.target, setup.target_record
        d = setup.data
        return self._train(run, setup, "target",
                           d["forget"] + d["retain"] + setup.held + d["forget_bios"] + d["retain_bios"])

    def oracle(self, run: Run, setup: _Setup):
        if isinstance(setup, _PretrainedSetup):
            return setup.load_oracle(run)
        d = setup.data
        model, rec = self._train(run, setup, "Retrain", d["retain"] + setup.held + d["retain_bios"])
        setup.oracle_model = model  # the target of methods calibrated against an unlearning target (ECO)
        return model, rec

    def unlearn(self, run: Run, setup: _Setup, entry: dict, original, original_record: dict):
        import unlearnx as ux

        if isinstance(setup, _PretrainedSetup):
            return setup.unlearn(run, entry, original, original_record)

        label, name, hp = entry["label"], entry["method"], entry["hparams"]
        data = setup.data

        def compute():
            run.echo(f"{name}: unlearning forget10 ({len(data['forget'])} QA) with {hp}")
            extra = {}
            if _wants_oracle(name, hp):
                # A method calibrated against an unlearning target (ECO's corruption strength)
                # gets the run's retain oracle when the config names no target of its own.
                extra["oracle"] = setup.oracle_model
            with setup.precision(run.device):
                res = ux.unlearn(copy.deepcopy(original), name, forget=data["forget"], retain=data["retain"],
                                 tokenizer=setup.tok, seed=setup.seed, progress=run.progress, **hp, **extra)
            curve = res.log.get("loss") if isinstance(res.log, dict) else None
            used = {k: ("the run's Retrain oracle" if k in extra else v) for k, v in res.hparams.items()}
            return res.model, {"method": name, "seconds": res.seconds, "hparams": used,
                               "loss_curve": [float(v) for v in curve] if curve else []}

        def fresh_result():
            # What this method's saved result loads into: a wrapper (ULD's target + assistant)
            # comes from the method's result_skeleton; a plain LM otherwise.
            skeleton = getattr(_method_instance(name, hp), "result_skeleton", None)
            return skeleton(setup.fresh(run.cfg)) if skeleton else setup.fresh(run.cfg)

        key = step_key("unlearn", name, hp, setup.base_key, original_record["sha256"])
        model, rec = run.steps.run(label, key, run.out / "models" / label, fresh_result, compute)
        return model.to(run.device).eval(), rec

    def evaluate(self, run: Run, setup: _Setup, models: dict, records: dict, cached: list[str]) -> dict:
        from unlearnx.eval.llm import MetricCache, evaluate_tofu

        if isinstance(setup, _PretrainedSetup):
            return setup.evaluate(run, models, records, cached)

        data, ev = setup.data, run.cfg["eval"]
        # Evaluation: the oracle first (its per-item forget truth ratios are every model's KS reference).
        cache = MetricCache(run.out / "cache")
        t0 = time.perf_counter()
        tofu = {}
        for label in models:
            run.echo(f"{label}: TOFU evaluation")
            with setup.precision(run.device):
                tofu[label] = evaluate_tofu(models[label], setup.tok, forget=data["forget"],
                                            retain=data["retain"][:ev["retain_subset"]], held=data["held"],
                                            reference=tofu.get("Retrain", models["Retrain"]),
                                            max_new_tokens=ev["max_new_tokens"], cache=cache,
                                            progress=run.progress)
        timings = dict(setup.timings)
        for label, rec in records.items():
            timings[f"{'train' if label in ('target', 'Retrain') else 'unlearn'} {label}_s"] = rec["seconds"]
        timings["evaluation_s"] = time.perf_counter() - t0
        mu_target = tofu["target"]["model_utility"]
        rows = {label: _tofu_row(tofu[label], mu_target) for label in tofu}
        extras = {}
        if ev["lm_eval"] is not None or ev["parametric"] is not None:
            setup.target, setup.vectors = models["target"], None
            for label in models:
                extras[label] = extra_evals(run, setup, models[label], label)
                rows[label].update(extras[label]["row"])
        labels = [e["label"] for e in run.cfg["_methods"]]
        for label in labels:
            rows[label]["unlearn_s"] = records[label]["seconds"]
        d = data
        summary = {"n_forget": len(d["forget"]), "n_retain": len(d["retain"]),
                   "forget_authors": len(d["forget_bios"]), "n_holdout": len(d["holdout"]),
                   "held": {k: len(v) for k, v in d["held"].items()}}
        return {"rows": rows, "records": records, "tofu": tofu, "cached": cached, "timings": timings,
                "cache": cache, "data": summary, "extras": extras}

    # ---- the whole run
    def results(self, run: Run, per_seed: list[dict]) -> dict:
        s, cfg = per_seed[0], run.cfg
        if cfg["model"]["pretrained"] is not None:
            return _pretrained_results(run, s)
        public_cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        # The key of the config as it was before the pretrained / benchmark keys existed.
        public_cfg.update(data=_keyed(cfg, "data"), model=_keyed(cfg, "model"),
                          eval={k: v for k, v in cfg["eval"].items() if v is not None})
        if cfg["oracle"]["pretrained"] is None:
            public_cfg.pop("oracle")
        return {
            "format": "unlearnx-llm-results/1",
            "config_key": step_key(public_cfg),
            "data": s["data"],
            "device": {"device": str(run.device), "dtype": cfg["dtype"],
                       "gpu": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else None},
            "rows": s["rows"],
            "methods": [e["label"] for e in cfg["_methods"]],
            "skipped": cfg["_skipped"],
            "runs": s["records"],
            "tofu": {label: {"aggregate": r.aggregate,
                             "forget_truth_ratio_raw": r.per_item["forget/truth_ratio_raw"]}
                     for label, r in s["tofu"].items()},
            "cached_steps": s["cached"],
            "metric_cache": {"hits": s["cache"].hits, "misses": s["cache"].misses},
            "timings": s["timings"],
            **_extra_results(cfg, s["extras"]),
        }

    def write_report(self, results: dict, out) -> None:
        _write_report(results, Path(out))

    def summary(self, results: dict) -> str:
        d = results["data"]
        if "benchmark" in d:
            return (f"\n{results['name']}: {d['benchmark']} files at {d['path']}, target = "
                    f"{results['pretrained']['pretrained']}, "
                    + ("Retrain = the given retain model" if results["oracle"] else "no oracle (metrics that "
                       "need one are left out)") + "\n" + llm_summary_table(results))
        return (f"\n{results['name']}: forget10 = {d['n_forget']} QA, retain90 = {d['n_retain']} QA; "
                f"Retrain = the retain oracle, target = before unlearning\n" + llm_summary_table(results))


def _validate_pretrained(cfg: dict) -> bool:
    """The keys of pretrained models, benchmark files, lm-eval and the parametric evaluation: every
    problem is a ConfigError naming its key, before any work. Returns whether the run uses a
    pretrained model (and benchmark files)."""
    m, d, ev = cfg["model"], cfg["data"], cfg["eval"]
    for path, value in (("data.corpus_texts", d["corpus_texts"]), ("data.corpus_tokens", d["corpus_tokens"]),
                        ("data.max_items", d["max_items"])):
        check_range(path, value, low=1)
    if ev["lm_eval"] is not None:
        _check_lm_eval(ev["lm_eval"])
    if ev["parametric"] is not None:
        _check_parametric(ev["parametric"])
    if m["pretrained"] is None:
        for key, value in (("model.dtype", m["dtype"]), ("model.lora", m["lora"]),
                           ("oracle.pretrained", cfg["oracle"]["pretrained"]), ("data.benchmark", d["benchmark"])):
            if value is not None:
                raise ConfigError(f"config key {key!r}: only with model.pretrained (the built-in models train on "
                                  "the built-in authors with their own tokenizer)")
        for key in _NEW_KEYS["data"][1:]:
            if d[key] is not None and key != "forget_authors":
                raise ConfigError(f"config key 'data.{key}': only with data.benchmark and model.pretrained")
        if d["forget_authors"] is not None:
            check_range("data.forget_authors", d["forget_authors"], low=1, high=d["authors"] - 1)
        return False
    _resolve_pretrained("model.pretrained", m["pretrained"])
    if cfg["oracle"]["pretrained"] is not None:
        _resolve_pretrained("oracle.pretrained", cfg["oracle"]["pretrained"])
    if m["lora"] is not None and m["lora"] is not False:
        lora = m["lora"]
        if lora is not True:
            if not isinstance(lora, dict):
                raise ConfigError(f"config key 'model.lora': expected true or a mapping {{r, alpha, dropout, "
                                  f"target_modules}}, got {lora!r}")
            for key in lora:
                if key not in _LORA_KEYS:
                    raise ConfigError(f"unknown config key 'model.lora.{key}'{suggest(str(key), _LORA_KEYS)}")
            for key in ("r", "alpha"):
                if key in lora and (isinstance(lora[key], bool) or not isinstance(lora[key], int) or lora[key] < 1):
                    raise ConfigError(f"config key 'model.lora.{key}': expected an integer >= 1, got {lora[key]!r}")
            if "dropout" in lora:
                check_range("model.lora.dropout", check_value("model.lora.dropout", lora["dropout"],
                                                              Field("number", 0.0)), low=0, high=1)
            tm = lora.get("target_modules")
            if tm is not None and not (tm == "all-linear" or (isinstance(tm, list) and tm
                                                               and all(isinstance(t, str) for t in tm))):
                raise ConfigError(f"config key 'model.lora.target_modules': expected a list of module names or "
                                  f"'all-linear', got {tm!r}")
    if d["forget_authors"] is not None:
        raise ConfigError("config key 'data.forget_authors': only for the built-in authors (the benchmark's split "
                          "names the forget set)")
    if d["benchmark"] is None:
        raise ConfigError("config key 'data.benchmark': required with model.pretrained (one of "
                          f"{list(BENCHMARKS)}); the built-in authors train their own tiny models")
    if d["path"] is None:
        raise ConfigError(f"config key 'data.path': required with data.benchmark {d['benchmark']!r}")
    if not Path(d["path"]).exists():
        raise ConfigError(f"config key 'data.path': no such file or directory: {d['path']}")
    allowed = {"tofu": ("split",), "muse": ("subset",), "wmdp": ("split", "forget_corpus", "retain_corpus"),
               "rwku": ("targets", "corpus_texts", "corpus_tokens")}[d["benchmark"]]
    for key in ("split", "subset", "targets", "forget_corpus", "retain_corpus", "corpus_texts", "corpus_tokens"):
        if d[key] is not None and key not in allowed:
            raise ConfigError(f"config key 'data.{key}': not used by benchmark {d['benchmark']!r} (its keys: "
                              f"{', '.join(('path', 'max_items') + allowed)})")
    try:
        load_benchmark_files(cfg, check_only=True)
    except (FileNotFoundError, ValueError) as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(("config key", "data.")) else f"data.path: {msg}") from None
    return True


_LORA_KEYS = ("r", "alpha", "dropout", "target_modules", "lora_alpha", "lora_dropout")
_LM_EVAL_KEYS = ("tasks", "limit", "batch_size", "num_fewshot")
_PARAMETRIC_KEYS = ("concept", "top_n", "top_k")


def _check_lm_eval(le: dict) -> None:
    from unlearnx.eval.llm import lm_eval_available

    for key in le:
        if key not in _LM_EVAL_KEYS:
            raise ConfigError(f"unknown config key 'eval.lm_eval.{key}'{suggest(str(key), _LM_EVAL_KEYS)}")
    tasks = le.get("tasks")
    if isinstance(tasks, (str, dict)):
        tasks = [tasks]
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, (str, dict)) for t in tasks):
        raise ConfigError(f"config key 'eval.lm_eval.tasks': expected a non-empty list of lm-eval task names (or "
                          f"task config mappings), got {le.get('tasks')!r}")
    limit = le.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise ConfigError(f"config key 'eval.lm_eval.limit': expected a number > 0, got {limit!r}")
    for key in ("batch_size", "num_fewshot"):
        v = le.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "batch_size" else 0)):
            raise ConfigError(f"config key 'eval.lm_eval.{key}': expected an integer >= "
                              f"{1 if key == 'batch_size' else 0}, got {v!r}")
    if not lm_eval_available():
        raise ConfigError("config key 'eval.lm_eval': needs lm-evaluation-harness, which is not installed "
                          "(pip install 'unlearnx[lmeval]')")


def _check_parametric(pm: dict) -> None:
    for key in pm:
        if key not in _PARAMETRIC_KEYS:
            raise ConfigError(f"unknown config key 'eval.parametric.{key}'{suggest(str(key), _PARAMETRIC_KEYS)}")
    words = pm.get("concept")
    if isinstance(words, str):
        words = [words]
    if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
        raise ConfigError(f"config key 'eval.parametric.concept': expected a non-empty list of words, got "
                          f"{pm.get('concept')!r}")
    for key in ("top_n", "top_k"):
        v = pm.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"config key 'eval.parametric.{key}': expected an integer >= 1, got {v!r}")


def _resolve_pretrained(key: str, name: str) -> Path:
    """The local folder of a pretrained model: the directory itself, or a hub name's snapshot in the
    local Hugging Face cache (nothing is downloaded). ConfigError naming `key` otherwise."""
    p = Path(name)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ConfigError(f"config key {key!r}: {name} holds no config.json (a save_pretrained folder expected)")
        return p
    if p.is_absolute() or name.startswith(".") or name.count("/") > 1:
        raise ConfigError(f"config key {key!r}: no such directory: {name}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means: not in the local cache
        raise ConfigError(f"config key {key!r}: {name!r} is neither a directory nor a model in the local Hugging "
                          "Face cache (nothing is downloaded: give a local save_pretrained folder)") from None


_FINGERPRINT_FULL = 64 << 20  # files up to 64 MiB are hashed whole; bigger ones by size and sampled blocks


def pretrained_identity(key: str, name: str) -> dict:
    """{"pretrained": name, "dir": folder, "fingerprint": sha256 over the folder's files} for step
    keys and records. Files up to 64 MiB (configs, tokenizer, small weights) are hashed whole; larger
    weight files by their name, size and three 1 MiB blocks (start, middle, end), so that a 14 GB
    checkpoint is identified in milliseconds (a change that keeps size and those blocks goes unseen)."""
    import hashlib

    folder = _resolve_pretrained(key, name)
    h = hashlib.sha256()
    for f in sorted(q for q in folder.rglob("*") if q.is_file() and not q.name.startswith(".")):
        size = f.stat().st_size
        h.update(f"{f.relative_to(folder).as_posix()}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= _FINGERPRINT_FULL:
                h.update(fh.read())
            else:
                for off in (0, size // 2, size - (1 << 20)):
                    fh.seek(off)
                    h.update(fh.read(1 << 20))
    return {"pretrained": name, "dir": str(folder), "fingerprint": h.hexdigest()}


def _limit(items, n):
    return list(items) if n is None else list(items)[:n]


def _corpus_file(d: dict, key: str) -> Path | None:
    if d[key] is None:
        return None
    p = Path(d[key])
    if not p.is_absolute() and not p.exists():
        p = Path(d["path"]) / p
    if not p.is_file():
        raise ValueError(f"config key 'data.{key}': no such file: {d[key]} (absolute, relative to the current "
                         "folder, or to data.path)")
    return p


def load_benchmark_files(cfg: dict, *, check_only: bool = False) -> dict:
    """The data of `data: {benchmark, path, ...}` (unlearnx.data.benchmarks loaders):

    tofu: forget = `{split}_perturbed` (or `{split}`) for unlearning and evaluation, retain =
        retain{100 - N} for unlearning and retain_perturbed for utility, held = real_authors /
        world_facts (their `_perturbed` files) when present.
    muse: forget = raw/forget, retain = raw/{subset or retain1}; evaluation: verbmem/forget,
        knowmem/{forget,retain}_qa, privleak/{forget,holdout} (raw/forget + raw/holdout when absent).
    wmdp: the questions of each subject in `split` (default: every subject whose file exists);
        forget / retain corpora from data.forget_corpus / data.retain_corpus.
    rwku: {target: RWKUData} for the targets (a Target folder of N_Name folders, or one folder).

    check_only (validation): every file is found and parsed except WMDP's corpora (only found) and
    the RWKU folders after the first target's.
    """
    from unlearnx.data import benchmarks as B

    d = cfg["data"]
    root, n, bench = Path(d["path"]), d["max_items"], d["benchmark"]

    def optional(fn, *args):
        try:
            return fn(*args)
        except FileNotFoundError:
            return None

    if bench == "tofu":
        split = d["split"] or "forget10"
        if split not in ("forget01", "forget05", "forget10"):
            raise ValueError(f"config key 'data.split': expected forget01, forget05 or forget10, got {split!r}")
        retain_split = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}[split]
        forget = optional(B.load_tofu, root, f"{split}_perturbed")
        if forget is None:
            raise ValueError(f"data.path: {root} holds no {split}_perturbed file (TOFU's forget split with "
                             "paraphrased and perturbed answers, needed for the truth ratio)")
        retain_eval = B.load_tofu(root, "retain_perturbed")
        retain_train = optional(B.load_tofu, root, retain_split) or retain_eval
        held = {name: items for name in ("real_authors", "world_facts")
                if (items := optional(B.load_tofu, root, f"{name}_perturbed")) is not None}
        if not held:
            raise ValueError(f"data.path: {root} holds neither real_authors_perturbed nor world_facts_perturbed "
                             "(TOFU's model utility needs at least one held set)")
        return {"forget": _limit(forget, n), "retain": _limit(retain_train, n),
                "retain_eval": _limit(retain_eval, n), "held": {k: _limit(v, n) for k, v in held.items()},
                "split": split, "retain_split": retain_split if retain_train is not retain_eval else "retain_perturbed"}
    if bench == "muse":
        retain_split = d["subset"] or "retain1"
        if retain_split not in ("retain1", "retain2"):
            raise ValueError(f"config key 'data.subset': expected retain1 or retain2, got {retain_split!r}")
        forget = B.load_muse(root, "raw", "forget")
        retain = optional(B.load_muse, root, "raw", retain_split)
        pl_forget = optional(B.load_muse, root, "privleak", "forget")
        pl_holdout = optional(B.load_muse, root, "privleak", "holdout")
        if pl_forget is None or pl_holdout is None:
            pl_forget, pl_holdout = forget, optional(B.load_muse, root, "raw", "holdout")
            if pl_holdout is None:
                raise ValueError(f"data.path: {root} holds neither privleak/holdout nor raw/holdout (PrivLeak's "
                                 "non-members)")
        return {"forget": _limit(forget, n), "retain": None if retain is None else _limit(retain, n),
                "mia_forget": _limit(pl_forget, n), "mia_holdout": _limit(pl_holdout, n),
                "verbmem": None if (v := optional(B.load_muse, root, "verbmem", "forget")) is None else _limit(v, n),
                "forget_qa": None if (f := optional(B.load_muse, root, "knowmem", "forget_qa")) is None
                else _limit(f, n),
                "retain_qa": None if (r := optional(B.load_muse, root, "knowmem", "retain_qa")) is None
                else _limit(r, n), "retain_split": retain_split}
    if bench == "wmdp":
        split = d["split"]
        subjects = [split] if isinstance(split, str) else split
        if subjects is not None and (not isinstance(subjects, list) or not subjects
                                     or any(s not in B.WMDP_SUBJECTS for s in subjects)):
            raise ValueError(f"config key 'data.split': expected WMDP subjects among {list(B.WMDP_SUBJECTS)}, "
                             f"got {split!r}")
        items = ({s: B.load_wmdp(root, s) for s in subjects} if subjects else
                 {s: v for s in B.WMDP_SUBJECTS if (v := optional(B.load_wmdp, root, s)) is not None})
        if not items:
            raise ValueError(f"data.path: {root} holds no WMDP question file (wmdp-bio, wmdp-cyber, wmdp-chem)")
        if d["forget_corpus"] is None:
            raise ValueError("config key 'data.forget_corpus': required for wmdp (the methods unlearn a forget "
                             "corpus, e.g. cais/wmdp-corpora's cyber-forget-corpus.jsonl)")
        ffile, rfile = _corpus_file(d, "forget_corpus"), _corpus_file(d, "retain_corpus")
        if check_only:  # the corpora can be large: validation checks they exist, setup reads them
            return {"items": items}
        forget = B.load_wmdp_corpus(ffile)
        return {"items": {s: _limit(v, n) for s, v in items.items()}, "forget": _limit(forget, n),
                "retain": None if rfile is None else _limit(B.load_wmdp_corpus(rfile), n)}
    # rwku
    folders = {}
    try:
        folders = dict(B.rwku_targets(root))
    except FileNotFoundError:
        pass
    wanted = d["targets"]
    if isinstance(wanted, str):
        wanted = [wanted]
    if wanted is not None and (not isinstance(wanted, list) or not wanted
                               or not all(isinstance(t, str) and t for t in wanted)):
        raise ValueError(f"config key 'data.targets': expected a list of target names, got {d['targets']!r}")
    if folders:
        names = wanted or list(folders)
        unknown = [t for t in names if t not in folders]
        if unknown:
            raise ValueError(f"config key 'data.targets': {unknown} not under {root}{suggest(unknown[0], folders)}")
        out = {}
        for t in (names[:1] if check_only else names):
            data = B.load_rwku(folders[t])
            out[t] = data.for_target(t) if t in data.targets else data
        return out
    data = B.load_rwku(root)
    names = wanted or data.targets
    unknown = [t for t in names if t not in data.targets]
    if unknown:
        raise ValueError(f"config key 'data.targets': {unknown} not among the targets of {root} "
                         f"{suggest(unknown[0], data.targets)}")
    return {t: data.for_target(t) for t in names}


def llm_demo_config(*, quick: bool = False, methods: Sequence[str] | None = None, seed: int = 0,
                    out_dir: str = "runs/demo-llm", device: str = "cpu", dtype: str = "float32") -> dict:
    """The demo's configuration (an LLM experiment config, see `LLMTask.validate`).

    quick: fewer authors (12: still 40 forget QA) and a smaller evaluation (about 1 minute on 2 CPU cores).
    The methods run with the values `unlearnx tune` chose for the size: `unlearnx.methods.presets.
    LLM_QUICK_TUNED` (quick) or `LLM_DEMO_TUNED` (full size); others with METHOD_HPARAMS.
    methods: unlearning methods to run (default `LLM_DEMO_METHODS`, each skipped with a note when
    not registered; explicitly named methods must be registered for task "causal_lm").
    device, dtype: where and in which precision it runs (see the module docstring).
    """
    if methods is not None and (isinstance(methods, str) or not all(isinstance(m, str) for m in methods)):
        raise ValueError(f"methods: expected a list of method names, got {methods!r}")
    from unlearnx.methods.presets import LLM_DEMO_TUNED, LLM_QUICK_TUNED

    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed: must be an int, got {seed!r}")
    size = ({"authors": 12, "epochs": 30, "n_real_authors": 4, "n_world_facts": 8, "eval_retain": 20,
             "max_new_tokens": 24} if quick else
            {"authors": 20, "epochs": 30, "n_real_authors": 8, "n_world_facts": 18, "eval_retain": 60,
             "max_new_tokens": 48})
    # The values `unlearnx tune configs/tune/llm_quick.yaml` (quick) or `configs/tune/llm_demo.yaml`
    # (full size: 20 authors, a 60-QA utility subset, 48-token answers) chose for that size (presets.py).
    tuned = {normalise_name(k): v for k, v in (LLM_QUICK_TUNED if quick else LLM_DEMO_TUNED).items()}
    entries = ([{"name": m, **tuned.get(normalise_name(m), {})} for m in methods] if methods is not None
               else [{"name": m, "optional": True, **tuned.get(normalise_name(m), {})} for m in LLM_DEMO_METHODS])
    return {
        "task": "llm",
        "name": f"LLM demo: forget10 of {size['authors']} fictitious authors, tiny Llama"
                + (" (quick)" if quick else ""),
        "out_dir": str(out_dir),
        "seed": seed,
        "device": device,
        "dtype": dtype,
        # One torch thread: the models are tiny, so intra-op threads mostly add synchronisation.
        "threads": 1,
        "data": {"authors": size["authors"], "n_real_authors": size["n_real_authors"],
                 "n_world_facts": size["n_world_facts"], "vocab_size": 2048},
        "model": {"name": "llama", "hidden": 64, "layers": 2, "heads": 4},
        "train": {"epochs": size["epochs"], "lr": 4e-3, "batch_size": 16, "group_by_length": True},
        "methods": entries,
        "eval": {"retain_subset": size["eval_retain"], "max_new_tokens": size["max_new_tokens"]},
    }


def build_authors_data(n_authors: int, *, n_real_authors: int = 8, n_world_facts: int = 18,
                       n_forget: int | None = None) -> dict:
    """forget10 / retain90 / holdout QA, biographies, held sets and tokenizer texts (see module doc).
    n_forget: forget (and holdout) authors, default ceil(10% of n_authors)."""
    from unlearnx.data.authors import make_authors

    if not isinstance(n_authors, int) or n_authors < 2:
        raise ValueError(f"n_authors: expected an int >= 2, got {n_authors!r}")
    if n_forget is not None and (not isinstance(n_forget, int) or isinstance(n_forget, bool)
                                 or not 1 <= n_forget < n_authors):
        raise ValueError(f"n_forget: expected an int in [1, n_authors - 1], got {n_forget!r}")
    k = max(1, math.ceil(0.1 * n_authors)) if n_forget is None else n_forget
    qa = make_authors(n_authors + k, n_real_authors=n_real_authors, n_world_facts=n_world_facts)
    main, holdout = qa.authors[:n_authors], qa.authors[n_authors:]
    forget_a, retain_a = main[n_authors - k:], main[:n_authors - k]

    def items(authors):
        return [i for a in authors for i in a.items]

    return {
        "forget": items(forget_a), "retain": items(retain_a), "holdout": items(holdout),
        "forget_bios": [a.biography() for a in forget_a], "retain_bios": [a.biography() for a in retain_a],
        "held": {"real_authors": list(qa["real_authors"]), "world_facts": list(qa["world_facts"])},
        "texts": qa.texts() + [a.biography() for a in qa.authors],
    }


def build_demo_tokenizer(data: dict, *, vocab_size: int = 2048):
    """Byte-level BPE on the data's texts plus every QA rendered with the default template."""
    from unlearnx.data.lm_batches import QATemplate
    from unlearnx.data.text import build_tokenizer

    t = QATemplate()
    rendered = [t.render(i.question, i.answer) for s in ("forget", "retain", "holdout") for i in data[s]]
    return build_tokenizer(data["texts"] + rendered, vocab_size=vocab_size)


class EncodedItems(Dataset):
    """QA items and plain texts encoded once (`finetune_lm` / `ForgetRetainLoader` input)."""

    def __init__(self, tokenizer, items):
        from unlearnx.eval.llm.scoring import encode_items

        self.features = encode_items(tokenizer, items)
        self.pad = tokenizer.pad_token_id

    def __len__(self):
        return len(self.features)

    def __getitem__(self, i):
        return self.features[i]

    def collate(self, feats):
        from unlearnx.data.lm_batches import pad_batch

        return pad_batch(feats, pad_token_id=self.pad)


def train_lm(tokenizer, items, *, model: dict, train: dict, seed: int, progress: bool = False, device=None):
    """A fresh tiny LM (`build_lm(**model)`) fine-tuned on `items` (QA items and/or texts) with
    AdamW, linear warm-up / decay (`finetune_lm`) on `device` (default cpu). Returns (model,
    per-step losses)."""
    from unlearnx.models.lm import build_lm
    from unlearnx.models.lm_training import finetune_lm

    kw = {k: v for k, v in model.items() if k != "name"}
    lm = build_lm(model["name"], tokenizer=tokenizer, seed=seed, **kw)
    if device is not None:
        lm = lm.to(device)
    losses = finetune_lm(lm, EncodedItems(tokenizer, items), epochs=train["epochs"], lr=train["lr"],
                         batch_size=train["batch_size"], group_by_length=train.get("group_by_length", False),
                         seed=seed, progress=progress)
    return lm, losses


def _wants_oracle(name: str, hp: dict) -> bool:
    """True for a method that takes an `oracle` model as its target and was given no target source."""
    import unlearnx as ux

    defaults = ux.methods.get(name, task="causal_lm").defaults
    return "oracle" in defaults and not any(hp.get(k) is not None for k in ("target", "oracle", "surrogate"))


def _method_instance(name: str, hp: dict):
    """The method object for `hp` (validates them); the run's oracle, passed at unlearning time,
    is stood in for by a placeholder module where `_wants_oracle`."""
    import unlearnx as ux

    stand_in = {"oracle": torch.nn.Identity()} if _wants_oracle(name, hp) else {}
    return ux.methods.get(name, task="causal_lm")(**hp, **stand_in)


def _tofu_row(tofu, mu_target: float | None) -> dict:
    agg = tofu.aggregate
    row = {"forget_quality": agg.get("forget_quality"), "model_utility": agg["model_utility"],
           "forget_prob": agg["forget/probability"], "forget_rougeL": agg["forget/rouge_l_recall"],
           "forget_truth_ratio": agg["forget/truth_ratio"]}
    if "forget/fact_recall" in agg:
        row["forget_fact"] = agg["forget/fact_recall"]
    if mu_target:
        row["MU/target"] = row["model_utility"] / mu_target
    return row


def llm_summary_table(results: dict) -> str:
    """The results' table (forget quality, model utility, MU/target, ...) as Markdown text."""
    from unlearnx.report import format_value, render_markdown

    cols = _columns(results["rows"])
    body = [[name] + [format_value(r.get(c)) for c in cols] for name, r in results["rows"].items()]
    return render_markdown([("table", ["Model"] + cols, body)])


# ------------------------------------------------------------------------------------------------
# Pretrained models and benchmark files
# ------------------------------------------------------------------------------------------------

# Aggregates of each benchmark that become table columns (name in the row: name in the EvalResult).
_RWKU_COLUMNS = ("forget_fb", "forget_qa", "forget_aa", "neighbor_fb", "neighbor_qa", "mia/auc/loss",
                 "mia/auc/min_k", "utility_general", "utility_factuality_f1")
_MUSE_COLUMNS = ("verbmem_forget", "knowmem_forget", "knowmem_retain", "mink_auc", "privleak")


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "target"


class _PretrainedSetup:
    """A run on a pretrained model and benchmark files: the target, its tokenizer, the data, the keys."""

    def __init__(self, run: Run):
        from unlearnx.eval.llm import fingerprint_data

        cfg = run.cfg
        t0 = time.perf_counter()
        self.cfg, self.seed, self.dtype = cfg, cfg["seed"], cfg["dtype"]
        self.bench = cfg["data"]["benchmark"]
        self.data = load_benchmark_files(cfg)
        self.identity = pretrained_identity("model.pretrained", cfg["model"]["pretrained"])
        self.timings = {"data_s": time.perf_counter() - t0}
        t0 = time.perf_counter()
        run.echo(f"target: loading {cfg['model']['pretrained']}")
        self.target, self.tok = self.fresh(with_tokenizer=True)
        self.target = self.target.to(run.device).eval()
        self.timings["load target_s"] = time.perf_counter() - t0
        self.target_record = {"label": "target", "pretrained": self.identity, "sha256": self.identity["fingerprint"],
                              "seconds": self.timings["load target_s"], "model_file": None}
        m = cfg["model"]
        # What every method's step depends on: the model's identity, how it is loaded, the data, the seed.
        self.base_key = ("pretrained", self.identity["fingerprint"], m["dtype"] or "auto", m["lora"],
                         self.bench, fingerprint_data(_data_for_key(self.bench, self.data)),
                         {k: cfg["data"][k] for k in ("corpus_texts", "corpus_tokens")}, self.seed,
                         cfg["dtype"])
        self.corpora: dict[str, list[str]] = {}
        self.intros = _rwku_intros(cfg) if self.bench == "rwku" else {}
        self.rwku_eval: dict[str, dict] = {}
        self.oracle_model = None
        self.vectors = self.concept = None

    def fresh(self, *, with_tokenizer: bool = False, path: str | None = None, lora: bool = True):
        from unlearnx.models.lm import load_pretrained_lm

        m = self.cfg["model"]
        model, tok = load_pretrained_lm(path or m["pretrained"], dtype=m["dtype"] or "auto",
                                        lora=m["lora"] if lora else None)
        return (model, tok) if with_tokenizer else model

    def precision(self, device: torch.device):
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=DTYPES[self.dtype])

    def load_oracle(self, run: Run):
        path = self.cfg["oracle"]["pretrained"]
        if path is None:
            run.echo("Retrain: no oracle given (oracle.pretrained); metrics that need one are left out")
            return None, {"label": "Retrain", "note": "no oracle given"}
        t0 = time.perf_counter()
        identity = pretrained_identity("oracle.pretrained", path)
        model = self.fresh(path=path, lora=False).to(run.device).eval()
        self.oracle_model = model
        return model, {"label": "Retrain", "pretrained": identity, "sha256": identity["fingerprint"],
                       "seconds": time.perf_counter() - t0, "model_file": None}

    # ---- unlearning
    def _forget_retain(self):
        from unlearnx.data.lm_batches import TextDataset

        d = self.data
        if self.bench == "tofu":
            return d["forget"], d["retain"]
        return (TextDataset(d["forget"], self.tok),
                None if d.get("retain") is None else TextDataset(d["retain"], self.tok))

    def _hparams(self, name: str, hp: dict) -> dict:
        import unlearnx as ux
        from unlearnx.eval.llm import concept_token_ids

        if "concept_tokens" in ux.methods.get(name, task="causal_lm").defaults and hp.get("concept_tokens") is None:
            hp = {**hp, "concept_tokens": concept_token_ids(self.tok, _words(self.cfg["eval"]["parametric"]))}
        return hp

    def _run_method(self, run: Run, name: str, hp: dict, model, forget, retain):
        import unlearnx as ux

        extra = {"oracle": self.oracle_model} if _wants_oracle(name, hp) and self.oracle_model is not None else {}
        if _wants_oracle(name, hp) and not extra:
            raise ValueError(f"{name}: needs an oracle model (oracle.pretrained) or a target of its own")
        with self.precision(run.device):
            res = ux.unlearn(model, name, forget=forget, retain=retain, tokenizer=self.tok, seed=self.seed,
                             progress=run.progress, **hp, **extra)
        curve = res.log.get("loss") if isinstance(res.log, dict) else None
        used = {k: ("the run's Retrain oracle" if k in extra else v) for k, v in res.hparams.items()}
        return res.model, {"method": name, "seconds": res.seconds, "hparams": used,
                           "loss_curve": [float(v) for v in curve] if curve else []}

    def _fresh_result(self, name: str, hp: dict):
        skeleton = getattr(_method_instance(name, hp), "result_skeleton", None)
        return skeleton(self.fresh()) if skeleton else self.fresh()

    def unlearn(self, run: Run, entry: dict, original, original_record: dict):
        label, name = entry["label"], entry["method"]
        hp = self._hparams(name, entry["hparams"])
        if self.bench == "rwku":
            return self._unlearn_rwku(run, label, name, hp, original, original_record)
        forget, retain = self._forget_retain()

        def compute():
            run.echo(f"{name}: unlearning {self.bench} forget data ({len(forget)} items) with {hp}")
            return self._run_method(run, name, hp, copy.deepcopy(original), forget, retain)

        key = step_key("unlearn", name, hp, self.base_key, original_record["sha256"])
        model, rec = run.steps.run(label, key, run.out / "models" / label, lambda: self._fresh_result(name, hp),
                                   compute)
        return model.to(run.device).eval(), rec

    def corpus(self, run: Run, target: str) -> list[str]:
        """RWKU's zero-shot forget corpus of `target`, written by the original model (once per run)."""
        from unlearnx.eval.llm import rwku_forget_corpus
        from unlearnx.report import atomic_write_json

        if target not in self.corpora:
            d = self.cfg["data"]
            run.echo(f"{target}: the target model writes its forget corpus")
            intro = self.intros.get(target, "")  # RWKU's system prompt: "{intro} You know {target} very well."
            texts = rwku_forget_corpus(self.target, self.tok, target, n_texts=d["corpus_texts"] or 8, intro=intro,
                                       max_new_tokens=d["corpus_tokens"] or 512, seed=self.seed)
            if not texts:
                raise RuntimeError(f"{target}: the model generated only empty texts; no forget corpus to unlearn")
            self.corpora[target] = texts
            if run.ctx.is_main:
                atomic_write_json(run.out / "corpora" / f"{_slug(target)}.json", {"target": target, "texts": texts})
        return self.corpora[target]

    def _unlearn_rwku(self, run: Run, label, name, hp, original, original_record):
        from unlearnx.data.lm_batches import TextDataset

        # RWKU's batch setting: every target from a fresh copy of the target model, one after another;
        # each unlearned model is evaluated on its target's probes right away and then let go.
        records, seconds = {}, 0.0
        self.rwku_eval[label] = {}
        for target, sub in self.data.items():
            def compute(target=target):
                corpus = TextDataset(self.corpus(run, target), self.tok)
                run.echo(f"{name}: unlearning {target} ({len(corpus)} self-generated texts) with {hp}")
                return self._run_method(run, name, hp, copy.deepcopy(original), corpus, None)

            key = step_key("unlearn-rwku", name, hp, target, self.base_key, original_record["sha256"])
            model, rec = run.steps.run(f"{label}/{target}", key, run.out / "models" / label / _slug(target),
                                       lambda: self._fresh_result(name, hp), compute)
            model = model.to(run.device).eval()
            records[target] = rec
            seconds += rec.get("seconds", 0.0)
            self.rwku_eval[label][target] = self._evaluate_rwku(run, model, sub, f"{label}/{target}")
            del model
        first = next(iter(records.values()))
        return None, {"label": label, "method": name, "seconds": seconds, "hparams": first.get("hparams", {}),
                      "loss_curve": first.get("loss_curve", []), "targets": records}

    # ---- evaluation
    def _extras(self, run: Run, model, label: str) -> dict:
        return extra_evals(run, self, model, label)

    def _evaluate_rwku(self, run: Run, model, sub, label: str) -> dict:
        from unlearnx.eval.llm import evaluate_rwku

        run.echo(f"{label}: RWKU evaluation")
        mnt = min(30, self.cfg["eval"]["max_new_tokens"])
        with self.precision(run.device):
            res = evaluate_rwku(model, self.tok, sub, max_new_tokens=mnt)
        return {"result": res, **self._extras(run, model, label)}

    def evaluate(self, run: Run, models: dict, records: dict, cached: list[str]) -> dict:
        from unlearnx.eval.llm import MetricCache, evaluate_muse, evaluate_tofu, evaluate_wmdp

        ev, d = self.cfg["eval"], self.data
        cache = MetricCache(run.out / "cache")
        t0 = time.perf_counter()
        has_oracle = models.get("Retrain") is not None
        evals, extras, rows = {}, {}, {}
        for label, model in models.items():
            if label == "Retrain" and not has_oracle:
                continue
            if self.bench == "rwku":
                if model is not None:  # target and oracle: evaluated here on every target
                    self.rwku_eval[label] = {t: self._evaluate_rwku(run, model, sub, f"{label}/{t}")
                                             for t, sub in d.items()}
                continue
            run.echo(f"{label}: {self.bench} evaluation")
            with self.precision(run.device):
                if self.bench == "tofu":
                    evals[label] = evaluate_tofu(model, self.tok, forget=d["forget"],
                                                 retain=d["retain_eval"][:ev["retain_subset"]], held=d["held"],
                                                 reference=evals.get("Retrain", models.get("Retrain")),
                                                 max_new_tokens=ev["max_new_tokens"],
                                                 cache=cache, progress=run.progress)
                elif self.bench == "muse":
                    ref = evals.get("Retrain", models.get("Retrain"))
                    evals[label] = evaluate_muse(model, self.tok, forget=d["mia_forget"], holdout=d["mia_holdout"],
                                                 verbmem_texts=d["verbmem"], forget_qa=d["forget_qa"],
                                                 retain_qa=d["retain_qa"],
                                                 reference=ref.aggregate if hasattr(ref, "aggregate") else ref,
                                                 verbmem_tokens=min(128, ev["max_new_tokens"]),
                                                 knowmem_tokens=min(32, ev["max_new_tokens"]), cache=cache,
                                                 progress=run.progress)
                else:
                    evals[label] = evaluate_wmdp(model, self.tok, items=d["items"], progress=run.progress)
            extras[label] = self._extras(run, model, label)
        if self.bench == "rwku":
            for label, per_target in self.rwku_eval.items():
                keys = dict.fromkeys(k for r in per_target.values() for k in r["result"].aggregate)
                aggs = [r["result"].aggregate for r in per_target.values()]
                mean = {k: float(sum(a[k] for a in aggs if k in a) / sum(k in a for a in aggs)) for k in keys}
                rows[label] = {c: mean[c] for c in _RWKU_COLUMNS if c in mean}
                extra_rows = [r["row"] for r in per_target.values()]
                for c in dict.fromkeys(c for r in extra_rows for c in r):
                    vals = [r[c] for r in extra_rows if c in r]
                    rows[label][c] = sum(vals) / len(vals)
                extras[label] = {"lm_eval": {t: r["lm_eval"] for t, r in per_target.items()},
                                 "parametric": {t: r["parametric"] for t, r in per_target.items()}}
            order = [k for k in models if k in rows]
            rows = {k: rows[k] for k in order}
        else:
            mu_target = evals["target"].aggregate.get("model_utility") if self.bench == "tofu" else None
            for label, res in evals.items():
                if self.bench == "tofu":
                    row = {k: v for k, v in _tofu_row(res, mu_target).items() if v is not None}
                elif self.bench == "muse":
                    row = {c: res.aggregate[c] for c in _MUSE_COLUMNS if c in res.aggregate}
                else:
                    row = {k.split("/")[0]: v for k, v in res.aggregate.items()}
                rows[label] = {**row, **extras[label]["row"]}
        for e in self.cfg["_methods"]:
            rows[e["label"]]["unlearn_s"] = records[e["label"]]["seconds"]
        timings = dict(self.timings)
        for label, rec in records.items():
            if label not in ("target", "Retrain"):
                timings[f"unlearn {label}_s"] = rec["seconds"]
        timings["evaluation_s"] = time.perf_counter() - t0
        return {"rows": rows, "records": {k: v for k, v in records.items() if k != "Retrain" or has_oracle},
                "evals": evals, "extras": extras, "cached": cached, "timings": timings, "cache": cache,
                "data": _data_summary(self), "has_oracle": has_oracle,
                "rwku": {label: {t: r["result"].aggregate for t, r in per_target.items()}
                         for label, per_target in self.rwku_eval.items() if label in rows}}


def extra_evals(run: Run, setup, model, label: str) -> dict:
    """lm-eval scores and concept-vector drift of one model (eval.lm_eval, eval.parametric): {"row":
    {columns}, "lm_eval": {task: {metric: value}} or None, "parametric": drift or None}. `setup`: the
    run's setup (tok, target, precision); the concept vectors, located once in the target, stay on it."""
    from unlearnx.eval.llm import concept_token_ids, concept_vector_drift, locate_concept_vectors, run_lm_eval

    ev = run.cfg["eval"]
    row, lm, drift = {}, None, None
    if ev["lm_eval"] is not None:
        le = ev["lm_eval"]
        tasks = le["tasks"] if isinstance(le["tasks"], list) else [le["tasks"]]
        run.echo(f"{label}: lm-eval {[t if isinstance(t, str) else t.get('task') for t in tasks]}")
        with setup.precision(run.device):
            lm = run_lm_eval(model, setup.tok, tasks, limit=le.get("limit"), batch_size=le.get("batch_size", 8),
                             num_fewshot=le.get("num_fewshot"), seed=setup.seed)
        for task, metrics in lm.items():
            for metric, value in metrics.items():
                if "stderr" not in metric:
                    row[f"{task}/{metric.split(',')[0]}"] = value
    if ev["parametric"] is not None:
        pm = ev["parametric"]
        if setup.vectors is None:
            setup.concept = concept_token_ids(setup.tok, _words(pm))
            setup.vectors = locate_concept_vectors(setup.target, setup.concept, top_n=pm.get("top_n", 10),
                                                  top_k=pm.get("top_k", 50))
        drift = concept_vector_drift(model, setup.vectors, setup.concept)
        row.update(cv_cosine=drift["cosine"], cv_topk_overlap=drift["topk_overlap"],
                   cv_score=drift["score_after"])
    return {"row": row, "lm_eval": lm, "parametric": drift}


def _rwku_intros(cfg: dict) -> dict[str, str]:
    """{target: intro} from RWKU's intro.json files (the `intro` field, when present)."""
    from unlearnx.data.benchmarks import read_records, rwku_targets

    root = Path(cfg["data"]["path"])
    try:
        folders = [f for _, f in rwku_targets(root)]
    except FileNotFoundError:
        folders = [root]
    out = {}
    for f in folders:
        file = f / "intro.json"
        if file.is_file():
            for rec in read_records(file):
                if isinstance(rec, dict) and isinstance(rec.get("target"), str) and isinstance(rec.get("intro"), str):
                    out[rec["target"]] = rec["intro"]
    return out


def _words(pm: dict) -> list[str]:
    words = pm["concept"]
    return [words] if isinstance(words, str) else list(words)


def _data_for_key(bench: str, data: dict):
    """The part of the loaded data the unlearning step reads (its key)."""
    if bench == "tofu":
        return [(i.question, i.answer) for i in data["forget"]], [(i.question, i.answer) for i in data["retain"]]
    if bench == "rwku":
        return sorted(data)
    return data["forget"], data.get("retain")


def _data_summary(setup: _PretrainedSetup) -> dict:
    cfg, d = setup.cfg["data"], setup.data
    out = {"benchmark": setup.bench, "path": cfg["path"]}
    if setup.bench == "tofu":
        out.update(split=d["split"], n_forget=len(d["forget"]), n_retain=len(d["retain"]),
                   retain_split=d["retain_split"], n_retain_eval=len(d["retain_eval"]),
                   held={k: len(v) for k, v in d["held"].items()})
    elif setup.bench == "muse":
        out.update(n_forget=len(d["forget"]), n_retain=0 if d["retain"] is None else len(d["retain"]),
                   retain_split=d["retain_split"], n_privleak_forget=len(d["mia_forget"]),
                   n_privleak_holdout=len(d["mia_holdout"]),
                   **{f"n_{k}": len(d[k]) for k in ("verbmem", "forget_qa", "retain_qa") if d[k] is not None})
    elif setup.bench == "wmdp":
        out.update(n_forget=len(d["forget"]), n_retain=0 if d["retain"] is None else len(d["retain"]),
                   questions={k: len(v) for k, v in d["items"].items()})
    else:
        out.update(targets=list(d), corpus_texts=cfg["corpus_texts"] or 8, corpus_tokens=cfg["corpus_tokens"] or 512,
                   probes={t: {k: len(v) for k, v in {**{f"forget_{k}": v for k, v in sub.forget.items()},
                                                       **{f"neighbor_{k}": v for k, v in sub.neighbor.items()}}.items()}
                           for t, sub in d.items()})
    return out


def _pretrained_results(run: Run, s: dict) -> dict:
    cfg = run.cfg
    public_cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    setup_ident = s["records"]["target"]["pretrained"]
    out = {
        "format": "unlearnx-llm-results/1",
        "config_key": step_key(public_cfg),
        "data": s["data"],
        "pretrained": setup_ident,
        "oracle": s["records"]["Retrain"]["pretrained"] if s["has_oracle"] else None,
        "device": {"device": str(run.device), "dtype": cfg["dtype"], "storage_dtype": cfg["model"]["dtype"] or "auto",
                   "gpu": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else None},
        "rows": s["rows"],
        "methods": [e["label"] for e in cfg["_methods"]],
        "skipped": cfg["_skipped"],
        "runs": s["records"],
        "cached_steps": s["cached"],
        "metric_cache": {"hits": s["cache"].hits, "misses": s["cache"].misses},
        "timings": s["timings"],
    }
    bench = s["data"]["benchmark"]
    if bench == "tofu":
        out["tofu"] = {label: {"aggregate": r.aggregate, "forget_truth_ratio_raw": r.per_item["forget/truth_ratio_raw"]}
                       for label, r in s["evals"].items()}
    elif bench in ("muse", "wmdp"):
        out[bench] = {label: {"aggregate": r.aggregate} for label, r in s["evals"].items()}
    else:
        out["rwku"] = {label: s["rwku"][label] for label in s["rows"]}
    out.update(_extra_results(cfg, s["extras"]))
    return out


def _extra_results(cfg: dict, extras: dict) -> dict:
    """results.json's "lm_eval" and "parametric" entries (those configured)."""
    out = {}
    if cfg["eval"]["lm_eval"] is not None:
        out["lm_eval"] = {label: e["lm_eval"] for label, e in extras.items()}
    if cfg["eval"]["parametric"] is not None:
        out["parametric"] = {"concept": _words(cfg["eval"]["parametric"]),
                             "drift": {label: e["parametric"] for label, e in extras.items()}}
    return out


def _figures(results: dict) -> dict[str, tuple[str, bytes]]:
    from unlearnx.report import loss_curves, tradeoff_scatter

    # Forget quality spans decades (KS p-values): plot its log10.
    pts = {n: {"log10(forget_quality)": math.log10(max(r.get("forget_quality") or 0.0, 1e-300)),
               "model_utility": r.get("model_utility")} for n, r in results["rows"].items()}
    if not all(r.get("forget_quality") is not None and r.get("model_utility") is not None
               for r in results["rows"].values()):
        pts = None  # no oracle, or another benchmark: no TOFU trade-off plot
    figs = {} if pts is None else {"tradeoff.png": ("Forget quality (log10 KS p-value, right is better "
                                                    "forgetting) against model "
                             "utility (up is better); the star is the retain oracle.",
                             tradeoff_scatter(pts, x="log10(forget_quality)", y="model_utility"))}
    curves = {n: r["loss_curve"] for n, r in results["runs"].items() if r.get("loss_curve")}
    if curves:
        figs["loss_curves.png"] = ("Loss per epoch: training of the target and the oracle (token NLL), and each "
                                   "unlearning method's logged loss.", loss_curves(curves))
    return figs


def _pretrained_intro(results: dict) -> str:
    d, cfg = results["data"], results["config"]
    b = d["benchmark"]
    what = {
        "tofu": lambda: (f"TOFU (Maini et al., 2024) files: {d['split']} ({d['n_forget']} QA) unlearned with "
                 f"{d['retain_split']} ({d['n_retain']} QA) as retain data; utility on the first "
                 f"{min(cfg['eval']['retain_subset'], d['n_retain_eval'])} retain_perturbed QA and the held sets "
                 f"{d['held']}."),
        "muse": lambda: (f"MUSE (Shi et al., 2024) files: raw/forget ({d['n_forget']} texts) unlearned with raw/"
                 f"{d['retain_split']} ({d['n_retain']} texts) as retain data; VerbMem, KnowMem and PrivLeak "
                 "(Min-K% forget vs holdout) as MUSE defines them."),
        "wmdp": lambda: (f"WMDP (Li et al., 2024): the forget corpus ({d['n_forget']} texts) unlearned"
                 + (f" with a retain corpus ({d['n_retain']} texts)" if d["n_retain"] else "")
                 + f"; accuracy on {d['questions']} questions (lm-eval's wmdp prompt). General utility (MMLU) "
                 "only through eval.lm_eval."),
        "rwku": lambda: (f"RWKU (Jin et al., 2024), zero-shot: for each of the targets {d['targets']} the target model "
                 f"writes {d['corpus_texts']} texts about it (its forget corpus; saved under corpora/), every "
                 "method unlearns it from a fresh copy of the target model (the batch setting, one target after "
                 "another), and the probes of that target are answered; the table shows the mean over the "
                 "targets (results.json has each target)."),
    }[b]()
    oracle = (f"**Retrain** is the given retain model ({results['oracle']['pretrained']})." if results["oracle"] else
              "No oracle (retain model) was given (oracle.pretrained): the metrics that need one (TOFU's forget "
              "quality, MUSE's PrivLeak) are left out.")
    return (f"{what} **target** is the pretrained model {results['pretrained']['pretrained']} (weights "
            f"{results['device']['storage_dtype']}, fingerprint {results['pretrained']['fingerprint'][:16]}); "
            f"{oracle}")


def _pretrained_blocks(results: dict) -> list[tuple]:
    from unlearnx.report import format_value

    blocks: list[tuple] = []
    if "rwku" in results:
        blocks.append(("h", 2, "RWKU per target"))
        for label, per_target in results["rwku"].items():
            keys = list(dict.fromkeys(k for agg in per_target.values() for k in agg))
            blocks += [("p", f"**{label}**"),
                       ("table", ["Target"] + keys, [[t] + [format_value(agg.get(k)) for k in keys]
                                                     for t, agg in per_target.items()])]
    if "parametric" in results:
        p = results["parametric"]
        blocks += [("h", 2, "Concept vectors (Hong et al., 2024)"),
                   ("p", f"Concept {p['concept']}: value vectors located in the target model, their drift in each "
                         "model (cosine 1 and overlap 1 = untouched).")]
    return blocks


def _write_report(results: dict, out: Path) -> None:
    from unlearnx.report import (atomic_write_bytes, atomic_write_text, format_value, render_html, render_markdown,
                                 reproducibility_blocks)

    figures = _figures(results)
    for name, (_, png) in figures.items():
        atomic_write_bytes(out / "plots" / name, png)
    d, cfg = results["data"], results["config"]
    rows = results["rows"]
    cols = _columns(rows)
    intro = _pretrained_intro(results) if "benchmark" in d else None
    blocks: list[tuple] = [
        ("h", 1, f"unlearnx report: {results['name']}"),
        ("p", intro) if intro else
        ("p", (f"TOFU-style unlearning (Maini et al. 2024) on the built-in fictitious authors: forget10 = "
               f"{d['n_forget']} QA of {d['forget_authors']} author(s), retain90 = {d['n_retain']} QA, held sets "
               f"{d['held']}; tiny {cfg['model']['name']} (hidden {cfg['model']['hidden']}, {cfg['model']['layers']} layers) "
               f"trained {cfg['train']['epochs']} epochs. **Retrain** is the retain oracle (same recipe without "
               f"the forget authors); **target** is the model before unlearning. Utility is measured on the "
               f"first {cfg['eval']['retain_subset']} retain QA and the held sets; greedy answers of "
               f"{cfg['eval']['max_new_tokens']} tokens for ROUGE.")),
        ("h", 2, "Results"),
        ("table", ["Model"] + cols, [[n] + [format_value(r.get(c)) for c in cols] for n, r in rows.items()]),
        ("table", ["Column", "meaning"], [[c, _column_help(c)] for c in cols]),
    ]
    blocks += _pretrained_blocks(results)
    if results["skipped"]:
        blocks.append(("p", "Not run: " + "; ".join(f"{s['method']} ({s['reason']})" for s in results["skipped"])
                       + "."))
    blocks += [("h", 2, "Methods and hyper-parameters"),
               ("table", ["Method", "hyper-parameters used"],
                [[m, json.dumps(results["runs"][m].get("hparams", {}), sort_keys=True)] for m in results["methods"]])]
    blocks.append(("h", 2, "Figures"))
    blocks += [("img", name, png, caption) for name, (caption, png) in figures.items()]
    blocks += [("h", 2, "Models (safetensors)"),
               ("table", ["Model", "file", "sha256"],
                [[n, r.get("model_file") or (r["pretrained"]["dir"] if r.get("pretrained") else
                                             f"{len(r.get('targets', {}))} per-target models under models/{n}/"),
                  r.get("sha256") or "–"] for n, r in results["runs"].items()])]
    blocks += reproducibility_blocks(results, extra=(
        "Reused from an earlier run: " + (", ".join(results["cached_steps"]) or "nothing") + ".",))
    atomic_write_text(out / "report.md", render_markdown(blocks, figure_dir="plots"))
    atomic_write_text(out / "report.html", render_html(blocks, title=f"unlearnx report: {results['name']}"))


def run_llm_demo(out_dir="runs/demo-llm", *, quick: bool = False, methods: Sequence[str] | None = None,
                 quiet: bool = False, seed: int = 0, device: str = "cpu", dtype: str = "float32",
                 echo: Callable[[str], None] | None = None) -> dict:
    """Run the LLM demo (`llm_demo_config`, see the module docstring) into `out_dir`; return the
    results dict. Raises ValueError naming the argument for bad input (e.g. an unregistered method
    named in `methods`)."""
    from unlearnx.experiments.run import run_experiment

    return run_experiment(llm_demo_config(quick=quick, methods=methods, seed=seed, out_dir=str(out_dir),
                                          device=device, dtype=dtype), quiet=quiet, echo=echo)
