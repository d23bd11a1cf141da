"""The LLM demo (`unlearnx demo --task llm`): TOFU-style forget10 on the built-in fictitious authors.

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

import copy
import datetime as _dt
import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

__all__ = ["LLM_DEMO_METHODS", "METHOD_HPARAMS", "BASE_HPARAMS", "llm_demo_config", "validate_llm_config",
           "build_authors_data", "EncodedItems", "train_lm", "run_llm_experiment", "run_llm_demo", "llm_summary_table"]

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


def _llm_schema() -> dict:
    from unlearnx.experiment import Field

    return {
        "task": Field("str", "llm", choices=("llm",)),
        "name": Field("str", "llm experiment", help="report title, default output folder"),
        "out_dir": Field("str", None, help="run directory (default runs/<name>)"),
        "seed": Field("int", 0, help="data order, model initialisation and every method's seed"),
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


def validate_llm_config(config: Mapping) -> dict:
    """Check an LLM experiment config (`task: llm`) and return a complete copy with defaults.

    Adds "_methods" ([{label, method, hparams}], hparams = BASE_HPARAMS < METHOD_HPARAMS < the
    entry's own, limited to the method's hyper-parameters; each method is instantiated once so bad
    values fail here, before any work) and "_skipped". Raises ConfigError naming the key.
    """
    import unlearnx as ux
    from unlearnx.experiment import ConfigError, _suggest, _validate_methods, _validate_section
    from unlearnx.models.lm import available_lms

    cfg = _validate_section({k: v for k, v in config.items() if not str(k).startswith("_")}, _llm_schema(), "")
    if cfg["out_dir"] is None:
        cfg["out_dir"] = str(Path("runs") / re.sub(r"[^A-Za-z0-9._-]+", "_", cfg["name"]))
    for path, value, low in (("threads", cfg["threads"], 0), ("data.authors", cfg["data"]["authors"], 2),
                             ("data.vocab_size", cfg["data"]["vocab_size"], 300),
                             ("data.n_real_authors", cfg["data"]["n_real_authors"], 0),
                             ("data.n_world_facts", cfg["data"]["n_world_facts"], 0),
                             ("model.hidden", cfg["model"]["hidden"], 1), ("model.layers", cfg["model"]["layers"], 1),
                             ("model.heads", cfg["model"]["heads"], 1), ("train.epochs", cfg["train"]["epochs"], 1),
                             ("train.batch_size", cfg["train"]["batch_size"], 1),
                             ("eval.retain_subset", cfg["eval"]["retain_subset"], 1),
                             ("eval.max_new_tokens", cfg["eval"]["max_new_tokens"], 1)):
        if value < low:
            raise ConfigError(f"config key {path!r}: expected an integer >= {low}, got {value}")
    if not cfg["train"]["lr"] > 0:
        raise ConfigError(f"config key 'train.lr': expected a number > 0, got {cfg['train']['lr']}")
    if cfg["model"]["name"] not in available_lms():
        raise ConfigError(f"config key 'model.name': unknown model {cfg['model']['name']!r}"
                          f"{_suggest(cfg['model']['name'], available_lms())}")
    clash = sorted(set(cfg["model"]["kwargs"]) & {"hidden", "layers", "heads", "vocab_size", "tokenizer", "seed"})
    if clash:
        raise ConfigError(f"config key 'model.kwargs': {clash} are set elsewhere (model.hidden/layers/heads; the "
                          "vocabulary comes from the tokenizer, the seed from 'seed')")
    methods, skipped = _validate_methods(cfg["methods"], task="causal_lm")
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


def llm_demo_config(*, quick: bool = False, methods: Sequence[str] | None = None, seed: int = 0,
                    out_dir: str = "runs/demo-llm") -> dict:
    """The demo's configuration (an LLM experiment config, see `validate_llm_config`).

    quick: fewer authors and epochs and a smaller evaluation (under 5 minutes on 2 CPU cores).
    methods: unlearning methods to run (default `LLM_DEMO_METHODS`, each skipped with a note when
    not registered; explicitly named methods must be registered for task "causal_lm").
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


def train_lm(tokenizer, items, *, model: dict, train: dict, seed: int, progress: bool = False):
    """A fresh tiny LM (`build_lm(**model)`) fine-tuned on `items` (QA items and/or texts) with
    AdamW, linear warm-up / decay (`finetune_lm`). Returns (model, per-step losses)."""
    from unlearnx.models.lm import build_lm
    from unlearnx.models.lm_training import finetune_lm

    kw = {k: v for k, v in model.items() if k != "name"}
    lm = build_lm(model["name"], tokenizer=tokenizer, seed=seed, **kw)
    losses = finetune_lm(lm, EncodedItems(tokenizer, items), epochs=train["epochs"], lr=train["lr"],
                         batch_size=train["batch_size"], seed=seed, progress=progress)
    return lm, losses


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _epoch_means(losses: Sequence[float], epochs: int) -> list[float]:
    # Per-step losses -> one mean per epoch (what the loss-curve figure shows).
    n = max(1, len(losses) // max(1, epochs))
    return [float(sum(losses[i:i + n]) / len(losses[i:i + n])) for i in range(0, len(losses), n)]


class _Steps:
    """Cached steps of one run directory: models/<label>.safetensors + models/<label>.json.

    eval_only: never compute; a step without a matching saved model raises FileNotFoundError.
    Under torchrun every rank runs every step (the loops are collective); rank 0 alone reads and
    writes the folder and broadcasts the step's record, so all ranks reuse or compute alike.
    """

    def __init__(self, out: Path, echo: Callable[[str], None], *, eval_only: bool = False):
        from unlearnx.distributed import current

        self.out, self.echo, self.eval_only = out, echo, eval_only
        self.ctx = current()
        self.cached: list[str] = []

    def run(self, label: str, key: str, fresh_model: Callable[[], torch.nn.Module],
            compute: Callable[[], tuple[torch.nn.Module, dict]]) -> tuple[torch.nn.Module, dict]:
        """Load step `label` when its record matches `key` and its weights' sha256, else compute it
        (compute() -> (model, record)) and save weights then record (a record always points at
        complete weights). A result whose class differs from `fresh_model()`'s (a wrapper with no
        skeleton to load into, e.g. a prompt guard) is saved for inspection but recomputed on a
        rerun: it cannot be rebuilt from its weights alone."""
        from unlearnx.distributed import broadcast_parameters_
        from unlearnx.experiment import _file_sha256
        from unlearnx.report import atomic_write_json, load_state_dict, read_json, save_state_dict

        weights, rec_path = self.out / "models" / f"{label}.safetensors", self.out / "models" / f"{label}.json"
        decision: tuple[str, object] = ("compute", None)
        if self.ctx.is_main:
            rec = read_json(rec_path)
            if (rec is not None and rec.get("key") == key and rec.get("reloadable", True) and weights.is_file()
                    and _file_sha256(weights) == rec.get("sha256")):
                decision = ("reuse", rec)
            elif self.eval_only:
                decision = ("missing", "its result is a wrapper model that is not stored" if rec is not None
                            and not rec.get("reloadable", True) else "it is missing or was made with another config")
        action, value = self.ctx.broadcast(decision)  # rank 0 decides; every rank reuses or computes alike
        if action == "reuse":
            self.echo(f"{label}: reusing {weights.relative_to(self.out)}")
            self.cached.append(label)
            return load_state_dict(fresh_model(), weights).eval(), value
        if action == "missing":
            raise FileNotFoundError(f"{label}: no saved model to evaluate at {weights} ({value}); "
                                    "run `unlearnx run` first")
        model, rec = compute()
        # Every rank continues from rank 0's weights, the ones saved (training runs whole per rank).
        broadcast_parameters_(model, self.ctx)
        rec = {"label": label, "key": key, **rec, "reloadable": type(model) is type(fresh_model())}
        if self.ctx.is_main:
            save_state_dict(model, weights, metadata={"unlearnx_step": label, "key": key})
            rec["sha256"] = _file_sha256(weights)
            rec["model_file"] = str(weights.relative_to(self.out))
            rec["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            atomic_write_json(rec_path, rec)
        # The other ranks need the record too (its sha256 keys the methods' steps).
        return model.eval(), self.ctx.broadcast(rec)


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


def run_llm_experiment(config: Mapping, out_dir=None, *, quiet: bool = False, eval_only: bool = False,
                       echo: Callable[[str], None] | None = None) -> dict:
    """Run an LLM experiment (`task: llm` config, see `validate_llm_config`) into `out_dir`
    (default: the config's out_dir); return the results dict.

    Trains (or reloads) the target and the retain oracle, runs every method on a copy of the
    target, evaluates all of them with the TOFU metrics against the oracle, and writes
    results.json, report.md, report.html, plots/*.png, models/*.safetensors (+ records) and cache/
    (metric values). eval_only: never train or unlearn (FileNotFoundError naming a missing model).
    Under torchrun (unlearnx.distributed) every rank runs the experiment: each trains the target and
    the oracle whole with the same seed (rank 0's weights are then broadcast), unlearning and
    evaluation are collective; rank 0 alone writes files and talks, and broadcasts each step's record.
    """
    import unlearnx as ux
    from unlearnx.distributed import current
    from unlearnx.eval.llm import MetricCache, evaluate_tofu, fingerprint_tokenizer
    from unlearnx.experiment import ConfigError, machine, versions
    from unlearnx.report import atomic_write_json

    cfg = validate_llm_config(config)
    out = Path(out_dir if out_dir is not None else cfg["out_dir"])
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir: {out} exists and is not a directory")
    ctx = current()
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    # Rank 0 alone talks: progress bars and step messages once, not once per process.
    quiet = quiet or not ctx.is_main
    echo = (lambda msg: None) if quiet else (echo or (lambda msg: print(msg, file=sys.stderr, flush=True)))
    seed, entries = cfg["seed"], cfg["_methods"]
    start = time.perf_counter()
    threads = torch.get_num_threads()
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    try:
        mach = machine()
        if ctx.world_size > 1:
            mach["processes"] = ctx.world_size  # torchrun: the same results, computed by N ranks
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        dc = cfg["data"]
        data = build_authors_data(dc["authors"], n_real_authors=dc["n_real_authors"], n_world_facts=dc["n_world_facts"])
        tok = build_demo_tokenizer(data, vocab_size=dc["vocab_size"])
        held = [i for v in data["held"].values() for i in v]
        if ctx.world_size > 1 and len(set(ctx.all_gather(fingerprint_tokenizer(tok)))) > 1:
            # Each rank trains its own tokenizer; different vocabularies would pair unrelated models.
            raise RuntimeError("the ranks built different tokenizers from the same data; run with one process")
        timings["data_tokenizer_s"] = time.perf_counter() - t0
        steps = _Steps(out, echo, eval_only=eval_only)
        base_key = (cfg["data"], cfg["model"], cfg["train"], seed)
        train_sets = {
            "target": data["forget"] + data["retain"] + held + data["forget_bios"] + data["retain_bios"],
            "Retrain": data["retain"] + held + data["retain_bios"],
        }
        from unlearnx.models.lm import build_lm

        model_kw = {**{k: v for k, v in cfg["model"].items() if k not in ("name", "kwargs")}, **cfg["model"]["kwargs"]}

        def fresh():
            return build_lm(cfg["model"]["name"], tokenizer=tok, seed=seed, **model_kw)

        runs, models = {}, {}
        for label, items in train_sets.items():
            def compute(label=label, items=items):
                echo(f"{label}: training on {len(items)} QA items / texts for {cfg['train']['epochs']} epochs")
                t = time.perf_counter()
                model, losses = train_lm(tok, items, model={"name": cfg["model"]["name"], **model_kw},
                                         train=cfg["train"], seed=seed, progress=not quiet)
                return model, {"seconds": time.perf_counter() - t,
                               "loss_curve": _epoch_means(losses, cfg["train"]["epochs"])}

            models[label], runs[label] = steps.run(label, _key("train", label, base_key), fresh, compute)
            timings[f"train {label}_s"] = runs[label]["seconds"]

        for entry in entries:
            label, name, hp = entry["label"], entry["method"], entry["hparams"]

            def compute(name=name, hp=hp):
                echo(f"{name}: unlearning forget10 ({len(data['forget'])} QA) with {hp}")
                extra = {}
                if _wants_oracle(name, hp):
                    # A method calibrated against an unlearning target (ECO's corruption strength)
                    # gets the run's retain oracle when the config names no target of its own.
                    extra["oracle"] = models["Retrain"]
                res = ux.unlearn(copy.deepcopy(models["target"]), name, forget=data["forget"],
                                 retain=data["retain"], tokenizer=tok, seed=seed, progress=not quiet, **hp, **extra)
                curve = res.log.get("loss") if isinstance(res.log, dict) else None
                used = {k: ("the run's Retrain oracle" if k in extra else v) for k, v in res.hparams.items()}
                return res.model, {"method": name, "seconds": res.seconds, "hparams": used,
                                   "loss_curve": [float(v) for v in curve] if curve else []}

            def fresh_result(name=name, hp=hp):
                # What this method's saved result loads into: a wrapper (ULD's target + assistant)
                # comes from the method's result_skeleton; a plain LM otherwise.
                skeleton = getattr(_method_instance(name, hp), "result_skeleton", None)
                return skeleton(fresh()) if skeleton else fresh()

            models[label], runs[label] = steps.run(label, _key("unlearn", name, hp, base_key, runs["target"]["sha256"]),
                                                   fresh_result, compute)
            timings[f"unlearn {label}_s"] = runs[label]["seconds"]

        # Evaluation: the oracle first (its per-item forget truth ratios are every model's KS reference).
        cache = MetricCache(out / "cache")
        ev = cfg["eval"]
        t0 = time.perf_counter()
        tofu = {}
        labels = [e["label"] for e in entries]
        for label in ["Retrain", "target", *labels]:
            echo(f"{label}: TOFU evaluation")
            tofu[label] = evaluate_tofu(models[label], tok, forget=data["forget"],
                                        retain=data["retain"][:ev["retain_subset"]], held=data["held"],
                                        reference=tofu.get("Retrain", models["Retrain"]),
                                        max_new_tokens=ev["max_new_tokens"], cache=cache, progress=not quiet)
        timings["evaluation_s"] = time.perf_counter() - t0
        mu_target = tofu["target"]["model_utility"]
        rows = {label: _tofu_row(tofu[label], mu_target) for label in tofu}
        for label in labels:
            rows[label]["unlearn_s"] = runs[label]["seconds"]
    finally:
        torch.set_num_threads(threads)
    timings["total_s"] = time.perf_counter() - start
    public_cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    results = {
        "format": "unlearnx-llm-results/1",
        "task": "llm",
        "name": cfg["name"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "eval" if eval_only else "run",
        "config_key": _key(public_cfg),
        "data": {"n_forget": len(data["forget"]), "n_retain": len(data["retain"]),
                 "forget_authors": len(data["forget_bios"]), "n_holdout": len(data["holdout"]),
                 "held": {k: len(v) for k, v in data["held"].items()}},
        "rows": rows,
        "methods": labels,
        "skipped": cfg["_skipped"],
        "runs": runs,
        "tofu": {label: {"aggregate": r.aggregate,
                         "forget_truth_ratio_raw": r.per_item["forget/truth_ratio_raw"]} for label, r in tofu.items()},
        "cached_steps": steps.cached,
        "metric_cache": {"hits": cache.hits, "misses": cache.misses},
        "timings": timings,
        "versions": versions(),
        "machine": mach,
        "config": public_cfg,
    }
    if ctx.is_main:
        atomic_write_json(out / "results.json", results)
        _write_report(results, out)
    ctx.barrier()  # no rank returns before the results and the report exist
    return results


def run_llm_demo(out_dir="runs/demo-llm", *, quick: bool = False, methods: Sequence[str] | None = None,
                 quiet: bool = False, seed: int = 0, echo: Callable[[str], None] | None = None) -> dict:
    """Run the LLM demo (`llm_demo_config`, see the module docstring) into `out_dir`; return the
    results dict. Raises ValueError naming the argument for bad input (e.g. an unregistered method
    named in `methods`)."""
    return run_llm_experiment(llm_demo_config(quick=quick, methods=methods, seed=seed, out_dir=str(out_dir)),
                              quiet=quiet, echo=echo)
