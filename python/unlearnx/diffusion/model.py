"""`DiffusionModel`: one bundle over diffusers' denoisers and their conditioning.

Two kinds of model, one interface:

* class-conditional: a diffusers ``UNet2DModel`` with ``num_class_embeds = num_classes + 1``; the
  condition is a class id, and id ``num_classes`` is the null (unconditional) condition used by
  classifier-free guidance.
* text-conditional: a diffusers ``UNet2DConditionModel`` + a transformers ``CLIPTextModel`` + a
  tokenizer (+ optionally an ``AutoencoderKL`` VAE: a latent model, Stable Diffusion's layout); the
  condition is a prompt string and the null condition is the empty prompt ``""``.

Conditions are passed around as a list of prompts (text), or a list / LongTensor of class ids
(class). ``model.encode(conditions)`` turns them into what the UNet consumes (``class_labels`` or
``encoder_hidden_states``), ``model.predict_noise(x_t, t, emb)`` is ε_θ(x_t, c, t).

Prediction types: the UNet may be trained to predict ε ("epsilon", DDPM / Stable Diffusion 1.x), the
velocity v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x0 ("v_prediction", Salimans & Ho 2022; Stable Diffusion 2.x)
or x0 ("sample"), as its scheduler's ``prediction_type`` says. ``model_output`` is the UNet's native
output and ``training_target`` its regression target (what ``diffusion_loss`` fits);
``predict_noise`` always returns ε (converted with ᾱ_t), so every method and sampler works in ε-space
on any of the three.

Builders: :func:`tiny_class_model`, :func:`tiny_text_model` (random weights from small configs,
with a word-level tokenizer built locally from the prompts: nothing is downloaded), and
:func:`load_pipeline` / :meth:`DiffusionModel.save_pretrained` for a diffusers pipeline directory
(``unet/``, ``scheduler/``, and for text models ``text_encoder/``, ``tokenizer/``, optionally
``vae/``), e.g. a Stable Diffusion checkpoint already on disk.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn

__all__ = ["DiffusionModel", "PREDICTION_TYPES", "word_tokenizer", "tiny_class_model", "tiny_text_model",
           "load_pipeline", "is_diffusion_model"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class DiffusionModel(nn.Module):
    """A denoiser with its noise schedule and conditioning (see the module docstring).

    Args:
        unet: ``UNet2DModel`` (class-conditional, needs ``num_class_embeds``) or ``UNet2DConditionModel``.
        scheduler: the training noise schedule, a diffusers scheduler (``DDPMScheduler``,
            ``DDIMScheduler``, ...) with ``add_noise`` and ``config.num_train_timesteps``.
        text_encoder, tokenizer: required for a ``UNet2DConditionModel`` (a transformers text
            encoder whose ``last_hidden_state`` has the UNet's ``cross_attention_dim``).
        vae: optional ``AutoencoderKL``; when given, the UNet works on latents
            ``vae.encode(x).latent_dist.sample() * scaling_factor`` and samples are decoded.
        num_classes: for a class-conditional UNet: the number of real classes (default
            ``unet.config.num_class_embeds - 1``; the last embedding is the null class).

    Attributes: ``kind`` ("class" | "text"), ``null_condition`` (``num_classes`` or ``""``),
    ``image_shape`` (C, H, W of images), ``latent_shape`` (C, H, W the UNet sees).
    The text encoder and the VAE are frozen (requires_grad False), as in Stable Diffusion training;
    every method trains the UNet (or a LoRA adapter on it).
    """

    def __init__(self, unet: nn.Module, scheduler, *, text_encoder: nn.Module | None = None, tokenizer=None,
                 vae: nn.Module | None = None, num_classes: int | None = None):
        super().__init__()
        from diffusers import UNet2DConditionModel, UNet2DModel

        if isinstance(unet, UNet2DConditionModel):
            if text_encoder is None or tokenizer is None:
                raise ValueError("a UNet2DConditionModel needs text_encoder= and tokenizer=")
            self.kind = "text"
        elif isinstance(unet, UNet2DModel):
            if text_encoder is not None or tokenizer is not None:
                raise ValueError("a UNet2DModel is class-conditional: text_encoder/tokenizer must be None")
            n_embeds = unet.config.num_class_embeds
            if n_embeds is None or n_embeds < 2:
                raise ValueError("a class-conditional UNet2DModel needs num_class_embeds >= 2 (classes + 1 null class)")
            if num_classes is None:
                num_classes = n_embeds - 1
            if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes < n_embeds:
                raise ValueError(f"num_classes must be an int in [1, {n_embeds - 1}], got {num_classes!r}")
            self.kind = "class"
        else:
            raise TypeError(f"unet must be a diffusers UNet2DModel or UNet2DConditionModel, got {type(unet).__name__}")
        if not hasattr(scheduler, "add_noise") or not hasattr(scheduler, "config"):
            raise TypeError(f"scheduler must be a diffusers scheduler, got {type(scheduler).__name__}")
        self.unet = unet
        self.scheduler = scheduler
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.vae = vae
        self.num_classes = num_classes if self.kind == "class" else None
        for frozen in (text_encoder, vae):
            if frozen is not None:
                frozen.requires_grad_(False)
                frozen.eval()
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"scheduler.config.prediction_type must be one of {PREDICTION_TYPES}, "
                             f"got {self.prediction_type!r}")
        self.register_buffer("_alphas_cumprod", scheduler.alphas_cumprod.clone().float(), persistent=False)

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: "epsilon", "v_prediction" or "sample" (the scheduler's config)."""
        return str(getattr(self.scheduler.config, "prediction_type", "epsilon"))

    def alpha_bar(self, t, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t for timesteps t (int, 0-dim or [B] tensor), shaped to broadcast against `like` [B, ...]."""
        t = torch.as_tensor(t, device=self._alphas_cumprod.device).long()
        a = self._alphas_cumprod[t].to(like.device, like.dtype)
        return a.view(-1, *([1] * (like.dim() - 1))) if a.dim() else a

    # ------------------------------------------------------------------ shapes and conditions
    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.unet.config.sample_size
        h, w = (s, s) if isinstance(s, int) else tuple(s)
        return int(self.unet.config.in_channels), int(h), int(w)

    @property
    def vae_scale(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.latent_shape
        if self.vae is None:
            return c, h, w
        f = self.vae_scale
        return int(self.vae.config.in_channels), h * f, w * f

    @property
    def null_condition(self):
        return self.num_classes if self.kind == "class" else ""

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def null_conditions(self, n: int):
        """n copies of the null condition, in the form `encode` takes."""
        return [self.null_condition] * n

    def check_conditions(self, conditions, name: str = "conditions") -> list:
        """The conditions as a plain list; raises naming `name` if one has the wrong type or range."""
        if isinstance(conditions, torch.Tensor):
            conditions = conditions.tolist()
        if isinstance(conditions, (str, int)):
            conditions = [conditions]
        conditions = list(conditions)
        if not conditions:
            raise ValueError(f"{name} is empty")
        for i, c in enumerate(conditions):
            if self.kind == "text":
                if not isinstance(c, str):
                    raise TypeError(f"{name}[{i}] must be a prompt string for a text-conditional model, got {c!r}")
            elif isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= self.num_classes:
                raise ValueError(f"{name}[{i}] must be a class id in [0, {self.num_classes}] "
                                 f"({self.num_classes} = null class), got {c!r}")
        return conditions

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """input_ids [B, L] padded to the tokenizer's model_max_length."""
        ids = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        return ids.to(self.device)

    def encode(self, conditions) -> torch.Tensor:
        """The UNet's conditioning for a batch of conditions.

        class: LongTensor [B] of class ids; text: the text encoder's last_hidden_state [B, L, D].
        """
        conditions = self.check_conditions(conditions)
        if self.kind == "class":
            return torch.tensor(conditions, dtype=torch.long, device=self.device)
        return self.text_encoder(self.tokenize(conditions)).last_hidden_state

    def model_output(self, x_t: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The UNet's native output (ε, v or x0 as `prediction_type` says) for x_t [B, C, H, W]
        (latents for a latent model), t [B] or scalar, emb from `encode`."""
        if self.kind == "class":
            return self.unet(x_t, t, class_labels=emb).sample
        return self.unet(x_t, t, encoder_hidden_states=emb).sample

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """ε_θ(x_t, c, t) whatever the prediction type: v -> sqrt(ᾱ) v + sqrt(1 − ᾱ) x_t,
        x0 -> (x_t − sqrt(ᾱ) x0) / sqrt(1 − ᾱ)."""
        return self.noise_from_output(self.model_output(x_t, t, emb), x_t, t)

    def noise_from_output(self, out: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        """ε from a native UNet output `out` at (x_t, t) (identity for an ε-model); for outputs of
        another UNet of the same parameterization, e.g. a frozen teacher copy."""
        kind = self.prediction_type
        if kind == "epsilon":
            return out
        a = self.alpha_bar(t, x_t)
        if kind == "v_prediction":
            return a.sqrt() * out + (1 - a).sqrt() * x_t
        return (x_t - a.sqrt() * out) / (1 - a).sqrt()

    def output_scale(self, t, like: torch.Tensor):
        """s_t with f_θ − f = s_t (ε_θ − ε) between native outputs and their ε-space values: 1 (epsilon),
        1 / sqrt(ᾱ_t) (v_prediction), sqrt(1 − ᾱ_t) / sqrt(ᾱ_t) (sample); broadcast against `like`."""
        kind = self.prediction_type
        if kind == "epsilon":
            return 1.0
        a = self.alpha_bar(t, like)
        return a.rsqrt() if kind == "v_prediction" else ((1 - a) / a).sqrt()

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """What `model_output` regresses on for x_t = sqrt(ᾱ) x0 + sqrt(1 − ᾱ) ε: ε, v = sqrt(ᾱ) ε −
        sqrt(1 − ᾱ) x0, or x0."""
        kind = self.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return x0
        a = self.alpha_bar(t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def forward(self, x_t, t, emb):
        return self.predict_noise(x_t, t, emb)

    # ------------------------------------------------------------------ images <-> latents
    def to_latents(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0, 1] [B, C, H, W] -> what the UNet denoises: 2x-1 (pixel model) or scaled VAE latents."""
        x = images.to(self.device) * 2.0 - 1.0
        if self.vae is None:
            return x
        with torch.no_grad():
            dist = self.vae.encode(x).latent_dist
            z = dist.mean if generator is None else dist.sample(generator)
        return z * self.vae.config.scaling_factor

    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of `to_latents`, clamped to [0, 1]."""
        x = latents
        if self.vae is not None:
            with torch.no_grad():
                x = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Writes a diffusers pipeline directory (unet/, scheduler/, text_encoder/, tokenizer/, vae/)
        plus unlearnx.json ({kind, num_classes}); `load_pipeline` reads it back. A latent text model
        (Stable Diffusion's layout) also gets model_index.json, so that
        ``StableDiffusionPipeline.from_pretrained(path)`` loads it (no safety checker)."""
        from unlearnx.report import atomic_write_json

        os.makedirs(path, exist_ok=True)
        self.unet.save_pretrained(os.path.join(path, "unet"))
        self.scheduler.save_pretrained(os.path.join(path, "scheduler"))
        if self.text_encoder is not None:
            self.text_encoder.save_pretrained(os.path.join(path, "text_encoder"))
            self.tokenizer.save_pretrained(os.path.join(path, "tokenizer"))
        if self.vae is not None:
            self.vae.save_pretrained(os.path.join(path, "vae"))
        if self.kind == "text" and self.vae is not None:
            # Stable Diffusion's layout: StableDiffusionPipeline.from_pretrained(path) reads it too.
            import diffusers

            atomic_write_json(os.path.join(path, "model_index.json"), {
                "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
                "unet": ["diffusers", type(self.unet).__name__],
                "scheduler": ["diffusers", type(self.scheduler).__name__],
                "text_encoder": ["transformers", type(self.text_encoder).__name__],
                "tokenizer": ["transformers", type(self.tokenizer).__name__],
                "vae": ["diffusers", type(self.vae).__name__],
                "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False})
        atomic_write_json(os.path.join(path, "unlearnx.json"), {"kind": self.kind, "num_classes": self.num_classes})


def is_diffusion_model(model) -> bool:
    return isinstance(model, DiffusionModel)


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _ddpm_scheduler(num_train_timesteps: int, prediction_type: str = "epsilon"):
    from diffusers import DDPMScheduler

    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    # Linear betas 1e-4..0.02 over 1000 steps (Ho et al. 2020); fewer steps keep the same end points.
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear", beta_start=1e-4,
                         beta_end=0.02, prediction_type=prediction_type, clip_sample=True)


def tiny_class_model(num_classes: int = 10, *, image_size: int = 16, channels: int = 1,
                     block_out_channels: Sequence[int] = (32, 64), layers_per_block: int = 1,
                     num_train_timesteps: int = 1000, prediction_type: str = "epsilon") -> DiffusionModel:
    """A small class-conditional pixel-space DDPM (random weights; call torch.manual_seed first).

    UNet2DModel with ``num_class_embeds = num_classes + 1`` (the last id is the null class for
    classifier-free guidance), down blocks DownBlock2D then AttnDownBlock2D (one self-attention
    level), GroupNorm with 8 groups, linear DDPM betas; `prediction_type` "epsilon" (default),
    "v_prediction" or "sample".
    """
    from diffusers import UNet2DModel

    _positive(num_classes, "num_classes")
    _positive(image_size, "image_size")
    _positive(channels, "channels")
    blocks = tuple(_positive(int(b), "block_out_channels[i]") for b in block_out_channels)
    if len(blocks) < 1 or image_size % (2 ** (len(blocks) - 1)):
        raise ValueError(f"image_size {image_size} must be divisible by 2^(len(block_out_channels)-1)")
    down = ("DownBlock2D",) * (len(blocks) - 1) + ("AttnDownBlock2D",)
    up = ("AttnUpBlock2D",) + ("UpBlock2D",) * (len(blocks) - 1)
    unet = UNet2DModel(sample_size=image_size, in_channels=channels, out_channels=channels,
                       layers_per_block=_positive(layers_per_block, "layers_per_block"), block_out_channels=blocks,
                       down_block_types=down, up_block_types=up, norm_num_groups=8,
                       num_class_embeds=num_classes + 1, attention_head_dim=8)
    return DiffusionModel(unet, _ddpm_scheduler(num_train_timesteps, prediction_type), num_classes=num_classes)


_SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def word_tokenizer(prompts: Iterable[str], *, max_length: int = 12):
    """A word-level fast tokenizer (transformers ``PreTrainedTokenizerFast``) over the words of `prompts`.

    Lower-cased alphanumeric words; ids 0..3 are <pad>, <bos>, <eos>, <unk>; every encoding is
    ``<bos> words <eos> <pad>...`` (CLIP's layout). Built locally (no download); it saves with
    ``save_pretrained`` and loads back with ``AutoTokenizer.from_pretrained``.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    _positive(max_length, "max_length")
    vocab = {tok: i for i, tok in enumerate(_SPECIAL)}
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"prompts must be strings, got {p!r}")
        for w in _words(p):
            vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[^a-z0-9]+"), behavior="removed")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", model_max_length=max_length)


def tiny_text_model(prompts: Iterable[str], *, image_size: int = 16, channels: int = 3,
                    block_out_channels: Sequence[int] = (32, 64), layers_per_block: int = 1,
                    text_dim: int = 32, text_layers: int = 2, max_length: int = 12,
                    num_train_timesteps: int = 1000, latent: bool = False,
                    prediction_type: str = "epsilon") -> DiffusionModel:
    """A small text-conditional model with Stable Diffusion's components (random weights).

    UNet2DConditionModel (DownBlock2D then CrossAttnDownBlock2D, cross_attention_dim = text_dim),
    a CLIPTextModel (``text_layers`` layers, width ``text_dim``) over :func:`word_tokenizer` of
    `prompts`, linear DDPM betas, `prediction_type` as in :func:`tiny_class_model`; ``latent=True`` adds a 2-level AutoencoderKL (4 latent channels,
    the UNet runs at image_size / 2).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    prompts = list(prompts)
    tokenizer = word_tokenizer(prompts, max_length=max_length)
    _positive(text_dim, "text_dim")
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=2 * text_dim,
                                 num_hidden_layers=_positive(text_layers, "text_layers"), num_attention_heads=2,
                                 max_position_embeddings=max_length, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    text_encoder = CLIPTextModel(text_config)
    blocks = tuple(_positive(int(b), "block_out_channels[i]") for b in block_out_channels)
    vae = None
    unet_size, unet_ch = image_size, channels
    if latent:
        vae = AutoencoderKL(in_channels=channels, out_channels=channels, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                            sample_size=image_size)
        unet_size, unet_ch = image_size // 2, 4
    if unet_size % (2 ** (len(blocks) - 1)):
        raise ValueError(f"image_size {image_size} must be divisible by 2^(len(block_out_channels)-1)")
    down = ("DownBlock2D",) * (len(blocks) - 1) + ("CrossAttnDownBlock2D",)
    up = ("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (len(blocks) - 1)
    unet = UNet2DConditionModel(sample_size=unet_size, in_channels=unet_ch, out_channels=unet_ch,
                                layers_per_block=_positive(layers_per_block, "layers_per_block"),
                                block_out_channels=blocks, down_block_types=down, up_block_types=up,
                                mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=text_dim,
                                attention_head_dim=8, norm_num_groups=8)
    return DiffusionModel(unet, _ddpm_scheduler(num_train_timesteps, prediction_type), text_encoder=text_encoder,
                          tokenizer=tokenizer, vae=vae)


def load_pipeline(path: str | os.PathLike, *, device=None, torch_dtype=None) -> DiffusionModel:
    """A `DiffusionModel` from a diffusers pipeline directory on disk (nothing is downloaded).

    Reads ``unet/`` (UNet2DConditionModel or UNet2DModel, from its config's _class_name),
    ``scheduler/`` (its class from scheduler_config.json), and when present ``text_encoder/``
    (transformers CLIPTextModel), ``tokenizer/`` (AutoTokenizer) and ``vae/`` (AutoencoderKL).
    A Stable Diffusion directory written by ``StableDiffusionPipeline.save_pretrained`` loads as a
    latent text model; its safety checker and feature extractor are not used.
    """
    import diffusers
    from diffusers import AutoencoderKL

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"path {path!r} is not a directory (a diffusers pipeline directory)")
    kw = {"local_files_only": True}
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype

    def read_json(sub, name):
        file = os.path.join(path, sub, name)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{path!r} has no {sub}/{name}")
        with open(file) as f:
            return json.load(f)

    unet_cls = getattr(diffusers, read_json("unet", "config.json").get("_class_name", "UNet2DConditionModel"))
    unet = unet_cls.from_pretrained(path, subfolder="unet", **kw)
    sched_cls = getattr(diffusers, read_json("scheduler", "scheduler_config.json")["_class_name"])
    scheduler = sched_cls.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    text_encoder = tokenizer = vae = None
    num_classes = None
    if os.path.isdir(os.path.join(path, "text_encoder")):
        from transformers import AutoTokenizer, CLIPTextModel

        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw)
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
    if os.path.isdir(os.path.join(path, "vae")):
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
    meta = os.path.join(path, "unlearnx.json")
    if os.path.isfile(meta):
        with open(meta) as f:
            num_classes = json.load(f).get("num_classes")
    model = DiffusionModel(unet, scheduler, text_encoder=text_encoder, tokenizer=tokenizer, vae=vae,
                           num_classes=num_classes)
    return model.to(device) if device is not None else model
