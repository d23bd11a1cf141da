"""The LLM task (`task: llm` configs, `unlearnx demo --task llm`): TOFU-style forget10 on the built-in
fictitious authors.

Pipeline (the reusable parts of benchmarks/bench_llm_eval.py):

1. Data (`build_authors_data`): `make_authors(N + k)`; the first N authors are exactly those of
   `make_authors(N)`, whose forget10 is the last k = ceil(10% N) of them and retain90 the rest;
   the k authors after them are a holdout never trained on. The held utility sets are the
   real_authors / world_facts splits; every author also has a biography (verbatim text).
2. Models: a byte-level BPE tokenizer trained on the data, a tiny Llama "target" trained on
   forget + retain QA, their biographies and the held sets, and a retain oracle ("Retrain")
   trained with the same recipe without the forget authors (`train_lm`).
3. Unlearning: GA, GradDiff, NPO, SimNPO, ULD (`LLM_DEMO_METHODS`; any method not registered is
   skipped with a note) from the target on forget10, with the tiny-model hyper-parameters of
   tests/methods_llm (`METHOD_HPARAMS`: lr 1e-3, i.e. ~100x the 7B defaults, 3 epochs, batch 8;
   SimNPO gamma 1 and 6 epochs; ULD a 1-layer assistant, lr 1e-2, 60 epochs). A method whose result
   is a wrapper (ULD's target + assistant) is reloaded through its `result_skeleton`.
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
native kernels built, torch 2.13 CPU, 1 torch thread):
- quick: 6 authors (forget10 = 20 QA), 15 epochs, utility on 20 retain QA + 12 held QA, 24-token
  answers: 41-50 s end to end (training ~35 s, the four methods ~1 s, evaluation ~5 s); with ULD
  (its assistant trains 60 short epochs, ~4 s) 42 s at load average ~2, 91 s at load 5-8.
- full: 20 authors (forget10 = 40 QA of 2 authors), 30 epochs, utility on 60 retain QA + 34 held
  QA, 48-token answers: 300 s (target 172 s, oracle 114 s, methods 4 s, evaluation 9 s).
- a rerun with the same config: ~1 s (everything loaded). 1 vs 2 torch threads measured the same
  within the noise of the shared machine (quick: 41 s vs 44 s); 1 thread avoids stalls on a
  descheduled worker thread, as in the classification demo.
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

from unlearnx.experiments.config import ConfigError, Field, check_range, suggest, validate_methods
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
    "rmu": {"lr": 1e-2, "epochs": 5, "steering_coeff": 20.0, "alpha": 100.0},  # needs >= 3 layers
}

# Columns of the printed table / report, with how to read them.
COLUMNS = {
    "forget_quality": "KS-test p-value vs the retain oracle's forget truth ratios (↑, oracle = 1)",
    "model_utility": "harmonic mean of probability, ROUGE-L, truth ratio on retain + held sets (↑)",
    "MU/target": "model utility / the target's (↑, ≥ 0.95 keeps utility)",
    "forget_prob": "mean P(answer | question) on forget10 (→ oracle)",
    "forget_rougeL": "ROUGE-L recall of greedy answers on forget10 (→ oracle)",
    "forget_truth_ratio": "mean min(R, 1/R) on forget10 (→ oracle)",
    "unlearn_s": "unlearning wall time (s)",
}


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


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
            "n_real_authors": Field("int", 8, help="held 'real authors' utility set size"),
            "n_world_facts": Field("int", 18, help="held 'world facts' utility set size"),
            "vocab_size": Field("int", 2048, help="byte-level BPE vocabulary trained on the data"),
        },
        "model": {
            "name": Field("str", "llama", help="a builder of unlearnx.models.lm (available_lms())"),
            "hidden": Field("int", 64), "layers": Field("int", 2), "heads": Field("int", 4),
            "kwargs": Field("dict", {}, help="other builder arguments (e.g. experts, top_k for moe)"),
        },
        "train": {"epochs": Field("int", 30), "lr": Field("number", 2e-3), "batch_size": Field("int", 16)},
        "methods": Field("any", list(LLM_DEMO_METHODS),
                         help="list of method names or {name, label?, optional?, <hparams>}; hyper-parameters "
                              "default to BASE_HPARAMS and METHOD_HPARAMS (tiny-model values)"),
        "eval": {"retain_subset": Field("int", 60, help="retain QA scored for model utility"),
                 "max_new_tokens": Field("int", 48, help="greedy answer length for ROUGE")},
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
                                       n_world_facts=dc["n_world_facts"])
        self.tok = build_demo_tokenizer(self.data, vocab_size=dc["vocab_size"])
        self.held = [i for v in self.data["held"].values() for i in v]
        if run.ctx.world_size > 1 and len(set(run.ctx.all_gather(fingerprint_tokenizer(self.tok)))) > 1:
            # Each rank trains its own tokenizer; different vocabularies would pair unrelated models.
            raise RuntimeError("the ranks built different tokenizers from the same data; run with one process")
        self.timings = {"data_tokenizer_s": time.perf_counter() - t0}
        # bf16 training gives other weights; fp32 keys stay those of earlier run folders.
        self.base_key = (cfg["data"], cfg["model"], cfg["train"], self.seed) + (
            (cfg["dtype"],) if cfg["dtype"] != "float32" else ())
        self.model_kw = {**{k: v for k, v in cfg["model"].items() if k not in ("name", "kwargs")},
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
        methods, skipped = validate_methods(cfg["methods"], self.method_task)
        for i, entry in enumerate(methods):
            cls = ux.methods.get(entry["method"], task="causal_lm")
            base = {k: v for k, v in {**BASE_HPARAMS, **METHOD_HPARAMS.get(entry["method"], {})}.items()
                    if k in cls.defaults}
            entry["hparams"] = {**base, **entry["hparams"]}
            try:
                _method_instance(entry["method"], entry["hparams"])
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
    def setup(self, run: Run, seed: int) -> _Setup:
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
        d = setup.data
        return self._train(run, setup, "target",
                           d["forget"] + d["retain"] + setup.held + d["forget_bios"] + d["retain_bios"])

    def oracle(self, run: Run, setup: _Setup):
        d = setup.data
        model, rec = self._train(run, setup, "Retrain", d["retain"] + setup.held + d["retain_bios"])
        setup.oracle_model = model  # the target of methods calibrated against an unlearning target (ECO)
        return model, rec

    def unlearn(self, run: Run, setup: _Setup, entry: dict, original, original_record: dict):
        import unlearnx as ux

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
        labels = [e["label"] for e in run.cfg["_methods"]]
        for label in labels:
            rows[label]["unlearn_s"] = records[label]["seconds"]
        d = data
        summary = {"n_forget": len(d["forget"]), "n_retain": len(d["retain"]),
                   "forget_authors": len(d["forget_bios"]), "n_holdout": len(d["holdout"]),
                   "held": {k: len(v) for k, v in d["held"].items()}}
        return {"rows": rows, "records": records, "tofu": tofu, "cached": cached, "timings": timings,
                "cache": cache, "data": summary}

    # ---- the whole run
    def results(self, run: Run, per_seed: list[dict]) -> dict:
        s, cfg = per_seed[0], run.cfg
        public_cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
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
        }

    def write_report(self, results: dict, out) -> None:
        _write_report(results, Path(out))

    def summary(self, results: dict) -> str:
        d = results["data"]
        return (f"\n{results['name']}: forget10 = {d['n_forget']} QA, retain90 = {d['n_retain']} QA; "
                f"Retrain = the retain oracle, target = before unlearning\n" + llm_summary_table(results))


def llm_demo_config(*, quick: bool = False, methods: Sequence[str] | None = None, seed: int = 0,
                    out_dir: str = "runs/demo-llm", device: str = "cpu", dtype: str = "float32") -> dict:
    """The demo's configuration (an LLM experiment config, see `LLMTask.validate`).

    quick: fewer authors and epochs and a smaller evaluation (under 5 minutes on 2 CPU cores).
    methods: unlearning methods to run (default `LLM_DEMO_METHODS`, each skipped with a note when
    not registered; explicitly named methods must be registered for task "causal_lm").
    device, dtype: where and in which precision it runs (see the module docstring).
    """
    if methods is not None and (isinstance(methods, str) or not all(isinstance(m, str) for m in methods)):
        raise ValueError(f"methods: expected a list of method names, got {methods!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed: must be an int, got {seed!r}")
    size = ({"authors": 6, "epochs": 15, "n_real_authors": 4, "n_world_facts": 8, "eval_retain": 20,
             "max_new_tokens": 24} if quick else
            {"authors": 20, "epochs": 30, "n_real_authors": 8, "n_world_facts": 18, "eval_retain": 60,
             "max_new_tokens": 48})
    entries = ([{"name": m} for m in methods] if methods is not None
               else [{"name": m, "optional": True} for m in LLM_DEMO_METHODS])
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
        "train": {"epochs": size["epochs"], "lr": 2e-3, "batch_size": 16},
        "methods": entries,
        "eval": {"retain_subset": size["eval_retain"], "max_new_tokens": size["max_new_tokens"]},
    }


def build_authors_data(n_authors: int, *, n_real_authors: int = 8, n_world_facts: int = 18) -> dict:
    """forget10 / retain90 / holdout QA, biographies, held sets and tokenizer texts (see module doc)."""
    from unlearnx.data.authors import make_authors

    if not isinstance(n_authors, int) or n_authors < 2:
        raise ValueError(f"n_authors: expected an int >= 2, got {n_authors!r}")
    k = max(1, math.ceil(0.1 * n_authors))
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
                         batch_size=train["batch_size"], seed=seed, progress=progress)
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
    if mu_target:
        row["MU/target"] = row["model_utility"] / mu_target
    return row


def llm_summary_table(results: dict) -> str:
    """The results' table (forget quality, model utility, MU/target, ...) as Markdown text."""
    from unlearnx.report import format_value, render_markdown

    cols = [c for c in COLUMNS if any(c in r for r in results["rows"].values())]
    body = [[name] + [format_value(r.get(c)) for c in cols] for name, r in results["rows"].items()]
    return render_markdown([("table", ["Model"] + cols, body)])


def _figures(results: dict) -> dict[str, tuple[str, bytes]]:
    from unlearnx.report import loss_curves, tradeoff_scatter

    # Forget quality spans decades (KS p-values): plot its log10.
    pts = {n: {"log10(forget_quality)": math.log10(max(r["forget_quality"], 1e-300)),
               "model_utility": r["model_utility"]} for n, r in results["rows"].items()}
    figs = {"tradeoff.png": ("Forget quality (log10 KS p-value, right is better forgetting) against model "
                             "utility (up is better); the star is the retain oracle.",
                             tradeoff_scatter(pts, x="log10(forget_quality)", y="model_utility"))}
    curves = {n: r["loss_curve"] for n, r in results["runs"].items() if r.get("loss_curve")}
    if curves:
        figs["loss_curves.png"] = ("Loss per epoch: training of the target and the oracle (token NLL), and each "
                                   "unlearning method's logged loss.", loss_curves(curves))
    return figs


def _write_report(results: dict, out: Path) -> None:
    from unlearnx.report import atomic_write_bytes, atomic_write_text, format_value, render_html, render_markdown

    figures = _figures(results)
    for name, (_, png) in figures.items():
        atomic_write_bytes(out / "plots" / name, png)
    d, cfg = results["data"], results["config"]
    rows = results["rows"]
    cols = [c for c in COLUMNS if any(c in r for r in rows.values())]
    blocks: list[tuple] = [
        ("h", 1, f"unlearnx report: {results['name']}"),
        ("p", (f"TOFU-style unlearning (Maini et al. 2024) on the built-in fictitious authors: forget10 = "
               f"{d['n_forget']} QA of {d['forget_authors']} author(s), retain90 = {d['n_retain']} QA, held sets "
               f"{d['held']}; tiny {cfg['model']['name']} (hidden {cfg['model']['hidden']}, {cfg['model']['layers']} layers) "
               f"trained {cfg['train']['epochs']} epochs. **Retrain** is the retain oracle (same recipe without "
               f"the forget authors); **target** is the model before unlearning. Utility is measured on the "
               f"first {cfg['eval']['retain_subset']} retain QA and the held sets; greedy answers of "
               f"{cfg['eval']['max_new_tokens']} tokens for ROUGE.")),
        ("h", 2, "Results"),
        ("table", ["Model"] + cols, [[n] + [format_value(r.get(c)) for c in cols] for n, r in rows.items()]),
        ("table", ["Column", "meaning"], [[c, COLUMNS[c]] for c in cols]),
    ]
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
                [[n, r["model_file"], r["sha256"]] for n, r in results["runs"].items()])]
    blocks += [("h", 2, "Reproducibility"),
               ("p", "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ". Machine: "
                + ", ".join(f"{k} {v}" for k, v in results["machine"].items()) + "."),
               ("p", "Reused from an earlier run: " + (", ".join(results["cached_steps"]) or "nothing") + "."),
               ("p", "Timings (s): " + ", ".join(f"{k} {format_value(v)}" for k, v in results["timings"].items())
                + "."),
               ("p", "Configuration:"), ("pre", json.dumps(cfg, indent=2, sort_keys=True))]
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
