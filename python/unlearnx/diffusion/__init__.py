"""unlearnx.diffusion: the diffusion substrate on diffusers (training, sampling, losses, attention).

    from unlearnx.diffusion import tiny_text_model, train_diffusion, sample, load_pipeline
    dm = tiny_text_model(prompts, image_size=16)          # or load_pipeline("path/to/sd")  (no download)
    train_diffusion(dm, canvas, steps=1500)               # (image, prompt) items; condition dropout for CFG
    images = sample(dm, ["a circle in ocean style"] * 8, steps=20, guidance_scale=3.0)
    ux.unlearn(dm, "esd_x", forget=forget_set, retain=retain_set)   # task "diffusion"

A `DiffusionModel` bundles a diffusers UNet (UNet2DModel class-conditional, or UNet2DConditionModel
with a transformers CLIPTextModel), its noise scheduler and optionally a VAE. Methods live in
unlearnx.methods.diffusion and register in the one method registry.
"""
from unlearnx.diffusion.model import (
    DiffusionModel,
    is_diffusion_model,
    load_pipeline,
    tiny_class_model,
    tiny_text_model,
    word_tokenizer,
)
from unlearnx.diffusion.training import (
    ConditionedImages,
    conditions_of,
    ddim_partial_sample,
    denoise_mse,
    diffusion_loader,
    diffusion_loss,
    drop_conditions,
    noisy_latents,
    sample,
    train_diffusion,
)

__all__ = ["DiffusionModel", "is_diffusion_model", "load_pipeline", "tiny_class_model", "tiny_text_model",
           "word_tokenizer", "ConditionedImages", "conditions_of", "denoise_mse", "ddim_partial_sample", "diffusion_loader",
           "diffusion_loss", "drop_conditions", "noisy_latents", "sample", "train_diffusion"]
