"""O3: continual LLM unlearning with one orthogonal LoRA per request and an OOD detector that gates it.

Gao, Wang, Ding, Weng, Wang, Zhu, "On Large Language Model Continual Unlearning", ICLR 2025
(arXiv 2407.10223, first titled "Practical Unlearning for Large Language Models"). No retain data
is used anywhere: each request t brings only its forget set D_t.

Per request t (`O3Guard.add_request`):

1. Orthogonal LoRA. Every targeted linear layer W (default: all linear layers but the LM head, as
   `unlearnx.methods.llm.base.default_lora_config`) gets a new adapter (A_t [r, d_in], B_t
   [d_out, r], B_t = 0 at the start), W x + s * B_t A_t x with s = lora_alpha / r. It is trained on
   D_t with the unlearning objective (`objective`: "ga", L_u = -NLL; or "npo", the NPO loss with the
   base model as the reference) plus the orthogonality loss of O-LoRA that O3 adopts,

       L = L_u + orth_lambda * sum_{s<t} sum_layers || A_s A_t^T ||_F^2

   (A in PyTorch's [r, d_in] layout, so A_s A_t^T is the paper's A_s^T A_t). Earlier adapters are
   frozen; only request t's adapter is active while it trains. The paper's Eq. 6 regularizes
   against the previous request only; the sum over every earlier request used here is O-LoRA's
   form and implies it.
2. OOD detector, fitted on D_t alone. Features h_l: the base model's hidden states at
   `detector_layers` evenly spaced decoder layers, taken at the last attended token (the causal
   LM's summary of its input; mean pooling is dominated by the shared question template), of every
   forget example and of its prompt alone (what a generation request looks like). Per layer a
   residual head z_l = normalize(h_l + W_l h_l), W_l = 0 at the start, can be trained
   (`detector_epochs` > 0) with the contrastive entropy loss (Eq. 7): for a batch of B examples,
   queries q_i = head(masked view of x_i), keys k_j = head(x_j),

       p_ij = softmax_j(cos(q_i, k_j) / detector_tau),    L_CEL = (1/B) sum_i -sum_j p_ij log p_ij

   i.e. the entropy of each masked query's similarity distribution over the batch is minimized.
   A masked view hides a random `mask_rate` fraction of the tokens (<bos> and the last token kept)
   from attention. The backbone is the frozen base model, so the paper's MLM term (which trains its
   separate detector LM) has no counterpart. Off by default: on the built-in data CEL training
   spreads the forget examples apart, erasing what they share (the author), and every prompt ends
   up flagged (docs/o3.md has the numbers).
3. Glocal score of an input x, per layer l:
   local  c_l(x) = max_j cos(z_l(x), K_{l,j})        (nearest stored forget key)
   global m_l(x) = min_k sqrt((z_l - mu_{l,k})^T Sigma_l^{-1} (z_l - mu_{l,k})), a class-conditional
                   Gaussian (Lee et al., 2018) with one class per input kind (whole example, prompt)
                   and a tied covariance Sigma_l = (1 - shrinkage) S_l + shrinkage * tr(S_l)/p * I
   layer score u_l = (c_l - a_l)/b_l - (m_l - a'_l)/b'_l, standardized by the mean/std (a, b) of
   the same quantities on the forget prompts, each computed leave-one-example-out (what an unseen
   forget-like prompt scores); aggregated over the layers as s(x) = mean_l u_l(x). Calibration
   (forget data only): threshold tau_t = the `threshold_quantile` quantile of the leave-one-out
   forget prompt scores (so ~80% of unseen forget-like prompts are flagged by default), reference
   rho_t = their median.

Inference (`O3Guard.forward`): the base model runs once with its hidden states; each request's
detector gives the soft gate of its LoRA for every row,

       g_t(x) = clip((s_t(x) - tau_t) / (rho_t - tau_t), 0, 1)      (0 at or below the threshold)

If no row is flagged (all g = 0) that first forward's output is returned as is: unflagged inputs
get the base model's outputs bit for bit, at the cost of the detector only. Otherwise the
batch runs again with every adapter active, W x + sum_t g_t(row) s B_t A_t x, and unflagged rows
keep the first forward's logits. A KV-cached continuation step (cache of length > 0) reuses the
gates its prompt got. The gates are per-row and continuous, which peft's adapters cannot express,
so the adapters are forward hooks on the base model's layers, registered only while a gated
forward runs: the base model's structure and weights are never changed.

`O3` registers the method as "o3" (task "causal_lm"): `ux.unlearn(model, "o3", forget=...,
tokenizer=tok)` returns the guard (one request, the forget set) as `res.model`; retain data, if
given, is ignored. Hyper-parameters: the common LLM ones (epochs, lr, batch_size, ... of
unlearnx.methods.llm.base; lora None/True = r 8, alpha 16 on all linear layers, or a
peft.LoraConfig whose r, lora_alpha and target_modules are used) and those in `O3_DEFAULTS`.
"""
from __future__ import annotations

import copy
import inspect
import json
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unlearnx._modes import training_mode
from unlearnx.data.lm_batches import IGNORE_INDEX, ForgetRetainLoader, PairedQADataset, QATemplate, pad_batch
from unlearnx.methods.llm.base import (COMMON_DEFAULTS, IndexedDataset, LLMMethod, _FlatLoader, as_lm_dataset,
                                       cached_sequence_logprobs, default_lora_config)
from unlearnx.methods.llm.losses import forward_logits, mean_nll, sequence_logprob
from unlearnx.methods.llm.npo import npo_loss
from unlearnx.methods.registry import register_method

__all__ = ["O3", "O3Guard", "O3_DEFAULTS", "contrastive_entropy_loss", "orthogonality_loss", "subspace_overlap"]

O3_DEFAULTS = {
    "objective": "ga",            # unlearning loss of each LoRA: "ga" | "npo"
    "beta": 0.1,                  # NPO temperature (objective="npo")
    "orth_lambda": 0.5,           # weight of the orthogonality loss (O-LoRA's lambda_1)
    "detector_layers": 4,         # decoder layers whose pooled states the detector scores
    "detector_epochs": 0,         # passes of CEL training of the heads (0: the heads stay the identity)
    "detector_lr": 1e-3,
    "detector_tau": 0.1,          # CEL softmax temperature
    "detector_views": 4,          # masked views per example (the CEL queries)
    "mask_rate": 0.15,            # fraction of tokens hidden in a masked view (MLM's rate)
    "shrinkage": 0.1,             # covariance shrinkage towards tr(S)/p * I for the Mahalanobis distance
    "threshold_quantile": 0.2,    # gate threshold: this quantile of the leave-one-out forget prompt scores
}
_OBJECTIVES = ("ga", "npo")
_FORMAT = "unlearnx-o3/1"


# --------------------------------------------------------------------------------------------
# Losses and measurements
# --------------------------------------------------------------------------------------------

def contrastive_entropy_loss(queries: torch.Tensor, keys: torch.Tensor, tau: float) -> torch.Tensor:
    """O3's contrastive entropy loss (Gao et al., 2025, Eq. 7).

    queries, keys: [B, p] (masked views and originals of the same B examples; normalized here).
    p_ij = softmax_j(cos(q_i, k_j) / tau); returns (1/B) sum_i -sum_j p_ij log p_ij (a scalar).
    """
    if queries.dim() != 2 or queries.shape != keys.shape:
        raise ValueError(f"queries, keys: expected two [B, p] tensors of one shape, got {tuple(queries.shape)} "
                         f"and {tuple(keys.shape)}")
    if not tau > 0:
        raise ValueError(f"tau: must be > 0, got {tau!r}")
    logits = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T / tau
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1).mean()


def orthogonality_loss(previous: Sequence[torch.Tensor], current: torch.Tensor) -> torch.Tensor:
    """sum_s || A_s A_t^T ||_F^2 over earlier LoRA down-projections A_s [r_s, d] and A_t = current [r, d].

    O-LoRA's orthogonal subspace loss (Wang et al., 2023), used by O3; 0 when `previous` is empty.
    """
    total = current.new_zeros(())
    for i, a in enumerate(previous):
        if a.dim() != 2 or a.shape[1] != current.shape[1]:
            raise ValueError(f"previous[{i}]: expected [r, {current.shape[1]}], got {tuple(a.shape)}")
        total = total + (a.detach() @ current.T).pow(2).sum()
    return total


def subspace_overlap(a_s: torch.Tensor, a_t: torch.Tensor) -> float:
    """|| A_s A_t^T ||_F / (||A_s||_F ||A_t||_F) in [0, 1]: 0 for orthogonal row spaces, 1 for the
    same rank-1 direction; about 1/sqrt(d) for independent random A of width d."""
    if a_s.dim() != 2 or a_t.dim() != 2 or a_s.shape[1] != a_t.shape[1]:
        raise ValueError(f"a_s, a_t: expected [r, d] matrices of one width, got {tuple(a_s.shape)} "
                         f"and {tuple(a_t.shape)}")
    a_s, a_t = a_s.detach().double(), a_t.detach().double()
    den = a_s.norm() * a_t.norm()
    if den == 0:
        raise ValueError("a_s, a_t: a zero matrix has no subspace")
    return float((a_s @ a_t.T).norm() / den)


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------

def _pooled(hidden_states, layers: Sequence[int], attention_mask: torch.Tensor) -> torch.Tensor:
    """[n_layers, B, H] fp32: hidden_states[l] at each row's last attended token.

    A causal LM's last token has attended to the whole input: it is the decoder's summary of the
    sequence (mean pooling is dominated by the shared question template and separates worse).
    Works for right and left padding."""
    m = attention_mask.to(hidden_states[0].device)
    width = m.shape[1]
    last = width - 1 - (m.flip(1) > 0).long().argmax(1)
    rows = torch.arange(m.shape[0], device=m.device)
    return torch.stack([hidden_states[l][rows, last].float() for l in layers])


def _cache_length(cache) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return int(cache[0][0].shape[-2]) if len(cache) else 0  # legacy tuple of (k, v) per layer


class _Detector(nn.Module):
    """One request's OOD detector: projection heads, stored forget keys and the calibration."""

    def __init__(self, n_layers: int, hidden: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_layers))
        for h in self.heads:  # residual heads start as the identity: training refines the LM's own features
            nn.init.zeros_(h.weight)
            nn.init.zeros_(h.bias)
        for name in ("keys", "mean", "precision", "stats", "threshold", "reference"):
            self.register_buffer(name, None)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled [n_layers, B, H] -> z = normalize(x + head(x)) [n_layers, B, H]."""
        return F.normalize(torch.stack([x + h(x) for h, x in zip(self.heads, pooled)]), dim=-1)

    @staticmethod
    def _fit_gaussian(z: torch.Tensor, kinds: torch.Tensor, shrinkage: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-conditional Gaussian with a tied covariance (Lee et al., 2018), one class per input kind.

        z [n_layers, N, p], kinds [N] (0 = whole example, 1 = prompt alone) -> means [n_layers, K, p]
        (K = 2; a kind absent from z repeats the other's mean), shrunk precision [n_layers, p, p].
        """
        present = [k for k in (0, 1) if bool((kinds == k).any())]
        means = {k: z[:, kinds == k].mean(1) for k in present}
        mean = torch.stack([means.get(k, means[present[0]]) for k in (0, 1)], 1)
        d = (z - mean[:, kinds]).double()
        cov = d.transpose(1, 2) @ d / max(1, z.shape[1] - len(present))
        p = z.shape[-1]
        scale = torch.diagonal(cov, dim1=1, dim2=2).sum(-1).clamp(min=1e-12) / p
        eye = torch.eye(p, dtype=cov.dtype, device=cov.device)
        shrunk = (1 - shrinkage) * cov + shrinkage * scale[:, None, None] * eye
        return mean, torch.linalg.inv(shrunk).to(z.dtype)

    @staticmethod
    def _raw(z: torch.Tensor, keys: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor):
        """(c [n_layers, B] nearest-key cosine, m [n_layers, B] Mahalanobis distance to the nearest class mean)."""
        c = (z @ keys.transpose(1, 2)).amax(-1)
        d = z[:, :, None] - mean[:, None]  # [n_layers, B, K, p]
        m = torch.einsum("lbkp,lpq,lbkq->lbk", d, precision, d).clamp(min=0).amin(-1).sqrt()
        return c, m

    def fit(self, pooled: torch.Tensor, masked: torch.Tensor, groups: torch.Tensor, kinds: torch.Tensor, *,
            hp: dict, generator: torch.Generator, progress: bool) -> list[float]:
        """Train the heads with L_CEL, store keys and the Gaussian, calibrate the threshold.

        pooled [n_layers, N, H] (unmasked), masked [V, n_layers, N, H] (V masked views), groups [N]
        (the forget example each row comes from; leave-one-out removes a whole group), kinds [N]
        (0 = whole example, 1 = its prompt alone). Returns the per-epoch CEL values.
        """
        from tqdm import tqdm

        n = pooled.shape[1]
        opt = torch.optim.AdamW(self.heads.parameters(), lr=hp["detector_lr"], weight_decay=0.0)
        bs = max(2, min(n, hp["batch_size"]))
        losses = []
        for _ in tqdm(range(hp["detector_epochs"]), desc="o3 detector", disable=not progress):
            order = torch.randperm(n, generator=generator)
            view = torch.randint(masked.shape[0], (n,), generator=generator)
            total = 0.0
            for s in range(0, n, bs):
                idx = order[s:s + bs]
                if len(idx) < 2:  # one example has no contrast
                    continue
                q = self.project(masked[view[idx], :, idx].transpose(0, 1))
                k = self.project(pooled[:, idx])
                loss = torch.stack([contrastive_entropy_loss(q[l], k[l], hp["detector_tau"])
                                    for l in range(q.shape[0])]).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            losses.append(total / n)
        with torch.no_grad():
            z = self.project(pooled)
            self.keys = z
            self.mean, self.precision = self._fit_gaussian(z, kinds, hp["shrinkage"])
            # Leave-one-example-out values: what an unseen forget-like input would score.
            cs, ms = torch.empty_like(z[..., 0]), torch.empty_like(z[..., 0])
            for g in groups.unique():
                out = groups == g
                mean, prec = self._fit_gaussian(z[:, ~out], kinds[~out], hp["shrinkage"])
                c, m = self._raw(z[:, out], z[:, ~out], mean, prec)
                cs[:, out], ms[:, out] = c, m
            # Calibrate on the prompts when there are any: a prompt alone is the hardest input to flag.
            cal = kinds == 1 if bool((kinds == 1).any()) else torch.ones_like(kinds, dtype=torch.bool)
            cs, ms = cs[:, cal], ms[:, cal]
            self.stats = torch.stack([cs.mean(1), cs.std(1).clamp(min=1e-6), ms.mean(1), ms.std(1).clamp(min=1e-6)], 1)
            scores = self._combine(cs, ms)
            # Shape [1], not 0-d: unlearnx.eval.llm.fingerprint_model cannot byte-view 0-d tensors.
            self.threshold = torch.quantile(scores, hp["threshold_quantile"]).reshape(1)
            # The ramp needs reference > threshold; a degenerate calibration gets a unit-wide ramp.
            self.reference = torch.maximum(scores.median(), self.threshold + 1e-3).reshape(1)
        return losses

    def _combine(self, c: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        st = self.stats
        return ((c - st[:, 0:1]) / st[:, 1:2] - (m - st[:, 2:3]) / st[:, 3:4]).mean(0)

    def score(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled [n_layers, B, H] -> glocal score s [B] (higher = more forget-like)."""
        c, m = self._raw(self.project(pooled), self.keys, self.mean, self.precision)
        return self._combine(c, m)

    def gate(self, scores: torch.Tensor) -> torch.Tensor:
        """s [B] -> g [B] = clip((s - tau) / (rho - tau), 0, 1)."""
        return ((scores - self.threshold) / (self.reference - self.threshold)).clamp(0.0, 1.0)


class _Request(nn.Module):
    """One unlearning request: its LoRA (A [r, d_in], B [d_out, r] per target layer) and detector."""

    def __init__(self, shapes: Sequence[tuple[int, int]], rank: int, detector: _Detector,
                 generator: torch.Generator | None):
        super().__init__()
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        for d_in, d_out in shapes:
            a = torch.empty(rank, d_in)
            if generator is not None:  # nn.Linear's / peft's init for A: kaiming_uniform(a=sqrt(5))
                bound = 1.0 / math.sqrt(d_in)
                a.uniform_(-bound, bound, generator=generator)
            self.lora_A.append(nn.Parameter(a))
            self.lora_B.append(nn.Parameter(torch.zeros(d_out, rank)))
        self.detector = detector


def _io_features(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.nx, module.nf  # transformers' Conv1D (GPT-2): weight [in, out]


def _lora_targets(model: nn.Module, target_modules) -> list[str]:
    """Names of the adapted layers: every nn.Linear / Conv1D but the output embedding
    ("all-linear"), or those whose name ends with one of `target_modules`."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for name, m in model.named_modules():
        linear = isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"
        if not linear or m is head:
            continue
        if target_modules == "all-linear" or any(name == t or name.endswith("." + t) for t in target_modules):
            names.append(name)
    return names


# --------------------------------------------------------------------------------------------
# The guard
# --------------------------------------------------------------------------------------------

class O3Guard(nn.Module):
    """A causal LM guarded by O3: per-request orthogonal LoRAs, soft-gated by per-request OOD detectors.

    Args:
        model: a transformers causal LM (hidden states via `output_hidden_states=True`). It becomes
            the submodule `model`; its weights are never changed (the adapters are hooks).
        hparams: `O3` hyper-parameters (see `O3.defaults`); validated by `O3`.

    forward(input_ids [B, L], attention_mask [B, L], position_ids, cache, **kwargs) returns the
    base model's output object with gated logits [B, L, V] (see the module doc). `gates` holds the
    last prompt's gates [T, B] (T requests).
    """

    def __init__(self, model: nn.Module, **hparams):
        super().__init__()
        if not isinstance(model, nn.Module) or not hasattr(model, "config"):
            raise TypeError(f"model: expected a transformers causal LM, got {type(model).__name__}")
        self.method = O3(**hparams)
        self.model = model
        hp = self.method.hparams
        lora = hp["lora"] if hp["lora"] not in (None, True) else default_lora_config()
        self.rank, self.lora_alpha = int(lora.r), float(lora.lora_alpha)
        targets = lora.target_modules or "all-linear"
        if targets != "all-linear":
            targets = sorted([targets] if isinstance(targets, str) else targets)
        self.target_names = _lora_targets(model, targets)
        if not self.target_names:
            raise ValueError(f"lora: target_modules {targets!r} match no linear layer of the model")
        modules = dict(model.named_modules())
        self._targets = [modules[n] for n in self.target_names]
        self._shapes = [_io_features(m) for m in self._targets]
        n_layers = int(getattr(model.config, "num_hidden_layers", 0))
        if n_layers < 1:
            raise ValueError("model: config.num_hidden_layers is missing")
        k = min(hp["detector_layers"], n_layers)
        # hidden_states[0] is the embedding output; decoder layer i's output is hidden_states[i].
        self.detector_layer_indices = sorted({round(n_layers * (i + 1) / k) for i in range(k)})
        self.hidden = int(model.config.hidden_size)
        self.requests = nn.ModuleList()
        self.gates: torch.Tensor | None = None
        self.logs: list[dict] = []  # add_request's log of every request
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._active: tuple | None = None  # (flagged rows [B], [(request, scaled gate [B])], all rows flagged)
        self._handles: list = []

    # ---- adapters ------------------------------------------------------------------------------
    @property
    def num_requests(self) -> int:
        return len(self.requests)

    def _hook(self, index: int):
        def hook(_module, args, output):
            x = args[0]
            rows, active, all_rows = self._active
            b = rows.shape[0]
            if x.shape[0] != b:
                if x.dim() == 2 and x.shape[0] % b == 0:  # [B*L, d] flattened rows, row-major by sample
                    k = x.shape[0] // b
                    rows = rows.repeat_interleave(k)
                    active = [(t, g.repeat_interleave(k)) for t, g in active]
                else:
                    raise ValueError(f"model: layer {self.target_names[index]} sees {x.shape[0]} rows for a "
                                     f"batch of {b}; O3 cannot map its rows to samples")
            delta = None
            for t, g in active:  # g [B] = (lora_alpha / r) * gate
                a, bm = self.requests[t].lora_A[index], self.requests[t].lora_B[index]
                d = (x.to(a.dtype) @ a.T) @ bm.T
                d = d * g.view(-1, *([1] * (d.dim() - 1))).to(d.dtype)
                delta = d if delta is None else delta + d
            if delta is None:
                return output
            if all_rows:
                return output + delta.to(output.dtype)
            return torch.where(rows.view(-1, *([1] * (output.dim() - 1))), output + delta.to(output.dtype), output)

        return hook

    def _adapters_on(self, gates: torch.Tensor) -> None:
        """Register the adapter hooks for one forward with gates [T, B]."""
        scale = self.lora_alpha / self.rank
        rows = (gates > 0).any(0)
        active = [(t, scale * gates[t]) for t in range(gates.shape[0]) if bool((gates[t] > 0).any())]
        self._active = (rows, active, bool(rows.all()))
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self._targets)]

    def _adapters_off(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._active = [], None

    def _gated_call(self, gates: torch.Tensor, **kwargs):
        self._adapters_on(gates)
        try:
            return self.model(**kwargs)
        finally:
            self._adapters_off()

    # ---- detection -----------------------------------------------------------------------------
    def _scores_from_hidden(self, hidden_states, attention_mask) -> torch.Tensor:
        pooled = _pooled(hidden_states, self.detector_layer_indices, attention_mask)
        return torch.stack([r.detector.score(pooled.to(r.detector.keys.device)) for r in self.requests])

    @torch.no_grad()
    def detector_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        **kwargs) -> torch.Tensor:
        """Glocal scores s_t(x) [T, B] of a batch (higher = more like request t's forget data)."""
        if not self.requests:
            raise ValueError("O3Guard: no request has been added")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        out = self.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True, use_cache=False,
                         **kwargs)
        return self._scores_from_hidden(out.hidden_states, mask)

    def gate_weights(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores [T, B] -> gates [T, B] in [0, 1] (0 at or below each request's threshold)."""
        if scores.dim() != 2 or scores.shape[0] != len(self.requests):
            raise ValueError(f"scores: expected [{len(self.requests)}, B], got {tuple(scores.shape)}")
        return torch.stack([r.detector.gate(s) for r, s in zip(self.requests, scores)])

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, **kwargs):
        cache = kwargs.pop("past_key_values", cache)  # the transformers 4 name
        cache_kw = {} if cache is None else {self._cache_arg: cache}
        call = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        if not self.requests:
            return self.model(**call, **cache_kw)
        batch = (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[0]
        if _cache_length(cache) > 0:  # a cached continuation: the prompt's gates hold
            if self.gates is None or self.gates.shape[1] != batch:
                raise ValueError("cache: a continuation step needs its prompt to have run through this guard "
                                 f"with the same batch size ({batch})")
            if not bool((self.gates > 0).any()):
                return self.model(**call, **cache_kw)
            return self._gated_call(self.gates, **call, **cache_kw)
        want_hidden = bool(call.pop("output_hidden_states", False))
        mask = attention_mask
        if mask is None:
            mask = torch.ones(batch, (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[1],
                              dtype=torch.long, device=next(self.model.parameters()).device)
        # An empty cache object passed in is filled by the first forward; keep a pristine copy for a rerun.
        spare = copy.deepcopy(cache) if cache is not None else None
        first = self.model(**call, **cache_kw, output_hidden_states=True)
        with torch.no_grad():
            gates = self.gate_weights(self._scores_from_hidden(first.hidden_states, mask))
        self.gates = gates
        flagged = (gates > 0).any(0)
        if not bool(flagged.any()):
            if not want_hidden:
                first.hidden_states = None
            return first
        rerun_cache = {} if spare is None else {self._cache_arg: spare}
        out = self._gated_call(gates, **call, **rerun_cache, output_hidden_states=want_hidden)
        if not bool(flagged.all()):  # unflagged rows: the base model's logits, bit for bit
            out.logits = torch.where(flagged.view(-1, 1, 1), out.logits, first.logits)
        return out

    # ---- requests ------------------------------------------------------------------------------
    def add_request(self, forget, *, tokenizer=None, template: QATemplate = QATemplate(), seed: int = 0,
                    progress: bool = True) -> dict:
        """Unlearn a new request: train its orthogonal LoRA and its OOD detector on `forget` only.

        forget: a QADataset / TextDataset, or a sequence of QAItem / (question, answer) pairs
        (tokenized with `tokenizer` and `template`). Earlier requests stay as they are. Returns the
        training log (per-step "loss", "forget_loss", "orth_loss"; per-epoch "cel_loss"; "threshold").
        """
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed: must be an integer, got {seed!r}")
        data = as_lm_dataset(forget, "forget", tokenizer, template)
        if len(data) < 2:
            raise ValueError(f"forget: the detector needs at least 2 examples, got {len(data)}")
        device = next(self.model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # seeded head init; the caller's RNG is untouched
            torch.manual_seed(seed)
            detector = _Detector(len(self.detector_layer_indices), self.hidden)
        request = _Request(self._shapes, self.rank, detector, generator).to(device)
        self.requests.append(request)
        try:
            with torch.enable_grad():  # also when called under torch.no_grad()
                cel = self._fit_detector(request.detector, data, generator, progress)
                log = self.method.train_request(self, len(self.requests) - 1, data, seed=seed, progress=progress)
        except BaseException:
            self.requests = nn.ModuleList(list(self.requests)[:-1])
            raise
        log["cel_loss"] = cel
        log["threshold"] = float(request.detector.threshold)
        self.logs.append(log)
        return log

    def _fit_detector(self, detector: _Detector, data, generator: torch.Generator, progress: bool) -> list[float]:
        hp = self.method.hparams
        items, groups, kinds = [], [], []
        for i in range(len(data)):
            ex = data[i]
            ids, labels = list(ex["input_ids"]), list(ex["labels"])
            items.append(ids)
            groups.append(i)
            kinds.append(0)
            first = next((j for j, t in enumerate(labels) if t != IGNORE_INDEX), len(labels))
            if 2 <= first < len(ids):  # the prompt alone, as generation sees it
                items.append(ids[:first])
                groups.append(i)
                kinds.append(1)
        masks = [[1] * len(ids) for ids in items]
        views = []
        for _ in range(hp["detector_views"]):
            view = []
            for m in masks:
                keep = (torch.rand(len(m), generator=generator) >= hp["mask_rate"]).long().tolist()
                keep[0] = keep[-1] = 1  # <bos> and the summarizing last token stay
                view.append(keep)
            views.append(view)
        pooled = self._pool_items(items, masks)
        masked = torch.stack([self._pool_items(items, v) for v in views])
        return detector.fit(pooled, masked, torch.tensor(groups), torch.tensor(kinds), hp=hp, generator=generator,
                            progress=progress)

    @torch.no_grad()
    def _pool_items(self, items: list[list[int]], masks: list[list[int]]) -> torch.Tensor:
        """[n_layers, N, H] pooled base-model states of token lists under per-token attention masks."""
        device = next(self.model.parameters()).device
        pad = self.model.config.pad_token_id or 0
        bs = self.method.hparams["batch_size"]
        out = []
        with training_mode(self.model):
            for s in range(0, len(items), bs):
                feats = [{"input_ids": i, "labels": i} for i in items[s:s + bs]]
                batch = pad_batch(feats, pad_token_id=pad)
                mask = batch["attention_mask"].clone()
                for r, m in enumerate(masks[s:s + bs]):
                    mask[r, :len(m)] = torch.tensor(m)
                res = self.model(input_ids=batch["input_ids"].to(device), attention_mask=mask.to(device),
                                 output_hidden_states=True, use_cache=False)
                out.append(_pooled(res.hidden_states, self.detector_layer_indices, mask.to(device)))
        return torch.cat(out, 1)

    def adapter_matrices(self, request: int) -> list[torch.Tensor]:
        """The down-projections A [r, d_in] of request `request`, one per target layer."""
        if isinstance(request, bool) or not isinstance(request, int) or not 0 <= request < len(self.requests):
            raise ValueError(f"request: must be an int in [0, {len(self.requests)}), got {request!r}")
        return [a.detach() for a in self.requests[request].lora_A]

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the guard's own state (adapters, detectors, hyper-parameters; not the base model's
        weights) to one safetensors file, atomically (temp file + fsync + rename)."""
        from unlearnx.report.io import atomic_write_bytes, safetensors_bytes

        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()
                   if not k.startswith("model.")}
        hp = dict(self.method.hparams)
        hp["lora"] = None  # the resolved r / alpha / targets below say what it was
        meta = {"format": _FORMAT, "hparams": hp, "rank": self.rank, "lora_alpha": self.lora_alpha,
                "target_names": self.target_names, "requests": len(self.requests),
                "keys_rows": [int(r.detector.keys.shape[1]) for r in self.requests]}
        atomic_write_bytes(path, safetensors_bytes(tensors, {"o3": json.dumps(meta, sort_keys=True)}))

    @classmethod
    def load(cls, model: nn.Module, path, *, map_location=None) -> O3Guard:
        """A guard around `model` (the same base model it was saved with) from `save`'s file."""
        from pathlib import Path

        from peft import LoraConfig
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path: no O3 guard file at {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("o3", "null") or "null")
        if not meta or meta.get("format") != _FORMAT:
            raise ValueError(f"path: {path} is not an O3 guard file ({_FORMAT})")
        hp = dict(meta["hparams"])
        hp["lora"] = LoraConfig(r=meta["rank"], lora_alpha=meta["lora_alpha"], target_modules=meta["target_names"])
        guard = cls(model, **hp)
        if guard.target_names != meta["target_names"]:
            raise ValueError("model: its linear layers differ from those the guard was saved with")
        state = load_file(str(path))
        device = next(model.parameters()).device if map_location is None else map_location
        for t in range(meta["requests"]):
            det = _Detector(len(guard.detector_layer_indices), guard.hidden)
            for name in ("keys", "mean", "precision", "stats", "threshold", "reference"):
                setattr(det, name, state[f"requests.{t}.detector.{name}"])
            guard.requests.append(_Request(guard._shapes, guard.rank, det, None))
        try:
            missing, unexpected = guard.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise ValueError(f"path: tensors do not match the model: {exc}") from None
        missing = [k for k in missing if not k.startswith("model.")]
        if missing or unexpected:
            raise ValueError(f"path: missing {missing[:5]} / unexpected {unexpected[:5]} tensors")
        return guard.to(device)


# --------------------------------------------------------------------------------------------
# The registered method
# --------------------------------------------------------------------------------------------

@register_method("o3", task="causal_lm")
class O3(LLMMethod):
    """O3: one orthogonal LoRA per request, gated at inference by the request's OOD detector.

    `ux.unlearn(model, "o3", forget=..., tokenizer=tok)` returns an `O3Guard` (one request) as
    res.model; add later requests with `res.model.add_request(...)`. No retain data is used.
    """

    paper = ("Gao, Wang, Ding, Weng, Wang, Zhu, 'On Large Language Model Continual Unlearning', ICLR 2025; "
             "Wang et al., 'Orthogonal Subspace Learning for Language Model Continual Learning', EMNLP 2023")
    defaults = {**COMMON_DEFAULTS, **O3_DEFAULTS}
    trains = False  # the guard trains its own adapters and detector (run_lm calls `apply`)

    def validate(self):
        super().validate()
        hp = self.hparams
        if hp["objective"] not in _OBJECTIVES:
            raise ValueError(f"objective must be one of {_OBJECTIVES}, got {hp['objective']!r}")
        if hp["lora"] is False:
            raise ValueError("lora must be None, True or a peft.LoraConfig for o3 (its adapters are the method)")
        if hp["merge_lora"]:
            raise ValueError("merge_lora must be False for o3: gated adapters cannot be merged into the weights")
        if hp["gradient_checkpointing"]:
            raise ValueError("gradient_checkpointing is not supported by o3")
        for key in ("detector_layers", "detector_views", "batch_size"):
            if hp[key] < 1:
                raise ValueError(f"{key} must be >= 1, got {hp[key]!r}")
        for key in ("beta", "detector_lr", "detector_tau"):
            if not hp[key] > 0:
                raise ValueError(f"{key} must be > 0, got {hp[key]!r}")
        for key in ("mask_rate", "shrinkage"):
            if not 0 <= hp[key] < 1:
                raise ValueError(f"{key} must be in [0, 1), got {hp[key]!r}")
        if not 0 < hp["threshold_quantile"] < 1:
            raise ValueError(f"threshold_quantile must be in (0, 1), got {hp['threshold_quantile']!r}")

    def apply(self, model, forget, progress):
        """run_lm's entry (trains=False): a guard around `model` with `forget` as its first request."""
        guard = O3Guard(model, **self.hparams)
        guard.add_request(forget, seed=self.seed, progress=progress)
        return guard

    # ---- training one request's LoRA (the plain loop of LLMMethod.train) ----------------------
    def train_request(self, guard: O3Guard, t: int, data, *, seed: int, progress: bool) -> dict:
        """Train request t's adapter on `data` with L_u + orth_lambda * L_orth; the rest is frozen."""
        self._guard, self._t = guard, t
        paired = PairedQADataset({"forget": IndexedDataset(data)})
        self.ref_cache = {}
        if self.hparams["objective"] == "npo":  # the reference is the base model: no adapter is active here
            self.ref_cache["forget"] = cached_sequence_logprobs(guard.model, paired, "forget",
                                                                batch_size=self.hparams["batch_size"],
                                                                progress=progress)
        loader = _FlatLoader(ForgetRetainLoader(paired, None, batch_size=self.hparams["batch_size"], seed=seed))
        flags = [p.requires_grad for p in guard.parameters()]
        for p in guard.parameters():
            p.requires_grad_(False)
        for p in self.trainable_parameters(guard):
            p.requires_grad_(True)
        try:
            return self.train(guard, loader, progress=progress)
        finally:
            for p, f in zip(guard.parameters(), flags):
                p.requires_grad_(f)
            self._guard = None

    def trainable_parameters(self, model):
        req = self._guard.requests[self._t]
        return [*req.lora_A, *req.lora_B]

    def loss(self, model, batch):
        guard, t = self._guard, self._t
        f = batch["forget"]
        gates = torch.zeros(len(guard.requests), f["input_ids"].shape[0], device=f["input_ids"].device)
        gates[t] = 1.0
        guard._adapters_on(gates)
        try:
            logits = forward_logits(guard.model, f)
        finally:
            guard._adapters_off()
        if self.hparams["objective"] == "ga":
            forget_loss = -mean_nll(logits, f["labels"])
        else:
            ref = self.ref_cache["forget"].to(logits.device)[batch["forget"]["index"]]
            forget_loss = npo_loss(sequence_logprob(logits, f["labels"]), ref, self.hparams["beta"])
        current = guard.requests[t].lora_A
        orth = sum((orthogonality_loss([guard.requests[s].lora_A[i] for s in range(t)], a)
                    for i, a in enumerate(current)), forget_loss.new_zeros(()))
        total = forget_loss + self.hparams["orth_lambda"] * orth
        return total, {"forget_loss": forget_loss.item(), "orth_loss": orth.item()}
