"""unlearnx.methods: unlearning algorithms, a registry by name, and `unlearn`.

    import unlearnx as ux
    ux.methods.available()                      # ['bad_teacher', 'blindspot', 'boundary_expand', ...]
    ux.methods.get("ft").defaults               # hyper-parameters and their paper defaults
    res = ux.unlearn(model, method="ft", forget=forget_data, retain=retain_data, epochs=5)
    res.model, res.seconds, res.log

    # causal LMs (any transformers AutoModelForCausalLM; unlearnx.methods.llm):
    res = ux.unlearn(lm, method="npo", forget=qa.split("forget10"), retain=qa.split("retain90"),
                     tokenizer=tok, lr=1e-5, epochs=5, lora=True)

Every method is a class in its own module (one per method or close family), registered with
`@register_method(name)`, with a `defaults` dict and a `paper` citation.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

from unlearnx.methods import (  # noqa: F401  (registers the methods)
    boundary,
    budget,
    concept_poison,
    distillation,
    finetune,
    fisher_forgetting,
    gan,
    gradient_ascent,
    influence,
    laf,
    lipschitz,
    prune_first,
    random_labels,
    regression,
    salun,
    ssd,
    unsir,
)
from unlearnx.methods import llm  # noqa: F401  (registers the causal-LM methods)
from unlearnx.methods import diffusion  # noqa: F401  (registers the diffusion methods)
from unlearnx.diffusion.model import is_diffusion_model  # noqa: E402
from unlearnx import guards  # noqa: F401,E402  (registers the inference-time guards "eco" and "o3")
from unlearnx.methods.registry import UnlearningMethod, UnlearnResult, available, get, register_method
from unlearnx.methods.training import method_loaders, model_device, seeded, train_classifier

__all__ = ["unlearn", "available", "get", "register_method", "UnlearningMethod", "UnlearnResult",
           "train_classifier"]


def unlearn(
    model: nn.Module,
    method: str,
    forget=None,
    retain=None,
    *,
    inplace: bool = False,
    seed: int = 0,
    progress: bool = True,
    device=None,
    task: str | None = None,
    tokenizer=None,
    **hparams,
) -> UnlearnResult:
    """Unlearn `forget` from `model` with the registered `method`; returns an `UnlearnResult`.

    forget, retain: map-style Datasets of (x, y) or DataLoaders. Datasets become DataLoaders with
    the method's `batch_size` (forget: `forget_batch_size` when the method has one) and shuffling
    seeded by `seed`; DataLoaders are used as given. A method that does not read one of them
    (e.g. Retrain and FT never read `forget`) accepts None.
    inplace: False (default) deep-copies `model` first, so the caller's model is untouched.
    seed: seeds torch's RNG for the run (restored afterwards), the shuffling and any draws.
    device: where to run (default: the model's device); the model is moved there.
    hparams: the method's hyper-parameters (`get(method).defaults`); unknown names raise TypeError.
    res.seconds is the wall time of the method alone (the RTE), not of the copy.

    task: "classifier" or "causal_lm"; default from the model: a transformers PreTrainedModel with a
    causal-LM head (or a peft model around one) is "causal_lm", anything else "classifier".
    A GAN bundle (unlearnx.models.gan.DCGAN: .generator, .discriminator) is task "gan"
    (unlearnx.methods.gan): forget = negative samples, retain = positive ones (feedback_samples).
    For causal LMs (unlearnx.methods.llm.base): forget/retain are QADataset/TextDataset or
    sequences of QAItem / (question, answer) pairs (tokenized with `tokenizer`); res.log holds
    per-step losses; under lora=... res.model is the peft model (merge_lora=True merges it).

    task "diffusion" (default for an unlearnx.diffusion.DiffusionModel; unlearnx.methods.diffusion):
    forget/retain are Datasets of (image, condition, ...) items (condition: a prompt or a class id),
    passed to the method as given; res.model is the edited DiffusionModel (LoRA adapters merged).
    """
    if task is None and gan.is_gan(model):  # GAN bundles (.generator, .discriminator): unlearnx.methods.gan
        task = "gan"
    if task is None:
        if is_diffusion_model(model):
            task = "diffusion"
        else:
            task = "causal_lm" if llm.is_causal_lm(model) else "classifier"
    cls = get(method, task)
    algo = cls(**hparams)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if task == "gan":  # forget = negative, retain = positive samples, passed as given (unlearnx.methods.gan)
        for name, part in (("forget", forget), ("retain", retain)):
            if name in cls.requires and part is None:
                raise ValueError(f"method {cls.name!r} needs {name}= samples (a Dataset or tensor of images)")
        gan.check_gan(model)
        return _timed(algo, model, inplace=inplace, seed=seed, device=device,
                      body=lambda m: (m, algo.run(m, forget=forget, retain=retain, seed=seed, progress=progress)))
    data = {"forget": forget, "retain": retain}
    for name in cls.requires:
        if data[name] is None:
            raise ValueError(f"method {cls.name!r} needs {name}= data (a Dataset or DataLoader of (x, y))")
    if task == "diffusion":
        if not is_diffusion_model(model):
            raise TypeError(f"task 'diffusion' needs an unlearnx.diffusion.DiffusionModel, got {type(model).__name__}")
        # forget/retain go to the method as given (Datasets of (image, condition, ...)).
        return _timed(algo, model, inplace=inplace, seed=seed, device=device,
                      body=lambda m: (m, algo.run(m, forget=forget, retain=retain, seed=seed, progress=progress)))
    if task == "causal_lm":
        return _timed(algo, model, inplace=inplace, seed=seed, device=device,
                      body=lambda m: llm.run_lm(algo, m, forget, retain, tokenizer=tokenizer, seed=seed,
                                                progress=progress))
    loaders = method_loaders(algo.hparams, forget, retain, seed=seed)
    return _timed(algo, model, inplace=inplace, seed=seed, device=device,
                  body=lambda m: (m, algo.run(m, forget=loaders["forget"], retain=loaders["retain"], seed=seed,
                                              progress=progress)))


def _timed(algo, model, *, inplace: bool, seed: int, device, body) -> UnlearnResult:
    """Copy (unless inplace) and move the model, then run `body(model) -> (model, log)` seeded and
    timed (the RTE: the method alone, after a CUDA synchronize; not the copy)."""
    if not inplace:
        model = copy.deepcopy(model)
    if device is not None:
        model = model.to(device)
    with seeded(seed, model_device(model)):
        start = time.perf_counter()
        model, log = body(model)
        if model_device(model).type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return UnlearnResult(model=model, seconds=seconds, log=dict(log), method=algo.name, hparams=dict(algo.hparams))
