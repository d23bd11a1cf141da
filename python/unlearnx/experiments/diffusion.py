"""The diffusion task (`task: diffusion` configs, `unlearnx demo --task diffusion`): erase a style, an
object or a class from a diffusion model, against a Retrain oracle trained in the same run.

Built-in benchmark (nothing downloaded; unlearnx.data.canvas):
- canvas: small RGB images of objects drawn in styles, prompts "a {object} in {style} style"; a
  tiny text-conditional model with Stable Diffusion's components (UNet2DConditionModel +
  CLIPTextModel over a word tokenizer) is trained on all of it (the original) and on everything
  but the erased style / object (Retrain). Style and object evaluators (small CNNs trained on
  canvas images of another seed) classify the generations: UA, IRA, CRA and an evaluator-feature
  FID as UnlearnCanvas defines them (unlearnx.eval.diffusion).
- digits: scikit-learn's digits upscaled, a class-conditional UNet2DModel; class-wise forgetting
  with a digit evaluator: UA and retain accuracy.

Your own pipeline: `model: {pretrained: DIR}` loads a text-to-image diffusers pipeline directory
(e.g. Stable Diffusion) as the original, with `data: {name: prompts, forget: [...], retain: [...],
n_per_prompt}` and `scenario: {kind: concept}` (the default then). The methods' forget / retain
images are the original's own generations of those prompts (as SalUn does for Stable Diffusion;
ESD and UCE read only the prompts). No Retrain oracle exists for it and there are no evaluators:
every model is scored against the original on those generations at one fixed t and noise per image
(align-forget / align-retain: the share of the original's guidance direction kept,
`guidance_alignment`; loss-forget / loss-retain: the denoising loss), with its time and changed
parameters; the report says so.

Run directory: results.json, report.md, report.html, plots/ (metric bars, the image grid of
prompts x {Original, each method, Retrain}); seed-<s>/{original,retrain}.{json,safetensors},
seed-<s>/evaluator-*.{json,safetensors}, seed-<s>/methods/<label>.{json,safetensors}. Sequential
erasure (scenario.kind sequential: several styles erased one after another, docs/diffusion.md):
seed-<s>/retrain_step_<k>.* and seed-<s>/methods/<label>_step_<k>.* per step k. A pretrained run
has no original / Retrain / evaluator files but seed-<s>/prompt-images.{json,safetensors} (the
generated forget / retain images) and seed-<s>/pipelines/<label>/, each unlearned model as a
diffusers pipeline directory (`load_pipeline`, `StableDiffusionPipeline.from_pretrained`).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import time
from collections.abc import Mapping

import torch

from unlearnx.experiments.config import ConfigError, Field, check_range, check_value, validate_methods, validate_section
from unlearnx.experiments.run import Run, aggregate_seeds, file_stem, loss_curves, step_key
from unlearnx.experiments.tasks import ExperimentTask, register_task

__all__ = ["DiffusionTask", "DIFFUSION_DEMO_METHODS", "DIFFUSION_COLUMNS", "diffusion_demo_config"]

# The demo's panel; methods not registered in this installation are skipped with a note.
DIFFUSION_DEMO_METHODS = ("esd_x", "esd_u", "salun", "fmn", "uce")

# Tiny-model hyper-parameters of the demo (the papers' values are for Stable Diffusion): ESD needs a
# ~10x larger lr and few DDIM steps on a 16x16 model (docs/diffusion.md); fewer iterations keep the
# demo within minutes on 2 CPU cores.
DIFFUSION_DEMO_HPARAMS = {
    "esd_x": {"lr": 1e-3, "ddim_steps": 8, "iterations": 60},
    "esd_u": {"lr": 1e-3, "ddim_steps": 8, "iterations": 60},
    "salun": {"steps": 60},
    "fmn": {},
    "uce": {},
}

DIFFUSION_COLUMNS = {
    "UA": "erased concept's generations not classified as it, % (→ Retrain, ↑)",
    "UA-last": "sequential: UA of the style erased at the last step, %",
    "UA-earlier": "sequential: mean UA of the styles erased at earlier steps, % (retention of earlier erasures, ↑)",
    "IRA": "in-domain retain accuracy, % (other styles / classes; ↑)",
    "CRA": "cross-domain retain accuracy, % (objects when a style is erased; ↑)",
    "FID-eval": "Fréchet distance in the in-run evaluator's features, retained concepts vs real (↓)",
    "Avg.Gap": "mean |metric − Retrain's| over UA, IRA, CRA (↓)",
    "align-forget": "pretrained: share of the original's guidance direction ε(x_t, c) − ε(x_t, ∅) the model keeps for "
                    "the forget prompts (1 = unchanged, 0 = they act like the empty prompt, < 0 = pushed away; ↓)",
    "align-retain": "pretrained: the same for the retain prompts (1 = unchanged; ↑)",
    "loss-forget": "pretrained: denoising loss on the original's generations of the forget prompts (↑: the model no "
                   "longer reproduces them)",
    "loss-retain": "pretrained: denoising loss on the original's generations of the retain prompts (→ Original's)",
    "RTE-s": "unlearning wall time, s (↓)",
    "peak-mem-GiB": "peak CUDA memory allocated while unlearning, GiB (GPU runs only)",
    "changed-params": "parameters that differ from the original (storage of the change)",
}

SCHEMA: dict = {
    "task": Field("str", "diffusion", choices=("diffusion",)),
    "name": Field("str", "diffusion experiment", help="report title, default output folder"),
    "out_dir": Field("str", None, help="run directory (default runs/<name>)"),
    "seeds": Field("int_list", [0], help="one full run per seed: data, models, sampling"),
    "device": Field("str", "cpu", choices=("cpu", "cuda", "auto")),
    "threads": Field("int", 1, help="torch CPU threads during the run (0: torch's default)"),
    "data": {
        "name": Field("str", "canvas", choices=("canvas", "digits", "prompts"),
                      help="built-in data set, or prompts (with model.pretrained: data.forget / data.retain)"),
        "size": Field("int", 16, help="image side in pixels (canvas 16 or 32; digits upscaled to it)"),
        "n_per_pair": Field("int", 24, help="canvas: images per (style, object) pair"),
        "n_styles": Field("int", 4, help="canvas: number of styles"),
        "n_objects": Field("int", 4, help="canvas: number of objects"),
        "aliases": Field("int", 0, help="canvas: 0, or k in 1..3: half the training captions name the style by one "
                                        "of k other words; the methods' forget set names it by its name "
                                        "(a concept known under several names; docs/diffusion.md)"),
        "forget": Field("any", None, help="prompts: the prompts that show the concept to erase (list of strings)"),
        "retain": Field("any", None, help="prompts: the prompts whose generations must be kept (list of strings)"),
        "n_per_prompt": Field("int", 4, help="prompts: images the original generates per prompt (the methods' "
                                             "forget / retain images, and what every model is scored on)"),
    },
    "scenario": {
        "kind": Field("str", "style", choices=("style", "object", "class", "sequential", "concept"),
                      help="default: concept with model.pretrained (the concept of data.forget), else style"),
        # The other keys depend on the kind: SCENARIO_KEYS.
    },
    "model": {
        "pretrained": Field("str", None, help="a diffusers pipeline directory (the original; no Retrain)"),
        "block_out_channels": Field("int_list", [32, 64], help="UNet widths of the built-in model"),
        "layers_per_block": Field("int", 1),
        "text_dim": Field("int", 32, help="width of the built-in CLIP text encoder"),
        "prediction_type": Field("str", "v_prediction", choices=("epsilon", "v_prediction", "sample"),
                                 help="what the built-in UNet predicts (v: learns a tiny model's colours in "
                                      "far fewer steps than ε; docs/diffusion.md)"),
    },
    "train": {"steps": Field("int", 1200, help="optimizer steps of the original and of Retrain"),
              "lr": Field("number", 2e-3), "batch_size": Field("int", 64)},
    "evaluator": {"epochs": Field("int", 15, help="epochs of the style/object/digit evaluators"),
                  "n_per_pair": Field("int", 32, help="canvas: images per (style, object) pair the style and "
                                                      "object evaluators see (another seed's, 80% train / 20% "
                                                      "held out); 32 x 15 epochs reach >= 98% held-out at 16x16")},
    "methods": Field("any", list(DIFFUSION_DEMO_METHODS), help="list of method names or {name, label?, "
                                                               "optional?, <hparams>}"),
    "attacks": Field("any", None, help="robustness probes: a list of attack names or {name: budget kwargs} "
                                       "(unlearnx.diffusion.attacks.ATTACKS); ASR per model with Retrain's as the floor"),
    "eval": {
        "n_per_prompt": Field("int", 6, help="generations per prompt (canvas) or per class x 4 (digits)"),
        "sample_steps": Field("int", 20, help="DDIM steps when sampling"),
        "guidance_scale": Field("number", 1.0, help="classifier-free guidance weight w (1 = none: the built-in "
                                "CPU-sized models render their styles at w = 1 and turn to noise at w = 3, "
                                "docs/diffusion.md; raise it for models trained longer)"),
        "grid_prompts": Field("int", 4, help="prompts (rows) in the report's image grid"),
    },
}


# The keys of `scenario:` besides `kind`, per kind (the sequential kind erases styles one after another).
SCENARIO_KEYS: dict[str, dict[str, Field]] = {
    **{kind: {"target": Field("any", None, help="the erased style / object name, or digit class (default: the "
                                                "first)")} for kind in ("style", "object", "class")},
    "sequential": {"targets": Field("any", None, help="canvas styles erased one after another, each step from the "
                                                      "previous step's model (default: the first 3, at most "
                                                      "data.n_styles - 1)")},
    "concept": {},  # model.pretrained: the concept is what data.forget's prompts show
}

# The keys of `data:` that only data.name "prompts" reads; the built-in data's step keys leave them out.
PROMPT_DATA_KEYS = ("forget", "retain", "n_per_prompt")

# Images per batch when a pretrained pipeline generates or is scored (Stable Diffusion's VAE at 512x512
# needs several GiB per 8 images).
PRETRAINED_BATCH = 8

# The sub-folders of a diffusers pipeline directory that load_pipeline reads (their files key the steps);
# a pretrained run needs the first four (a text-to-image pipeline).
PIPELINE_PARTS = ("unet", "scheduler", "text_encoder", "tokenizer", "vae")

# The bars of a pretrained run's report (against the Original: no Retrain).
CONCEPT_BARS = ("align-forget", "align-retain", "loss-forget", "loss-retain")

NO_ORACLE_NOTE = ("no Retrain oracle: a pretrained pipeline cannot be retrained here (its training data are not "
                  "part of the run)")

# Sequential erasure: how many styles the default `scenario.targets` erases.
SEQUENTIAL_DEFAULT_STEPS = 3


def _validate_scenario(cfg) -> dict:
    """The `scenario:` section: `kind` and the keys of that kind (SCENARIO_KEYS). Without `kind` the
    keys are checked as style's and kind is None: DiffusionTask.validate picks the default (concept
    with model.pretrained, else style)."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"config key 'scenario': expected a mapping, got {cfg!r}")
    given = cfg.get("kind") is not None
    kind = check_value("scenario.kind", cfg["kind"], SCHEMA["scenario"]["kind"]) if given else "style"
    if kind == "sequential" and "target" in cfg:
        raise ConfigError("config key 'scenario.target': scenario.kind 'sequential' takes 'scenario.targets' "
                          "(a list of styles erased one after another)")
    if kind != "sequential" and "targets" in cfg:
        raise ConfigError(f"config key 'scenario.targets': only with scenario.kind 'sequential' (kind {kind!r} "
                          "erases one 'scenario.target')")
    out = validate_section({k: v for k, v in cfg.items() if k != "kind" or given},
                           {"kind": SCHEMA["scenario"]["kind"], **SCENARIO_KEYS[kind]}, "scenario.")
    return out if given else {**out, "kind": None}


class _Setup:
    """One seed of a diffusion run: data, the forget/retain split, the evaluators' data."""

    def __init__(self, run: Run, seed: int):
        from unlearnx.data.canvas import canvas_dataset, digits_upscaled
        from unlearnx.diffusion import ConditionedImages

        cfg = run.cfg
        d, sc = cfg["data"], cfg["scenario"]
        self.seed = seed
        self.dir = run.out / f"seed-{seed}"
        self.kind = sc["kind"]
        if d["name"] == "prompts":
            # The images come from the original pipeline (DiffusionTask.original); until then there are none.
            self.target, self.data, self.forget, self.retain = None, None, None, None
            self.forget_prompts, self.retain_prompts = list(d["forget"]), list(d["retain"])
            self.prompts = self.forget_prompts + self.retain_prompts
            # Everything the methods' inputs depend on: the pipeline's files, the prompts, how they are sampled.
            ev = cfg["eval"]
            self.base_key = step_key(_pipeline_identity(cfg["model"]["pretrained"]),
                                     {k: d[k] for k in PROMPT_DATA_KEYS}, ev["sample_steps"], ev["guidance_scale"],
                                     seed)
            return
        if d["name"] == "canvas":
            self.data = canvas_dataset(n_per_pair=d["n_per_pair"], size=d["size"], n_styles=d["n_styles"],
                                       n_objects=d["n_objects"], seed=seed, aliases=d["aliases"])
            # The evaluators are trained on canvas images of another seed: held out from the diffusion data.
            self.eval_data = canvas_dataset(n_per_pair=cfg["evaluator"]["n_per_pair"], size=d["size"],
                                            n_styles=d["n_styles"], n_objects=d["n_objects"], seed=seed + 7919)
            if self.kind == "sequential":
                # forget / retain: every target's images / the rest (what the last step's Retrain sees).
                self.targets, self.target = list(sc["targets"]), None
                self.forget = self.data.subset(torch.isin(self.data.style_ids, self._style_ids(self.targets)))
                self.retain = self.sequential_split(len(self.targets))[1]
            else:
                names = self.data.styles if self.kind == "style" else self.data.objects
                self.target = sc["target"] if sc["target"] is not None else names[0]
                self.forget, self.retain = (self.data.split_style(self.target) if self.kind == "style"
                                            else self.data.split_object(self.target))
            # An erasure request names the concept once: with aliases the methods' forget images are
            # captioned with the canonical names (the original also learned the other words).
            self.forget = self.forget.canonical()
            self.prompts = list(dict.fromkeys(self.data.canonical().prompts + self.data.prompts))
        else:
            train, test = digits_upscaled(size=d["size"], seed=seed)
            self.target = int(sc["target"]) if sc["target"] is not None else 0
            x, y = train.tensors
            f = y == self.target
            self.data = ConditionedImages(x, y.tolist())
            self.forget, self.retain = ConditionedImages(x[f], y[f].tolist()), ConditionedImages(x[~f], y[~f].tolist())
            self.eval_train, self.eval_test = train, test
            self.prompts = list(range(10))
        # Sequential steps add their targets to their own keys: the original does not depend on them.
        scenario_key = {"kind": "sequential"} if self.kind == "sequential" else cfg["scenario"]
        # (aliases: 0 leaves the key of runs made before the option existed)
        data_key = {k: v for k, v in cfg["data"].items()
                    if k not in PROMPT_DATA_KEYS and not (k == "aliases" and not v)}
        self.base_key = step_key(data_key, scenario_key, cfg["model"], cfg["train"], seed)

    def _style_ids(self, styles) -> torch.Tensor:
        return torch.tensor([self.data.styles.index(s) for s in styles])

    def sequential_split(self, k: int):
        """(forget, retain) of sequential step k (1-based): the images of style k, and the images of
        the styles not erased in steps 1..k (what step k's Retrain is trained on)."""
        ids = self._style_ids(self.targets[:k])
        return (self.data.subset(self.data.style_ids == ids[-1]).canonical(),
                self.data.subset(~torch.isin(self.data.style_ids, ids)))

    def fresh(self, cfg: dict):
        """The built-in model of the config, with the seed's initial weights (same for Retrain)."""
        from unlearnx.diffusion import tiny_class_model, tiny_text_model

        m, d = cfg["model"], cfg["data"]
        torch.manual_seed(self.seed)
        if d["name"] == "canvas":
            return tiny_text_model(self.prompts, image_size=d["size"], block_out_channels=m["block_out_channels"],
                                   layers_per_block=m["layers_per_block"], text_dim=m["text_dim"],
                                   prediction_type=m["prediction_type"])
        return tiny_class_model(10, image_size=d["size"], block_out_channels=m["block_out_channels"],
                                layers_per_block=m["layers_per_block"], prediction_type=m["prediction_type"])


def method_sampler(record: Mapping):
    """How a method's model generates: None (guided DDIM, every method) or, for a distilled one-step
    generator (SFD: its log has one_step and t_init), its one-step sampler."""
    log = record.get("log") or {}
    if not log.get("one_step"):
        return None
    from unlearnx.methods.diffusion.sfd import one_step_sample

    return functools.partial(one_step_sample, t_init=int(log["t_init"]))


def _evaluator_specs(setup: _Setup, cfg: dict) -> dict:
    """{name: (train TensorDataset, test TensorDataset, classes, channels)} of the run's evaluators
    (none for a pretrained pipeline: no data of its concepts to train them on)."""
    if cfg["data"]["name"] == "prompts":
        return {}
    if cfg["data"]["name"] == "canvas":
        ev, n = setup.eval_data, len(setup.eval_data)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(setup.seed))
        tr, te = perm[: int(0.8 * n)], perm[int(0.8 * n):]
        out = {}
        for name, labeled, k in (("style", ev.style_labeled(), len(ev.styles)),
                                 ("object", ev.object_labeled(), len(ev.objects))):
            x, y = labeled.tensors
            out[name] = (torch.utils.data.TensorDataset(x[tr], y[tr]), torch.utils.data.TensorDataset(x[te], y[te]),
                         k, 3)
        return out
    return {"digit": (setup.eval_train, setup.eval_test, 10, 1)}


@register_task
class DiffusionTask(ExperimentTask):
    """Diffusion models: style / object erasure on the built-in canvas, class-wise forgetting on digits."""

    name = "diffusion"
    method_task = "diffusion"
    demo_help = "a tiny text-to-image diffusion model on built-in canvas images, one style erased; needs the " \
                "diffusion extra"

    def schema(self) -> dict:
        return SCHEMA

    def special_sections(self):
        return {"scenario": _validate_scenario}

    def validate(self, cfg: dict) -> dict:
        d, sc, m = cfg["data"], cfg["scenario"], cfg["model"]
        if sc["kind"] is None:
            sc["kind"] = "concept" if m["pretrained"] is not None else "style"
            if sc["kind"] == "concept":
                if sc.pop("target") is not None:
                    raise ConfigError("config key 'scenario.target': a pretrained pipeline erases the concept its "
                                      "data.forget prompts show; scenario takes no target")
        _validate_pretrained(cfg)
        check_range("threads", cfg["threads"], low=0)
        check_range("data.size", d["size"], low=8)
        for key in ("n_per_pair", "n_styles", "n_objects"):
            check_range(f"data.{key}", d[key], low=1)
        from unlearnx.data.canvas import MAX_ALIASES

        check_range("data.aliases", d["aliases"], low=0, high=MAX_ALIASES)
        if d["aliases"] and d["name"] != "canvas":
            raise ConfigError(f"config key 'data.aliases': only the canvas has style aliases (data {d['name']!r})")
        from unlearnx.data.canvas import CANVAS_OBJECTS, CANVAS_STYLES

        check_range("data.n_styles", d["n_styles"], high=len(CANVAS_STYLES))
        check_range("data.n_objects", d["n_objects"], high=len(CANVAS_OBJECTS))
        if d["size"] % (2 ** (len(m["block_out_channels"]) - 1)):
            raise ConfigError(f"config key 'data.size': {d['size']} must be divisible by "
                              f"2^(len(model.block_out_channels) - 1)")
        if (d["name"] == "digits") != (sc["kind"] == "class"):
            raise ConfigError(f"config key 'scenario.kind': {sc['kind']!r} does not go with data {d['name']!r} "
                              "(canvas: style, object or sequential; digits: class)")
        if sc["kind"] == "sequential":
            _validate_targets(cfg)
        elif sc["kind"] != "concept" and sc["target"] is not None:
            if sc["kind"] == "class":
                if isinstance(sc["target"], bool) or not isinstance(sc["target"], int) or not 0 <= sc["target"] <= 9:
                    raise ConfigError(f"config key 'scenario.target': expected a digit class 0-9, got {sc['target']!r}")
            else:
                names = [s.name for s in CANVAS_STYLES[:d["n_styles"]]] if sc["kind"] == "style" \
                    else list(CANVAS_OBJECTS[:d["n_objects"]])
                if sc["target"] not in names:
                    raise ConfigError(f"config key 'scenario.target': expected one of the {sc['kind']}s {names}, "
                                      f"got {sc['target']!r}")
        for key in ("block_out_channels",):
            if any(c < 8 or c % 8 for c in m[key]):
                raise ConfigError(f"config key 'model.{key}': widths must be multiples of 8, got {m[key]}")
        check_range("model.layers_per_block", m["layers_per_block"], low=1)
        check_range("model.text_dim", m["text_dim"], low=2)
        for key, low in (("steps", 1), ("batch_size", 1)):
            check_range(f"train.{key}", cfg["train"][key], low=low)
        check_range("train.lr", cfg["train"]["lr"], low=0, low_open=True)
        check_range("evaluator.epochs", cfg["evaluator"]["epochs"], low=1)
        check_range("evaluator.n_per_pair", cfg["evaluator"]["n_per_pair"], low=5)
        for key in ("n_per_prompt", "sample_steps", "grid_prompts"):
            check_range(f"eval.{key}", cfg["eval"][key], low=1)
        check_range("eval.guidance_scale", cfg["eval"]["guidance_scale"], low=0)
        from unlearnx import methods as ux_methods

        # A pretrained pipeline is text-to-image: _validate_pretrained checked its text_encoder/ and tokenizer/.
        kind = "class" if d["name"] == "digits" else "text"
        excluded = {}
        for name in ux_methods.available(self.method_task):
            cls = ux_methods.get(name, task=self.method_task)
            if kind not in cls.model_kinds:
                made = ("model.pretrained is a text-conditional pipeline" if m["pretrained"] is not None
                        else f"{d['name']!r} trains a {kind}-conditional one")
                excluded[name] = f"cannot run on data {d['name']!r}: it needs {cls.kind_requirement()} and {made}"
        if m["pretrained"] is not None and "retrain" in ux_methods.available(self.method_task):
            excluded["retrain"] = ("is refused with model.pretrained: a pretrained pipeline cannot be retrained here "
                                   "(no Retrain oracle: its training data are not part of the run)")
        cfg["_methods"], cfg["_skipped"] = validate_methods(cfg["methods"], self.method_task, excluded=excluded)
        if m["pretrained"] is not None and cfg["attacks"] not in (None, []):
            raise ConfigError("config key 'attacks': not available with model.pretrained (an attack's success is "
                              "read by an evaluator trained on the run's own data; a pretrained run has none)")
        cfg["attacks"] = _validate_attacks(cfg["attacks"], kind)
        if cfg["attacks"] and sc["kind"] == "sequential":
            raise ConfigError("config key 'attacks': not available with scenario.kind 'sequential' (the attacks probe "
                              "one erased concept; run them on a style scenario)")
        return cfg

    def demo_config(self, *, methods=None, quick=False, out_dir=None, device="cpu", options=None) -> dict:
        cfg = diffusion_demo_config(methods=methods, quick=quick, out_dir=out_dir or "runs/demo-diffusion",
                                    device=device)
        if (options or {}).get("robust"):
            cfg["methods"].append({"name": "advunlearn", "optional": True})
            cfg["attacks"] = {"unlearndiff": {}, "soft_prompt": {}, "seed_search": {}, "relearning": {}}
        return cfg

    def demo_options(self) -> dict[str, str]:
        return {"robust": "--task diffusion: add AdvUnlearn and a robustness table (ASR under UnlearnDiffAtk, a soft "
                          "prompt, seed search and relearning; Retrain's ASR is the floor)"}

    # ---- steps
    def setup(self, run: Run, seed: int) -> _Setup:
        setup = _Setup(run, seed)
        setup.evaluators = {}
        setup.evaluator_acc = {}
        from unlearnx.eval.diffusion import train_evaluator
        from unlearnx.models import resnet_tiny

        for name, (train, test, k, ch) in _evaluator_specs(setup, run.cfg).items():

            def compute(train=train, test=test, k=k, ch=ch, name=name):
                run.echo(f"[seed {seed}] {name} evaluator: training on {len(train)} images")
                clf, acc = train_evaluator(train, test, num_classes=k, in_channels=ch,
                                           epochs=run.cfg["evaluator"]["epochs"], seed=seed)
                return clf, {"seconds": None, "heldout_accuracy": acc}

            def fresh(k=k, ch=ch):
                return resnet_tiny(k, in_channels=ch, width=16)  # train_evaluator's architecture

            clf, rec = run.steps.run(f"{name} evaluator", step_key(setup.base_key, "evaluator", name,
                                                                    run.cfg["evaluator"]),
                                     setup.dir / f"evaluator-{name}", fresh, compute)
            setup.evaluators[name] = clf.to(run.device).eval()
            setup.evaluator_acc[name] = rec["heldout_accuracy"]
            if rec["heldout_accuracy"] < 0.95:
                run.echo(f"warning: the {name} evaluator reaches {rec['heldout_accuracy']:.0%} held-out accuracy "
                         "(< 95%): the metrics read through it are unreliable; raise evaluator.epochs or "
                         "evaluator.n_per_pair")
        return setup

    def _train(self, run: Run, setup: _Setup, label: str, data, key_parts: tuple = (), info: dict | None = None):
        """Train `label` on `data` (a cached step keyed by the base key, the lower-cased label or
        `key_parts`); `info` joins its record."""
        from unlearnx.diffusion import train_diffusion

        t = run.cfg["train"]

        def compute():
            run.echo(f"[seed {setup.seed}] {label}: training the diffusion model on {len(data)} images "
                     f"for {t['steps']} steps")
            model = setup.fresh(run.cfg).to(run.device)
            log = train_diffusion(model, data, steps=t["steps"], lr=t["lr"], batch_size=t["batch_size"],
                                  seed=setup.seed, progress=False)
            return model, {"seconds": log["seconds"], "loss_curves": loss_curves(log), **(info or {})}

        key = step_key(setup.base_key, *(key_parts or (label.lower(),)))
        model, rec = run.steps.run(label, key, setup.dir / file_stem(label.lower(), "model"),
                                   lambda: setup.fresh(run.cfg), compute)
        return model.to(run.device), rec

    def original(self, run: Run, setup: _Setup):
        if setup.kind == "concept":
            return self._load_pretrained(run, setup)
        return self._train(run, setup, "Original", setup.data)

    def _load_pretrained(self, run: Run, setup: _Setup):
        """The pipeline of model.pretrained on run.device, and its own generations of the forget and
        retain prompts (data.n_per_prompt each; a cached step, seed-<s>/prompt-images.*) as
        setup.forget / setup.retain: the (image, prompt) data of the methods that need images."""
        from unlearnx.diffusion import ConditionedImages, load_pipeline, sample

        cfg = run.cfg
        path, n, ev = cfg["model"]["pretrained"], cfg["data"]["n_per_prompt"], cfg["eval"]
        run.echo(f"[seed {setup.seed}] Original: loading the pipeline {path}")
        start = time.perf_counter()
        model = load_pipeline(path, device=run.device)
        load_s = time.perf_counter() - start
        forget = [p for p in setup.forget_prompts for _ in range(n)]
        retain = [p for p in setup.retain_prompts for _ in range(n)]

        def compute():
            run.echo(f"[seed {setup.seed}] Original: generating {n} images per prompt ({len(setup.forget_prompts)} "
                     f"forget, {len(setup.retain_prompts)} retain prompts, {ev['sample_steps']} DDIM steps, "
                     f"guidance {ev['guidance_scale']})")
            t0 = time.perf_counter()
            images = sample(model, forget + retain, steps=ev["sample_steps"], guidance_scale=ev["guidance_scale"],
                            seed=setup.seed, batch_size=PRETRAINED_BATCH).cpu()
            return _PromptImages(images[:len(forget)], images[len(forget):]), {"seconds": time.perf_counter() - t0}

        def fresh():
            shape = model.image_shape
            return _PromptImages(torch.zeros(len(forget), *shape), torch.zeros(len(retain), *shape))

        images, rec = run.steps.run("prompt images", step_key(setup.base_key, "images"), setup.dir / "prompt-images",
                                    fresh, compute)
        setup.forget, setup.retain = ConditionedImages(images.forget, forget), ConditionedImages(images.retain, retain)
        return model, {"label": self.original_label, "key": setup.base_key, "seconds": None, "pretrained": path,
                       "load_s": load_s, "generation_s": rec.get("seconds"), "images_file": rec.get("model_file")}

    def oracle(self, run: Run, setup: _Setup):
        if setup.kind == "concept":
            return None, {"seconds": None, "note": NO_ORACLE_NOTE}
        if setup.kind != "sequential":
            return self._train(run, setup, "Retrain", setup.retain)
        # One Retrain per step: step k's is trained on the data without the styles of steps 1..k.
        setup.seq_models, setup.seq_records = {}, {}
        models, records = [], []
        for k in range(1, len(setup.targets) + 1):
            erased = setup.targets[:k]
            retain = setup.sequential_split(k)[1]
            kept = sorted({setup.data.styles[i] for i in retain.style_ids.tolist()})
            model, rec = self._train(run, setup, f"{self.oracle_label} step {k}", retain,
                                     key_parts=("retrain", sorted(erased)),
                                     info={"erased": erased, "trained_on_styles": kept, "n_train": len(retain)})
            models.append(model)
            records.append(rec)
        setup.seq_models[self.oracle_label], setup.seq_records[self.oracle_label] = models, records
        return models[-1], records[-1]

    def unlearn(self, run: Run, setup: _Setup, entry: dict, original, original_record: dict):
        if setup.kind != "sequential":
            stem = setup.dir / "methods" / file_stem(entry["label"], entry["method"])
            model, rec = self._unlearn_step(run, setup, entry, entry["label"], original, original_record["key"],
                                            setup.forget, setup.retain, stem, fresh=original)
            if setup.kind == "concept":
                rec = {**rec, **self._save_pipeline(run, setup, entry["label"], model, rec)}
            return model, rec
        # Step k erases style k from step k-1's model (step 1: the original); its key chains on the
        # previous step's, so a longer list of targets reuses the steps it shares with a shorter one.
        model, rec, models, records = original, original_record, [], []
        for k, target in enumerate(setup.targets, start=1):
            forget, retain = setup.sequential_split(k)
            stem = setup.dir / "methods" / file_stem(f"{entry['label']} step {k}", f"{entry['method']}_step_{k}")
            model, rec = self._unlearn_step(run, setup, entry, f"{entry['label']} step {k}", model, rec["key"], forget,
                                            retain, stem, fresh=original, key_extra=("erase", target))
            models.append(model)
            records.append(rec)
        setup.seq_models[entry["label"]], setup.seq_records[entry["label"]] = models, records
        return model, rec

    def _unlearn_step(self, run: Run, setup: _Setup, entry: dict, label: str, model, prev_key: str, forget, retain,
                      stem, *, fresh, key_extra: tuple = ()):
        """`entry`'s method on a copy of `model` (a cached step keyed by `prev_key`, the method, its
        hyper-parameters and `key_extra`); `fresh`: a model of the same architecture to load into."""
        import unlearnx
        from unlearnx.report import to_jsonable

        def compute():
            run.echo(f"[seed {setup.seed}] {label}: unlearning with {entry['method']} {entry['hparams'] or ''}")
            if run.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(run.device)
            res = unlearnx.unlearn(copy.deepcopy(model), method=entry["method"], forget=forget,
                                   retain=retain, seed=setup.seed, progress=False, device=run.device,
                                   inplace=True, **entry["hparams"])
            peak = torch.cuda.max_memory_allocated(run.device) if run.device.type == "cuda" else None
            log = to_jsonable({k: v for k, v in (res.log or {}).items() if k != "loss"})
            return res.model, {"method": entry["method"], "hparams": entry["hparams"],
                               "hparams_resolved": to_jsonable(res.hparams), "seconds": float(res.seconds),
                               "peak_memory_bytes": peak, "loss_curves": loss_curves(res.log), "log": log}

        key = step_key(prev_key, entry["method"], entry["hparams"], *key_extra)
        out, rec = run.steps.run(label, key, stem, lambda: copy.deepcopy(fresh), compute)
        return out.to(run.device), rec

    def _save_pipeline(self, run: Run, setup: _Setup, label: str, model, rec: Mapping) -> dict:
        """Write an unlearned pretrained model as a diffusers pipeline directory seed-<s>/pipelines/<label>/
        (again only when its step's weights changed: its unlearnx-step.json names them); returns the
        record's entries: pipeline_dir (relative to the run directory), or None and why."""
        from unlearnx.diffusion import DiffusionModel
        from unlearnx.report import atomic_write_json, read_json

        if not isinstance(model, DiffusionModel) or not rec.get("reloadable", True):
            return {"pipeline_dir": None, "pipeline_note": "not written: the result adds modules to the pipeline (e.g. "
                                                           "SPM's membranes) that a diffusers pipeline cannot hold"}
        folder = setup.dir / "pipelines" / file_stem(label, "method")
        mark = {"label": label, "key": rec["key"], "sha256": rec.get("sha256")}
        if run.ctx.is_main and read_json(folder / "unlearnx-step.json") != mark:
            run.echo(f"[seed {setup.seed}] {label}: writing the pipeline {folder.relative_to(run.out)}")
            model.save_pretrained(folder)
            atomic_write_json(folder / "unlearnx-step.json", mark)
        return {"pipeline_dir": folder.relative_to(run.out).as_posix()}

    def evaluate(self, run: Run, setup: _Setup, models: dict, records: dict, cached: list[str]) -> dict:
        from unlearnx.eval.diffusion import canvas_metrics, change_storage, class_metrics

        if setup.kind == "concept":
            return self._evaluate_concept(run, setup, models, records, cached)
        if setup.kind == "sequential":
            return self._evaluate_sequential(run, setup, models, records, cached)
        ev, cfg = run.cfg["eval"], run.cfg
        t0 = time.perf_counter()
        metrics, grids = {}, {}
        for label, model in models.items():
            run.echo(f"[seed {setup.seed}] {label}: sampling and classifying generations")
            common = {"steps": ev["sample_steps"], "guidance_scale": ev["guidance_scale"], "seed": setup.seed,
                      "sampler": method_sampler(records.get(label, {}))}
            if cfg["data"]["name"] == "canvas":
                m = canvas_metrics(model, style_clf=setup.evaluators["style"], object_clf=setup.evaluators["object"],
                                   styles=setup.data.styles, objects=setup.data.objects, target=setup.target,
                                   domain=setup.kind, n_per_prompt=ev["n_per_prompt"], real=setup.eval_data,
                                   return_images=True, **common)
                row = {"UA": m["ua"], "IRA": m["ira"], "CRA": m["cra"], "FID-eval": m.get("fid_evaluator")}
                grids[label] = _grid_cells(m["images"], m["prompts"], [setup.target], ev)
            else:
                m = class_metrics(model, classifier=setup.evaluators["digit"], forget_classes=[setup.target],
                                  n_per_class=4 * ev["n_per_prompt"], real=setup.eval_test, **common)
                row = {"UA": m["ua"], "IRA": m["retain_acc"], "FID-eval": m.get("fid_evaluator")}
            if label not in (self.original_label,):
                row["RTE-s"] = records[label]["seconds"]
            if label not in (self.original_label, self.oracle_label):
                row["changed-params"] = float(change_storage(models["Original"].unet, model.unet)["changed_params"])
            metrics[label] = row
        _add_gaps(metrics, metrics[self.oracle_label])
        robustness = None
        if cfg["attacks"]:
            robustness = self._robustness(run, setup, models)
            for label, r in robustness.items():
                metrics[label].update({f"ASR/{a}": v for a, v in r["asr"].items() if a != "none"})
        timings = {f"{label}_s": rec.get("seconds") for label, rec in records.items()}
        timings["evaluation_s"] = time.perf_counter() - t0
        return {"seed": setup.seed, "metrics": metrics, "grids": grids, "cached": cached, "timings": timings,
                "robustness": robustness,
                "runs": {label: {k: v for k, v in r.items() if k != "key"} for label, r in records.items()},
                "evaluators": setup.evaluator_acc, "target": setup.target,
                "sizes": {"n_train": len(setup.data), "n_forget": len(setup.forget), "n_retain": len(setup.retain)}}

    def _evaluate_concept(self, run: Run, setup: _Setup, models: dict, records: dict, cached: list[str]) -> dict:
        """A pretrained pipeline (no Retrain, no evaluators): every model against the original on the
        original's generations of the forget and retain prompts (`_prompt_scores`: align-* and loss-*),
        its unlearning time, peak CUDA memory and changed parameters; the image grid."""
        from unlearnx.diffusion import sample
        from unlearnx.eval.diffusion import change_storage

        ev, t0 = run.cfg["eval"], time.perf_counter()
        original = models[self.original_label]
        scored = {label: model for label, model in models.items() if model is not None}  # Retrain: None
        run.echo(f"[seed {setup.seed}] scoring {', '.join(scored)} on the original's generations")
        scores = {part: _prompt_scores(scored, original, data, seed=setup.seed + i)
                  for i, (part, data) in enumerate((("forget", setup.forget), ("retain", setup.retain)))}
        n_rows = max(1, ev["grid_prompts"] // 2)
        prompts = setup.forget_prompts[:n_rows]
        prompts += setup.retain_prompts[:max(1, ev["grid_prompts"] - len(prompts))]
        metrics, grids = {}, {}
        for label, model in scored.items():
            row = {f"{k}-{part}": scores[part][label][k] for part in ("forget", "retain") for k in ("align", "loss")}
            if label != self.original_label:
                rec = records[label]
                row["RTE-s"] = rec.get("seconds")
                if rec.get("peak_memory_bytes") is not None:
                    row["peak-mem-GiB"] = rec["peak_memory_bytes"] / 2 ** 30
                row["changed-params"] = float(change_storage(original.unet, model.unet)["changed_params"])
            metrics[label] = row
            run.echo(f"[seed {setup.seed}] {label}: sampling the grid's prompts")
            sampler = method_sampler(records.get(label, {}))
            images = (sample(model, prompts, steps=ev["sample_steps"], guidance_scale=ev["guidance_scale"],
                             seed=setup.seed, batch_size=PRETRAINED_BATCH) if sampler is None
                      else sampler(model, prompts, seed=setup.seed))
            grids[label] = list(zip(prompts, images.cpu()))
        timings = {f"{label}_s": rec.get("seconds") for label, rec in records.items() if label in scored
                   and label != self.original_label}
        timings.update({"Original_load_s": records[self.original_label]["load_s"],
                        "generation_s": records[self.original_label]["generation_s"],
                        "evaluation_s": time.perf_counter() - t0})
        return {"seed": setup.seed, "metrics": metrics, "grids": grids, "cached": cached, "timings": timings,
                "robustness": None,
                "runs": {label: {k: v for k, v in r.items() if k != "key"} for label, r in records.items()},
                "evaluators": {}, "target": None,
                "sizes": {"n_forget": len(setup.forget), "n_retain": len(setup.retain)}}

    def _evaluate_sequential(self, run: Run, setup: _Setup, models: dict, records: dict, cached: list[str]) -> dict:
        """Metrics after every step k of a sequential scenario: UA of each style erased so far (their
        mean is "UA"), IRA / CRA / FID on the styles not erased yet, gaps to step k's Retrain. The
        original is sampled once and scored against each step's erased styles."""
        from unlearnx.eval.diffusion import canvas_metrics, change_storage

        ev, t0 = run.cfg["eval"], time.perf_counter()
        common = {"style_clf": setup.evaluators["style"], "object_clf": setup.evaluators["object"],
                  "styles": setup.data.styles, "objects": setup.data.objects, "domain": "style",
                  "n_per_prompt": ev["n_per_prompt"], "steps": ev["sample_steps"],
                  "guidance_scale": ev["guidance_scale"], "seed": setup.seed, "real": setup.eval_data,
                  "return_images": True}
        original, original_images = models[self.original_label], None
        steps, grids = [], {}
        for k in range(1, len(setup.targets) + 1):
            erased, metrics = setup.targets[:k], {}
            for label in models:
                model = original if label == self.original_label else setup.seq_models[label][k - 1]
                run.echo(f"[seed {setup.seed}] step {k}, {label}: sampling and classifying generations")
                images = original_images if label == self.original_label else None
                m = canvas_metrics(model, target=erased, images=images, **common)
                if label == self.original_label:
                    original_images = m["images"]
                per = m["ua_per_target"]
                row = {"UA": m["ua"], "UA-last": per[erased[-1]]}
                if k > 1:
                    row["UA-earlier"] = sum(per[s] for s in erased[:-1]) / (k - 1)
                row.update({"IRA": m["ira"], "CRA": m["cra"], "FID-eval": m.get("fid_evaluator")})
                row.update({f"UA/{s}": per[s] for s in erased})
                if label != self.original_label:
                    # Retrain trains once per step; a method's cost of reaching step k is all its steps.
                    recs = setup.seq_records[label][k - 1:k] if label == self.oracle_label \
                        else setup.seq_records[label][:k]
                    secs = [r.get("seconds") for r in recs]
                    row["RTE-s"] = None if None in secs else sum(secs)
                if label not in (self.original_label, self.oracle_label):
                    row["changed-params"] = float(change_storage(original.unet, model.unet)["changed_params"])
                metrics[label] = row
                if k == len(setup.targets):
                    grids[label] = _grid_cells(m["images"], m["prompts"], erased, ev)
            _add_gaps(metrics, metrics[self.oracle_label])
            steps.append(metrics)
        runs = {self.original_label: records[self.original_label]}
        for label, recs in setup.seq_records.items():
            runs.update({r["label"]: r for r in recs})
        timings = {f"{label}_s": rec.get("seconds") for label, rec in runs.items()}
        timings["evaluation_s"] = time.perf_counter() - t0
        return {"seed": setup.seed, "metrics": steps[-1], "steps": steps, "grids": grids, "cached": cached,
                "timings": timings, "robustness": None,
                "runs": {label: {k: v for k, v in r.items() if k != "key"} for label, r in runs.items()},
                "evaluators": setup.evaluator_acc, "target": None, "targets": setup.targets,
                "sizes": {"n_train": len(setup.data), "n_forget": len(setup.forget), "n_retain": len(setup.retain)}}

    def _robustness(self, run: Run, setup: _Setup, models: dict) -> dict:
        """ASR of every model under the configured attacks (unlearnx.eval.diffusion_robustness)."""
        from unlearnx.eval.diffusion_robustness import robustness_table

        ev = run.cfg["eval"]
        sample_kw = {"steps": ev["sample_steps"], "guidance_scale": ev["guidance_scale"]}
        if run.cfg["data"]["name"] == "canvas":
            names = setup.data.styles if setup.kind == "style" else setup.data.objects
            evaluator = setup.evaluators[setup.kind]
            target_label = names.index(setup.target)
            images, conditions, word = setup.forget.images, setup.forget.prompts, setup.target
        else:
            evaluator, target_label = setup.evaluators["digit"], setup.target
            images = torch.stack([setup.forget[i][0] for i in range(len(setup.forget))])
            conditions, word = [setup.target] * len(images), None
        run.echo(f"[seed {setup.seed}] robustness: {', '.join(run.cfg['attacks'])} against every model")
        return robustness_table(models, evaluator, target_label, target_images=images, target_conditions=conditions,
                                forget=setup.forget, attacks=run.cfg["attacks"], seeds=(setup.seed,),
                                concept_word=word, sample_kw=sample_kw,
                                progress=lambda line: run.echo(f"[seed {setup.seed}] {line}"))

    # ---- the whole run
    def results(self, run: Run, per_seed: list[dict]) -> dict:
        cfg = run.cfg
        rows, std = aggregate_seeds([s["metrics"] for s in per_seed])
        first = per_seed[0]
        sequential = cfg["scenario"]["kind"] == "sequential"
        extra = {}
        if sequential:
            targets = first["targets"]
            steps = []
            for k in range(1, len(targets) + 1):
                step_rows, step_std = aggregate_seeds([s["steps"][k - 1] for s in per_seed])
                steps.append({"step": k, "erased": targets[:k], "rows": step_rows, "std": step_std})
            extra["sequential"] = {"targets": targets, "steps": steps}
            scenario = {"data": cfg["data"]["name"], "kind": "sequential", "targets": targets, **first["sizes"]}
            reading = _sequential_reading(targets, [s["rows"] for s in steps])
        elif cfg["scenario"]["kind"] == "concept":
            d = cfg["data"]
            scenario = {"data": "prompts", "kind": "concept", "pretrained": cfg["model"]["pretrained"],
                        "forget": d["forget"], "retain": d["retain"], "n_per_prompt": d["n_per_prompt"],
                        "oracle": None, **first["sizes"]}
            reading = _concept_reading(rows)
        else:
            scenario = {"data": cfg["data"]["name"], "kind": cfg["scenario"]["kind"], "target": first["target"],
                        **first["sizes"]}
            reading = _reading(rows)
        return {
            "format": "unlearnx-diffusion-results/1",
            "seeds": cfg["seeds"],
            "scenario": scenario,
            "rows": rows,
            "std": std,
            **extra,
            "reading": reading,
            "evaluators": {str(s["seed"]): s["evaluators"] for s in per_seed},
            "hparams": {e["label"]: {"method": e["method"], "hparams": e["hparams"],
                                     "resolved": first["runs"][e["label"] + (" step 1" if sequential else "")]
                                     .get("hparams_resolved", {})}
                        for e in cfg["_methods"]},
            "skipped": cfg["_skipped"],
            "runs": {str(s["seed"]): s["runs"] for s in per_seed},
            "per_seed_metrics": {str(s["seed"]): s["metrics"] for s in per_seed},
            "cached_steps": {str(s["seed"]): s["cached"] for s in per_seed},
            "robustness": {str(s["seed"]): s["robustness"] for s in per_seed if s["robustness"] is not None},
            "timings": {f"seed {s['seed']}: {k}": v for s in per_seed for k, v in s["timings"].items()},
            "_grids": first["grids"],  # image cells for the report; not stored in results.json
        }

    def write_report(self, results: dict, out) -> None:
        _write_report(results, out)

    def summary(self, results: dict) -> str:
        from unlearnx.report import format_value, render_markdown

        sc = results["scenario"]
        cols = [c for c in DIFFUSION_COLUMNS if any(c in r for r in results["rows"].values())]
        body = [[n] + [format_value(r.get(c)) for c in cols] for n, r in results["rows"].items()]
        seq = sc["kind"] == "sequential"
        if sc["kind"] == "concept":
            return (f"\n{results['name']}: erase the concept of the prompts {sc['forget']} from {sc['pretrained']} "
                    f"({sc['n_forget']} generated forget images; no Retrain oracle for a pretrained pipeline); seeds "
                    f"{results['seeds']}\n" + render_markdown([("table", ["Model"] + cols, body)])
                    + results["reading"] + "\n")
        what = f"styles {sc['targets']} one after another" if seq else f"{sc['kind']} {sc['target']!r}"
        return (f"\n{results['name']}: erase {what} ({sc['n_forget']} of {sc['n_train']} training images); seeds "
                f"{results['seeds']}" + ("; after the last step:" if seq else "") + "\n"
                + render_markdown([("table", ["Model"] + cols, body)])
                + (results["reading"] and results["reading"] + "\n"))


def _validate_pretrained(cfg: dict) -> None:
    """model.pretrained goes with data.name "prompts" and scenario.kind "concept" (and the other way
    round): a text-to-image pipeline directory, non-empty forget / retain prompt lists that share no
    prompt. With built-in data the prompt keys are refused."""
    d, sc, path = cfg["data"], cfg["scenario"], cfg["model"]["pretrained"]
    if path is None:
        if d["name"] == "prompts":
            raise ConfigError("config key 'model.pretrained': data.name 'prompts' needs a pipeline to erase from: "
                              "set model.pretrained to a diffusers pipeline directory")
        if sc["kind"] == "concept":
            raise ConfigError("config key 'scenario.kind': 'concept' erases from a pretrained pipeline "
                              "(model.pretrained); the built-in data take style, object, class or sequential")
        for key in ("forget", "retain"):
            if d[key] is not None:
                raise ConfigError(f"config key 'data.{key}': only with data.name 'prompts' (a pretrained pipeline); "
                                  f"the built-in {d['name']!r} data choose what to erase with scenario.target")
        return
    if d["name"] != "prompts":
        raise ConfigError(f"config key 'data.name': a pretrained pipeline (model.pretrained) takes data.name "
                          f"'prompts' (data.forget / data.retain: prompts of the concept to erase and of what to "
                          f"keep), got {d['name']!r}")
    if sc["kind"] != "concept":
        raise ConfigError(f"config key 'scenario.kind': a pretrained pipeline erases the concept of data.forget: "
                          f"kind 'concept' (the default), got {sc['kind']!r}")
    from pathlib import Path

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"config key 'model.pretrained': {path} is not a directory (expected a diffusers pipeline "
                          "directory, e.g. written by StableDiffusionPipeline.save_pretrained)")
    missing = [f"{part}/" for part in PIPELINE_PARTS[:4] if not (folder / part).is_dir()]
    if missing:
        raise ConfigError(f"config key 'model.pretrained': {path} has no {', '.join(missing)} (expected a "
                          "text-to-image diffusers pipeline directory: unet/, scheduler/, text_encoder/, tokenizer/, "
                          "optionally vae/)")
    for key in ("forget", "retain"):
        prompts = d[key]
        if (not isinstance(prompts, list) or not prompts
                or not all(isinstance(p, str) and p.strip() for p in prompts)):
            raise ConfigError(f"config key 'data.{key}': expected a non-empty list of prompts (non-empty strings), "
                              f"got {prompts!r}")
        if len(set(prompts)) != len(prompts):
            raise ConfigError(f"config key 'data.{key}': repeated prompts in {prompts!r}")
    both = [p for p in d["retain"] if p in d["forget"]]
    if both:
        raise ConfigError(f"config key 'data.retain': {both[0]!r} is also in data.forget (a prompt is either erased "
                          "or kept)")
    check_range("data.n_per_prompt", d["n_per_prompt"], low=1)
    cfg["model"]["pretrained"] = str(folder)


def _pipeline_identity(path) -> str:
    """What keys a pipeline directory's steps: the path and the size and modification time of every
    file load_pipeline reads (hashing a Stable Diffusion checkpoint would take longer than loading it)."""
    from pathlib import Path

    root = Path(path)
    files = sorted(f for part in PIPELINE_PARTS if (root / part).is_dir()
                   for f in (root / part).rglob("*") if f.is_file())
    return step_key(str(root.resolve()), [(f.relative_to(root).as_posix(), f.stat().st_size, f.stat().st_mtime_ns)
                                          for f in files])


class _PromptImages(torch.nn.Module):
    """The original pipeline's generations of the forget and retain prompts, as buffers (so that the
    step store saves and reloads them like a model)."""

    def __init__(self, forget: torch.Tensor, retain: torch.Tensor):
        super().__init__()
        self.register_buffer("forget", forget)
        self.register_buffer("retain", retain)


@torch.no_grad()
def _prompt_scores(models: Mapping, original, data, *, seed: int) -> dict[str, dict[str, float]]:
    """{label: {"align", "loss"}} of every model on `data` (ConditionedImages: the original's
    generations and their prompts), all at the same t ~ U{0..T-1} and noise per image drawn from `seed`:

        align = Σ ⟨ε_θ(x_t, c) − ε_o(x_t, ∅), d⟩ / Σ ‖d‖²,  d = ε_o(x_t, c) − ε_o(x_t, ∅)

    (unlearnx.eval.diffusion.guidance_alignment; ε_o: the original) and loss = the mean denoising
    loss (`diffusion_loss`, L_simple in the model's parameterization) at those t and noise. Batched
    (PRETRAINED_BATCH images), the original's latents and predictions computed once for all models."""
    from unlearnx._modes import training_mode
    from unlearnx.diffusion import noisy_latents

    n, dev = len(data), original.device
    g = torch.Generator().manual_seed(seed)
    ts = torch.randint(0, original.num_train_timesteps, (n,), generator=g)
    noises = torch.randn((n, *original.latent_shape), generator=g)
    num, loss, den = dict.fromkeys(models, 0.0), dict.fromkeys(models, 0.0), 0.0
    with contextlib.ExitStack() as modes:
        modes.enter_context(torch.no_grad())  # scores only: no graph (Stable Diffusion's would take GiBs)
        for model in models.values():
            modes.enter_context(training_mode(model.unet, False))
        for lo in range(0, n, PRETRAINED_BATCH):
            conds = data.conditions[lo:lo + PRETRAINED_BATCH]
            x0 = original.to_latents(data.images[lo:lo + PRETRAINED_BATCH])
            noise = noises[lo:lo + PRETRAINED_BATCH].to(dev)
            x_t, t, _ = noisy_latents(original, x0, ts[lo:lo + PRETRAINED_BATCH].to(dev), noise)
            e0 = original.predict_noise(x_t, t, original.encode(original.null_conditions(len(conds))))
            d = original.predict_noise(x_t, t, original.encode(conds)) - e0
            den += float((d * d).sum())
            for label, model in models.items():
                out = model.model_output(x_t, t, model.encode(conds))
                num[label] += float(((model.noise_from_output(out, x_t, t) - e0) * d).sum())
                target = model.training_target(x0, noise, t)
                loss[label] += float((out.float() - target.float()).pow(2).flatten(1).mean(1).sum())
    # den = 0 only if the original ignores the prompts altogether: no guidance to keep or lose.
    return {label: {"align": num[label] / den if den > 0 else float("nan"), "loss": loss[label] / n}
            for label in models}


def _validate_targets(cfg: dict) -> None:
    """scenario.targets of a sequential scenario: distinct canvas styles, at least 2, at least one style
    left for IRA; the default (the first SEQUENTIAL_DEFAULT_STEPS styles) is filled in."""
    from unlearnx.data.canvas import CANVAS_STYLES

    n_styles, sc = cfg["data"]["n_styles"], cfg["scenario"]
    styles = [s.name for s in CANVAS_STYLES[:n_styles]]
    if n_styles < 3:
        raise ConfigError(f"config key 'data.n_styles': sequential erasure needs at least 3 styles (2 erased one "
                          f"after another, 1 kept for IRA), got {n_styles}")
    if sc["targets"] is None:
        sc["targets"] = styles[:min(SEQUENTIAL_DEFAULT_STEPS, n_styles - 1)]
        return
    targets = sc["targets"]
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise ConfigError(f"config key 'scenario.targets': expected a list of style names, got {targets!r}")
    for i, t in enumerate(targets):
        if t not in styles:
            raise ConfigError(f"config key 'scenario.targets[{i}]': expected one of the styles {styles}, got {t!r}")
    if len(set(targets)) != len(targets):
        raise ConfigError(f"config key 'scenario.targets': repeated styles in {targets}")
    if not 2 <= len(targets) <= n_styles - 1:
        raise ConfigError(f"config key 'scenario.targets': expected 2 to {n_styles - 1} styles (data.n_styles - 1: "
                          f"one style must stay for IRA), got {len(targets)}")


def _validate_attacks(value, kind: str) -> dict | None:
    """The config's `attacks` as {name: budget kwargs}, or None; ConfigError naming the entry."""
    if value is None or value == []:
        return None
    from unlearnx.diffusion.attacks import ATTACKS, attack_applies

    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config key 'attacks': expected attack names or a mapping name -> budget, got {value!r}")
        value = {v: {} for v in value}
    if not isinstance(value, dict):
        raise ConfigError(f"config key 'attacks': expected a list of attack names or a mapping, got {value!r}")
    out = {}
    for name, budget in value.items():
        if name not in ATTACKS or name == "none":
            raise ConfigError(f"config key 'attacks.{name}': unknown attack (available: "
                              f"{', '.join(n for n in ATTACKS if n != 'none')})")
        if not attack_applies(name, kind):
            raise ConfigError(f"config key 'attacks.{name}': does not apply to a {kind}-conditional model")
        if budget is not None and not isinstance(budget, dict):
            raise ConfigError(f"config key 'attacks.{name}': expected a mapping of budget arguments, got {budget!r}")
        import inspect

        fixed = {"model", "evaluator", "target_label", "target_images", "target_conditions", "forget", "concept_word",
                 "seeds", "sample_kw"}
        allowed = [p for p in inspect.signature(ATTACKS[name]).parameters if p not in fixed]
        for key in budget or {}:
            if key not in allowed:
                raise ConfigError(f"unknown config key 'attacks.{name}.{key}' (budget arguments: "
                                  f"{', '.join(allowed) or 'none'})")
        out[name] = dict(budget or {})
    return out


def _grid_cells(images, prompts, erased: list, ev) -> list:
    """The first generation of up to `grid_prompts` prompts: the erased concepts' first, then others."""
    def shows_erased(p):
        return any(str(e) in p.split() for e in erased)

    want = [p for p in dict.fromkeys(prompts) if shows_erased(p)][: max(1, ev["grid_prompts"] // 2)]
    # The retained concepts' rows: prompts without an erased word (other styles / objects).
    want += [p for p in dict.fromkeys(prompts) if not shows_erased(p)][: ev["grid_prompts"] - len(want)]
    return [(p, images[prompts.index(p)]) for p in want]


def _add_gaps(metrics: dict, ref: Mapping) -> None:
    """gap/UA, gap/IRA, gap/CRA to the reference row `ref` (Retrain), their mean Avg.Gap, RTE-ratio."""
    if not ref:
        return  # no oracle (a pretrained pipeline): no gaps
    gap_keys = [k for k in ("UA", "IRA", "CRA") if k in ref]
    for row in metrics.values():
        for k in gap_keys:
            row[f"gap/{k}"] = abs(row[k] - ref[k])
        row["Avg.Gap"] = sum(row[f"gap/{k}"] for k in gap_keys) / len(gap_keys)
        if row.get("RTE-s") is not None and ref.get("RTE-s"):
            row["RTE-ratio"] = row["RTE-s"] / ref["RTE-s"]


def _reading(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Which method is closest to Retrain (Avg. Gap over UA / IRA / CRA) at what share of its time."""
    methods = {n: r for n, r in rows.items() if n not in ("Retrain", "Original") and r.get("Avg.Gap") is not None}
    if not methods or "Retrain" not in rows:
        return ""
    best = min(methods, key=lambda n: methods[n]["Avg.Gap"])
    r = methods[best]
    when = f" in {100 * r['RTE-ratio']:.0f}% of Retrain's time" if r.get("RTE-ratio") is not None else ""
    orig = rows.get("Original", {})
    text = f"{best} is closest to Retrain (Avg. Gap {r['Avg.Gap']:.1f} points{when}; UA {r['UA']:.0f}%"
    text += f" vs Retrain's {rows['Retrain']['UA']:.0f}%)." if "Retrain" in rows else ")."
    if "UA" in orig:
        text += f" The original generates the erased concept with UA {orig['UA']:.0f}%."
    return text


def _concept_reading(rows: Mapping[str, Mapping[str, float]]) -> str:
    """A pretrained run: which method takes the most of the forget prompts' guidance away and how much
    of the retain prompts' it keeps; that there is no Retrain to compare with."""
    methods = {n: r for n, r in rows.items() if n != "Original" and r.get("align-forget") is not None}
    text = ""
    if methods:
        best = min(methods, key=lambda n: methods[n]["align-forget"])
        r = methods[best]
        text = (f"{best} takes the most of the forget prompts' guidance away (align-forget {r['align-forget']:.2f}; "
                f"1 = the original's) and keeps align-retain {r['align-retain']:.2f} on the retain prompts. ")
    return text + ("There is no Retrain oracle for a pretrained pipeline: the models are compared with the original "
                   "on its own generations of the prompts.")


def _sequential_reading(targets: list, step_rows: list[Mapping]) -> str:
    """After the last step: who is closest to that step's Retrain; and whether an earlier erasure came
    back (the largest fall of a style's UA between the step that erased it and the last step)."""
    last = step_rows[-1]
    text = _reading(last)
    if text:
        text = f"After the last step ({len(targets)} styles erased): " + text[0].lower() + text[1:]
    worst = None
    for label in (n for n in last if n not in ("Retrain", "Original")):
        for i, style in enumerate(targets[:-1]):
            then, now = step_rows[i][label].get(f"UA/{style}"), last[label].get(f"UA/{style}")
            if then is not None and now is not None and (worst is None or then - now > worst[0]):
                worst = (then - now, label, style, i + 1, then, now)
    if worst is not None:
        drop, label, style, k, then, now = worst
        if drop > 0:
            text += (f" Retention: the largest return of an earlier erasure is {label}'s {style} (UA {then:.0f}% "
                     f"after step {k}, {now:.0f}% after step {len(targets)}).")
        else:
            text += " Retention: no method's UA of an earlier erased style fell in later steps."
    return text.strip()


def _sequential_blocks(results: dict) -> list:
    """The report's sequential section: one row per model, per step UA of that step's style, mean UA
    of every style erased so far and IRA (mean ± std over seeds)."""
    from unlearnx.report import format_value

    seq = results["sequential"]
    header, cells = ["Model"], {}
    for st in seq["steps"]:
        k, style = st["step"], st["erased"][-1]
        header += [f"{k}: UA {style}", f"{k}: mean UA", f"{k}: IRA"]
        for label, row in st["rows"].items():
            sd = st["std"].get(label, {})
            cells.setdefault(label, []).extend(format_value(row.get(c), sd.get(c)) for c in ("UA-last", "UA", "IRA"))
    return [("h", 2, "Sequential erasure: after each step"),
            ("p", f"Styles {', '.join(seq['targets'])} are erased one after another, each step from the previous "
                  "step's model (Original: the model before any step; Retrain at step k: trained without the "
                  "styles of steps 1..k). Per step k: **UA <style>** = UA of the style erased at step k; **mean "
                  "UA** = mean UA over every style erased so far (an earlier erasure that comes back lowers it); "
                  "**IRA** = accuracy on the styles not erased yet. results.json (`sequential.steps`) also holds "
                  "each erased style's UA, CRA, FID and the gaps per step."),
            ("table", header, [[label] + row for label, row in cells.items()])]


def _write_report(results: dict, out) -> None:
    from pathlib import Path

    from unlearnx.report import (atomic_write_bytes, atomic_write_text, format_value, image_grid, metric_bars,
                                 render_html, render_markdown, reproducibility_blocks)

    out = Path(out)
    grids = results.get("_grids")
    rows, std = results["rows"], results.get("std", {})
    cols = [c for c in DIFFUSION_COLUMNS if any(c in r for r in rows.values())]
    asr_cols = list(dict.fromkeys(k for r in rows.values() for k in r if k.startswith("ASR/")))
    sc = results["scenario"]
    concept = sc["kind"] == "concept"
    figures = {}
    if grids:
        columns = {"concept": " (forget prompts first), columns Original and each method (no Retrain for a "
                              "pretrained pipeline).",
                   "sequential": ", columns Original, each method and Retrain (after the last step)."}
        figures["grid.png"] = ("Generations (first sample of each prompt, same noise for every model): rows are prompts"
                               + columns.get(sc["kind"], ", columns Original, each method and Retrain."),
                               image_grid(_grid_columns(grids)))
    bar_metrics = [m for m in (CONCEPT_BARS if concept else ("UA", "IRA", "CRA", "FID-eval"))
                   if any(m in r for r in rows.values())]
    reference = "Original" if concept else "Retrain"
    if len(rows) > 1 and bar_metrics:
        figures["metrics.png"] = (f"Each metric per model; dashed line: {reference}.",
                                  metric_bars(rows, bar_metrics, reference=reference, errors=std))
    for name, (_, png) in figures.items():
        atomic_write_bytes(out / "plots" / name, png)
    blocks: list[tuple] = [("h", 1, f"unlearnx report: {results['name']}")]
    if results.get("reading"):
        blocks.append(("p", f"**In short:** {results['reading']}"))
    sequential = sc["kind"] == "sequential"
    what = (f"the styles **{', '.join(sc['targets'])}** one after another" if sequential
            else f"the {sc['kind']} **{sc.get('target')}**")
    intro = _concept_intro(results) if concept else (
        f"Erasing {what} from a diffusion model trained on the built-in "
        f"**{sc['data']}** data ({sc['n_forget']} of {sc['n_train']} training images show "
        f"{'them' if sequential else 'it'}). **Retrain** is "
        f"the same model trained from scratch without those images (the oracle no published diffusion "
        f"benchmark has); generations are classified by evaluators trained in the same run (held-out "
        f"accuracy: {_accuracies(results['evaluators'])}). Seeds {results['seeds']}.")
    blocks += [
        ("p", intro),
        *(_sequential_blocks(results) if sequential else []),
        ("h", 2, "Results after the last step" if sequential else "Results"),
        ("table", ["Model"] + cols, [[n] + [format_value(r.get(c), std.get(n, {}).get(c)) for c in cols]
                                     for n, r in rows.items()]),
        ("table", ["Column", "meaning"], [[c, DIFFUSION_COLUMNS[c]] for c in cols]),
    ]
    if asr_cols:
        blocks += [("h", 2, "Robustness: attack success rate (%) under each attack"),
                   ("p", "ASR = share of attacked generations the evaluator classifies as the erased concept "
                         "(docs/diffusion_robustness.md); Retrain never learned it, so its ASR is the floor."),
                   ("table", ["Model", "UA"] + [c.removeprefix("ASR/") for c in asr_cols],
                    [[n, format_value(r.get("UA"))] + [format_value(r.get(c), std.get(n, {}).get(c)) for c in asr_cols]
                     for n, r in rows.items()])]
    if results["skipped"]:
        blocks.append(("p", "Not run: " + "; ".join(f"{s['method']} ({s['reason']})" for s in results["skipped"])
                       + "."))
    blocks += [("h", 2, "Methods and hyper-parameters"),
               ("table", ["Method", "registered name", "hyper-parameters used"],
                [[k, v["method"], _json(v["resolved"])] for k, v in results["hparams"].items()])]
    if figures:
        blocks.append(("h", 2, "Figures"))
        blocks += [("img", name, png, caption) for name, (caption, png) in figures.items()]
    blocks += reproducibility_blocks(results)
    atomic_write_text(out / "report.md", render_markdown(blocks, figure_dir="plots"))
    atomic_write_text(out / "report.html", render_html(blocks, title=f"unlearnx report: {results['name']}"))


def _concept_intro(results: Mapping) -> str:
    """The report's opening paragraph for a pretrained pipeline: what was erased, that no Retrain
    oracle exists, which metrics are shown instead, where the unlearned pipelines are."""
    sc = results["scenario"]

    def quoted(prompts):
        return ", ".join(f"\"{p}\"" for p in prompts)

    return (f"Erasing the concept of the prompts {quoted(sc['forget'])} from the pretrained pipeline "
            f"`{sc['pretrained']}`, keeping {quoted(sc['retain'])}. The methods' forget / retain images are the "
            f"original's own generations of these prompts ({sc['n_per_prompt']} per prompt: {sc['n_forget']} forget "
            f"and {sc['n_retain']} retain images). **There is no Retrain oracle for a pretrained pipeline** (it "
            f"cannot be retrained here without its training data), hence no gap to Retrain, and no UA / IRA / CRA "
            f"(their evaluators are trained on a run's own data). Shown instead, every model against the original "
            f"on those generations at one fixed timestep and noise per image: **align-forget** / **align-retain** "
            f"(the share of the original's guidance direction the model keeps for the prompts: 1 = unchanged, 0 = "
            f"they act like the empty prompt), **loss-forget** / **loss-retain** (denoising loss), the unlearning "
            f"time, peak GPU memory (GPU runs) and the changed parameters. Each unlearned model is saved as a "
            f"diffusers pipeline directory (`pipeline_dir` in results.json `runs`: seed-<s>/pipelines/<label>/). "
            f"Seeds {results['seeds']}.")


def _json(value) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


def _accuracies(value) -> str:
    return _json({k: {n: round(a, 3) for n, a in v.items()} for k, v in value.items()})


def _grid_columns(grids: Mapping[str, list]) -> dict:
    """Columns Original, the methods, then Retrain."""
    order = [n for n in grids if n != "Retrain"] + (["Retrain"] if "Retrain" in grids else [])
    return {n: grids[n] for n in order}


def diffusion_demo_config(*, methods=None, quick: bool = False, out_dir: str = "runs/demo-diffusion",
                          device: str = "cpu", seed: int = 0) -> dict:
    """The demo: a tiny text-to-image model on the built-in canvas (4 styles x 4 objects, 16x16),
    the first style erased with `methods` (default DIFFUSION_DEMO_METHODS, each skipped with a note
    when not registered), Retrain in the same run. The methods run with the tiny-model values of
    DIFFUSION_DEMO_HPARAMS, overridden by the values `unlearnx tune` chose for this demo
    (`unlearnx.methods.presets.DIFFUSION_DEMO_TUNED`, configs/tune/canvas_demo.yaml). quick: fewer
    training steps and generations, hand-set values only (the quick model was not tuned)."""
    if methods is not None and (isinstance(methods, str) or not all(isinstance(m, str) for m in methods)):
        raise ValueError(f"methods: expected a list of method names, got {methods!r}")
    import unlearnx as ux

    from unlearnx.methods.presets import DIFFUSION_DEMO_TUNED

    def entry(name, **extra):
        known = ux.methods.available("diffusion")
        hp = dict(DIFFUSION_DEMO_HPARAMS.get(name, {})) if name in known else {}
        if name in known and not quick:
            hp.update(DIFFUSION_DEMO_TUNED.get(name, {}))
        return {"name": name, **hp, **extra}

    entries = ([entry(m) for m in methods] if methods is not None
               else [entry(m, optional=True) for m in DIFFUSION_DEMO_METHODS])
    steps = 150 if quick else 400
    return {
        "task": "diffusion",
        "name": "diffusion demo: erase one style from a tiny text-to-image model" + (" (quick)" if quick else ""),
        "out_dir": str(out_dir),
        "seeds": [seed],
        "device": device,
        "threads": 1,
        "data": {"name": "canvas", "size": 16, "n_per_pair": 16, "n_styles": 4, "n_objects": 4},
        "scenario": {"kind": "style"},
        "model": {"block_out_channels": [16, 32], "layers_per_block": 1, "text_dim": 32},
        "train": {"steps": steps, "lr": 2e-3, "batch_size": 32},
        "evaluator": {"epochs": 10 if quick else 15, "n_per_pair": 24 if quick else 32},
        "methods": entries,
        "eval": {"n_per_prompt": 3 if quick else 4, "sample_steps": 10, "guidance_scale": 1.0, "grid_prompts": 4},
    }

