"""Built-in image data for diffusion unlearning (no download, deterministic from a seed).

* :func:`canvas_dataset`: UnlearnCanvas in miniature: small RGB images of N objects (shapes)
  rendered in M styles (a palette + a texture), with prompts "a {object} in {style} style".
  With ``aliases=k`` half of the captions name the style by one of k other words
  (:data:`CANVAS_STYLE_ALIASES`): a concept a text-to-image model knows under several names, as
  Stable Diffusion knows an artist's style under the name, the movement and the famous works, while
  an erasure request names it once (docs/diffusion.md, "Aliases").
* :func:`digits_upscaled`: scikit-learn's 8x8 digits resized to 16x16 (or any size), for
  class-conditional forgetting.

Items are ``(image [C, H, W] in [0, 1], condition, style_id, object_id)`` for the canvas and
``(image, class_id)`` for digits, so they feed `unlearnx.diffusion.train_diffusion` directly
(the first two entries are image and condition).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["CANVAS_OBJECTS", "CANVAS_STYLES", "CANVAS_STYLE_ALIASES", "MAX_ALIASES", "CanvasDataset",
           "canvas_dataset", "canvas_prompt", "digits_upscaled", "render_canvas"]

CANVAS_OBJECTS = ("circle", "square", "triangle", "cross", "diamond", "bar")


@dataclass(frozen=True)
class _Style:
    name: str
    fg: tuple[float, float, float]
    bg: tuple[float, float, float]
    texture: str  # solid | stripes | checker | outline | dots | gradient


CANVAS_STYLES = (
    _Style("crimson", (0.9, 0.1, 0.1), (0.05, 0.05, 0.05), "solid"),
    _Style("ocean", (0.1, 0.3, 0.95), (0.85, 0.9, 0.95), "stripes"),
    _Style("forest", (0.1, 0.6, 0.15), (0.95, 0.9, 0.7), "checker"),
    _Style("sunset", (1.0, 0.85, 0.1), (0.45, 0.1, 0.5), "outline"),
    _Style("mono", (1.0, 1.0, 1.0), (0.45, 0.45, 0.45), "dots"),
    _Style("candy", (1.0, 0.4, 0.8), (0.2, 0.75, 0.75), "gradient"),
)


# Other words for each style (a few per style, none shared with another style, an object or the
# prompt template); `canvas_dataset(aliases=k)` captions half the images with one of the first k.
CANVAS_STYLE_ALIASES = {
    "crimson": ("scarlet", "ruby", "cherry"),
    "ocean": ("azure", "navy", "marine"),
    "forest": ("emerald", "jade", "moss"),
    "sunset": ("amber", "dusk", "golden"),
    "mono": ("silver", "ash", "pewter"),
    "candy": ("bubblegum", "sweet", "pastel"),
}
MAX_ALIASES = min(len(a) for a in CANVAS_STYLE_ALIASES.values())  # the largest `aliases=` every style can serve


def canvas_prompt(obj: str, style: str) -> str:
    return f"a {obj} in {style} style"


def _shape_mask(obj: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if obj == "circle":
        return dx ** 2 + dy ** 2 <= r ** 2
    if obj == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r
    if obj == "triangle":
        return (dy <= 0.8 * r) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.55)
    if obj == "cross":
        t = 0.35 * r
        return ((np.abs(dx) <= t) & (np.abs(dy) <= r)) | ((np.abs(dy) <= t) & (np.abs(dx) <= r))
    if obj == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if obj == "bar":
        return (np.abs(dx) <= r) & (np.abs(dy) <= 0.3 * r)
    raise ValueError(f"unknown object {obj!r}; known: {CANVAS_OBJECTS}")


def _texture(style: _Style, mask: np.ndarray, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    """Weight in [0, 1] of the foreground colour at each pixel inside `mask`."""
    s = max(1, size // 16)  # texture period scales with the image
    if style.texture == "solid":
        return mask.astype(np.float32)
    if style.texture == "stripes":
        return (mask & (((xx + yy) // (2 * s)) % 2 == 0)).astype(np.float32)
    if style.texture == "checker":
        return (mask & (((xx // (2 * s)) + (yy // (2 * s))) % 2 == 0)).astype(np.float32)
    if style.texture == "outline":
        inner = mask.copy()
        for sy, sx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            inner &= np.roll(np.roll(mask, sy * s, axis=0), sx * s, axis=1)
        return (mask & ~inner).astype(np.float32)
    if style.texture == "dots":
        return (mask & ((xx // s) % 2 == 0) & ((yy // s) % 2 == 0)).astype(np.float32)
    if style.texture == "gradient":
        return mask * (0.35 + 0.65 * xx / max(1, size - 1)).astype(np.float32)
    raise ValueError(f"unknown texture {style.texture!r}")


def render_canvas(obj: str, style: str, *, size: int = 32, rng: np.random.Generator | None = None) -> np.ndarray:
    """One image float32 [3, size, size] in [0, 1]: object `obj` in style `style`, with a random
    position/size jitter and colour noise drawn from `rng` (no jitter when rng is None)."""
    styles = {s.name: s for s in CANVAS_STYLES}
    if style not in styles:
        raise ValueError(f"unknown style {style!r}; known: {tuple(styles)}")
    st = styles[style]
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    if rng is None:
        cx = cy = c
        r = 0.32 * size
        jitter = np.zeros(3)
    else:
        cx, cy = c + rng.uniform(-0.12, 0.12, 2) * size
        r = rng.uniform(0.26, 0.36) * size
        jitter = rng.normal(0, 0.04, 3)
    mask = _shape_mask(obj, xx - cx, yy - cy, r)
    w = _texture(st, mask, yy, xx, size)[None]
    fg = np.clip(np.asarray(st.fg) + jitter, 0, 1)[:, None, None]
    bg = np.clip(np.asarray(st.bg) + jitter, 0, 1)[:, None, None]
    img = w * fg + (1 - w) * bg
    if rng is not None:
        img = img + rng.normal(0, 0.02, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


class CanvasDataset(Dataset):
    """Canvas images with their prompt, style id and object id.

    Items: ``(image [3, S, S], prompt, style_id, object_id)``. Attributes: ``images`` [N, 3, S, S],
    ``style_ids`` / ``object_ids`` LongTensor [N], ``prompts`` (N strings), ``styles`` / ``objects``
    (names), ``conditions`` (= prompts, what a diffusion model is conditioned on). ``prompts``
    default to "a {object} in {style} style" with each style's name; given, they are the captions
    (e.g. with style aliases) and :meth:`canonical` gives the same images with the default ones.
    """

    def __init__(self, images, style_ids, object_ids, styles, objects, prompts=None):
        self.images = images
        self.style_ids = style_ids
        self.object_ids = object_ids
        self.styles = tuple(styles)
        self.objects = tuple(objects)
        if prompts is None:
            prompts = [canvas_prompt(self.objects[o], self.styles[s])
                       for s, o in zip(style_ids.tolist(), object_ids.tolist())]
        elif len(prompts) != len(style_ids):
            raise ValueError(f"prompts: expected {len(style_ids)} captions (one per image), got {len(prompts)}")
        self.prompts = list(prompts)

    @property
    def conditions(self) -> list[str]:
        return self.prompts

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], self.prompts[i], int(self.style_ids[i]), int(self.object_ids[i])

    def subset(self, keep) -> "CanvasDataset":
        """The items where the bool mask / index tensor `keep` selects."""
        keep = torch.as_tensor(keep)
        idx = torch.arange(len(self))[keep].tolist()
        return CanvasDataset(self.images[keep], self.style_ids[keep], self.object_ids[keep], self.styles, self.objects,
                             prompts=[self.prompts[i] for i in idx])

    def canonical(self) -> "CanvasDataset":
        """The same images captioned "a {object} in {style} style" with each style's own name."""
        return CanvasDataset(self.images, self.style_ids, self.object_ids, self.styles, self.objects)

    def split_style(self, style: str) -> tuple["CanvasDataset", "CanvasDataset"]:
        """(forget, retain): the items of `style`, and all others."""
        if style not in self.styles:
            raise ValueError(f"style {style!r} is not one of {self.styles}")
        f = self.style_ids == self.styles.index(style)
        return self.subset(f), self.subset(~f)

    def split_object(self, obj: str) -> tuple["CanvasDataset", "CanvasDataset"]:
        """(forget, retain): the items of object `obj`, and all others."""
        if obj not in self.objects:
            raise ValueError(f"object {obj!r} is not one of {self.objects}")
        f = self.object_ids == self.objects.index(obj)
        return self.subset(f), self.subset(~f)

    def style_labeled(self):
        """TensorDataset (image, style_id) for the style evaluator."""
        return torch.utils.data.TensorDataset(self.images, self.style_ids)

    def object_labeled(self):
        """TensorDataset (image, object_id) for the object evaluator."""
        return torch.utils.data.TensorDataset(self.images, self.object_ids)


def canvas_dataset(*, n_per_pair: int = 40, size: int = 32, n_styles: int = 5, n_objects: int = 5,
                   seed: int = 0, aliases: int = 0) -> CanvasDataset:
    """`n_per_pair` images of every (style, object) pair of the first `n_styles` styles and
    `n_objects` objects, deterministic from `seed`; ordered style-major then object then sample.

    aliases: 0 (every caption names the style by its name) or k in 1..3: each image's caption names
    its style, with probability 1/2, by one of the style's first k :data:`CANVAS_STYLE_ALIASES`
    instead (drawn uniformly, from a generator of its own: the images are those of ``aliases=0``)."""
    for key, value, hi, lo in (("n_per_pair", n_per_pair, None, 1), ("size", size, None, 1),
                               ("n_styles", n_styles, len(CANVAS_STYLES), 1),
                               ("n_objects", n_objects, len(CANVAS_OBJECTS), 1), ("aliases", aliases, MAX_ALIASES, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
            raise ValueError(f"{key} must be an integer in [{lo}, {hi or 'inf'}], got {value!r}")
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    styles = [s.name for s in CANVAS_STYLES[:n_styles]]
    objects = list(CANVAS_OBJECTS[:n_objects])
    rng = np.random.default_rng(seed)
    imgs, sids, oids = [], [], []
    for si, s in enumerate(styles):
        for oi, o in enumerate(objects):
            for _ in range(n_per_pair):
                imgs.append(render_canvas(o, s, size=size, rng=rng))
                sids.append(si)
                oids.append(oi)
    prompts = None
    if aliases:
        pick = np.random.default_rng([seed, 1]).random((len(sids), 2))
        words = [(styles[s],) if u < 0.5 else CANVAS_STYLE_ALIASES[styles[s]][:aliases]
                 for s, (u, _) in zip(sids, pick)]
        prompts = [canvas_prompt(objects[o], w[int(v * len(w))]) for o, w, (_, v) in zip(oids, words, pick)]
    return CanvasDataset(torch.from_numpy(np.stack(imgs)), torch.tensor(sids), torch.tensor(oids), styles, objects,
                         prompts=prompts)


def digits_upscaled(*, size: int = 16, seed: int = 0, test_fraction: float = 0.2):
    """scikit-learn's digits resized (bilinear) to size x size: (train, test) TensorDatasets of
    x float32 [N, 1, size, size] in [0, 1] and y int64 class ids (0..9)."""
    from unlearnx.data.datasets import digits_dataset

    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    out = []
    for ds in digits_dataset(seed=seed, test_fraction=test_fraction):
        x, y = ds.tensors
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
        out.append(torch.utils.data.TensorDataset(x, y))
    return tuple(out)
