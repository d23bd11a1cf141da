"""Exact per-sample gradient statistics from one backward pass per batch, through module hooks.

A forward hook on every supported module saves its input X and the gradient edge of its output;
one ``torch.autograd.grad(loss.sum(), edges)`` per batch (no parameter .grad, no weight-gradient
GEMM) then gives each module's output gradient
G, whose row b is the gradient of sample b's loss (samples are independent in eval mode). From
(X, G) each module type's per-sample parameter gradients follow exactly, and only their squares
(or squared norms) are accumulated:

* nn.Linear (any [B, ..., d] input) and transformers' Conv1D: the unlearnx Linear ops
  (per-sample tile G_b^T X_b in registers, never stored).
* nn.Conv2d (groups 1, numeric padding, zeros padding mode): im2col (one strided copy) turns it into the
  Linear case with T = H_out W_out.
* nn.Embedding (no max_norm, no scale_grad_by_freq): per-sample scatter of G rows by token id.
* Normalization layers with affine parameters (LayerNorm, RMSNorm, GroupNorm, BatchNorm in eval
  mode with running statistics, and Hugging Face *LayerNorm / *RMSNorm leaves): per-sample
  gradients of the layer's own few parameters by torch.func.vmap over the layer alone.

Everything else -- other parameter owners, a parameter shared by two modules (tied embeddings), a
module called more than once per forward, a module whose parameters are used without calling it
(nn.MultiheadAttention's out_proj), an input whose leading size is not the batch -- goes to the
fallback: one forward and backward per sample (batch of one) for just those parameters.
Slower, never wrong. Assumed, as by every per-sample-gradient library: samples do not interact in
eval mode, and a supported module's input has the batch as its leading dimension (batch-first
models; a sequence-first [T, B, d] layout with T == B cannot be told apart).
"""
from __future__ import annotations

from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.graph import get_gradient_edge

from unlearnx import ops
from unlearnx.stats.losses import slice_batch

SQ, NORM = "sq", "norm"
_LOCAL_MAX_PARAMS = 1 << 20  # vmap materializes B x (the layer's own parameters)


class Demote(Exception):
    """A hooked module broke an assumption in this forward; its parameters go to the fallback."""

    def __init__(self, layer: "_Layer", why: str):
        super().__init__(f"{layer.name}: {why}")
        self.layer = layer


def _is_hf_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and getattr(m, "weight", None) is not None


def _is_local_norm(m: nn.Module) -> bool:
    if any(True for _ in m.children()):
        return False
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return bool(m.track_running_stats) and m.running_mean is not None
    if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)):
        return True
    return type(m).__name__.endswith(("RMSNorm", "LayerNorm"))


def _kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.Linear):
        return "linear"
    if _is_hf_conv1d(m):
        return "conv1d"
    if isinstance(m, nn.Conv2d):
        ok = m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str)
        return "conv2d" if ok else None
    if isinstance(m, nn.Embedding):
        return "embedding" if m.max_norm is None and not m.scale_grad_by_freq else None
    if _is_local_norm(m):
        return "local"
    return None


_SUPPORTED = {"linear": {"weight", "bias"}, "conv1d": {"weight", "bias"}, "conv2d": {"weight", "bias"},
              "embedding": {"weight"}}


class _Layer:
    def __init__(self, name: str, module: nn.Module, kind: str, params: dict[str, tuple[str, nn.Parameter]]):
        self.name, self.module, self.kind = name, module, kind
        self.params = params  # local name -> (full name, parameter), the requested ones
        self.calls = 0
        self.disabled = False
        self.handle = None  # the forward hook's removable handle


class PerSampleCapture:
    """Hooks that accumulate sum_i g_i^2 per parameter (mode "sq") or ||g_i||^2 per sample ("norm")."""

    def __init__(self, model: nn.Module, wanted: dict[str, nn.Parameter], mode: str, acc: dict[str, torch.Tensor]):
        self.model, self.mode, self.acc = model, mode, acc
        owners = Counter(id(p) for m in model.modules() for p in m.parameters(recurse=False))
        by_id = {id(p): n for n, p in wanted.items()}
        self.layers: list[_Layer] = []
        covered: set[str] = set()
        for mname, m in model.named_modules():
            own = {ln: (by_id[id(p)], p) for ln, p in m.named_parameters(recurse=False) if id(p) in by_id}
            kind = _kind(m)
            if not own or kind is None:
                continue
            if kind != "local" and not set(own) <= _SUPPORTED[kind]:
                continue
            if kind == "local" and sum(p.numel() for p in m.parameters(recurse=False)) > _LOCAL_MAX_PARAMS:
                continue
            if any(owners[id(p)] > 1 for _, p in own.values()):
                continue  # tied: the per-sample gradient sums two modules' parts before squaring
            layer = _Layer(mname, m, kind, own)
            layer.handle = m.register_forward_hook(self._make_hook(layer))
            self.layers.append(layer)
            covered.update(full for full, _ in own.values())
        self.fallback = {n: p for n, p in wanted.items() if n not in covered}
        self.active = False
        self.saved: list = []
        self.B = 0

    # -- hooks ---------------------------------------------------------------------------------
    def _make_hook(self, layer: _Layer):
        def hook(module, inputs, output):
            if not self.active or layer.disabled:
                return
            layer.calls += 1
            if layer.calls > 1:
                raise Demote(layer, "called more than once in one forward")
            x = inputs[0] if len(inputs) == 1 else None
            if not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
                raise Demote(layer, "input or output is not a single tensor")
            if layer.kind == "conv2d" and x.dim() != 4:
                raise Demote(layer, "unbatched Conv2d input")
            if x.dim() == 0 or x.shape[0] != self.B or output.dim() == 0 or output.shape[0] != self.B:
                raise Demote(layer, f"leading size of input {list(x.shape)} is not the batch size {self.B}")
            if not output.requires_grad:
                raise Demote(layer, "output does not require grad")
            # A view output (Linear on [B, T, d] returns a view of a 2-D GEMM result) loses its own
            # graph node if a later op writes it in place (relu_); the base's node keeps it.
            base = output if output._base is None else output._base
            if base is not output and not (
                base.numel() == output.numel() and base.is_contiguous() and output.is_contiguous()
            ):
                raise Demote(layer, "output is a strided view")
            self.saved.append((layer, x.detach(), get_gradient_edge(base), output.shape))

        return hook

    def demote(self, layer: _Layer) -> None:
        layer.disabled = True
        layer.handle.remove()
        self.layers.remove(layer)
        for full, p in layer.params.values():
            self.fallback[full] = p

    def remove(self) -> None:
        for layer in self.layers:
            layer.handle.remove()
        self.layers = []

    # -- one batch -----------------------------------------------------------------------------
    def run_batch(self, batch, B: int, loss_fn, norms: torch.Tensor | None) -> torch.Tensor:
        """Accumulates this batch; returns the per-sample losses. norms: [B] fp32 in mode "norm"."""
        self.B = B
        for layer in self.layers:
            layer.calls = 0
        self.saved = []
        self.active = True
        try:
            loss = loss_fn(self.model, batch)
        finally:
            self.active = False
        _check_loss(loss, B)
        saved, self.saved = self.saved, []
        # A hooked module whose forward did not run may still have its parameters used
        # functionally (nn.MultiheadAttention passes out_proj.weight to F.linear): ask autograd.
        uncalled = [(layer, p) for layer in self.layers if layer.calls == 0 for _, p in layer.params.values()]
        inputs = [e for _, _, e, _ in saved] + [p for _, p in uncalled]
        if inputs:
            grads = torch.autograd.grad(loss.sum(), inputs, allow_unused=True)
            for (layer, _), g in zip(uncalled, grads[len(saved):]):
                if g is not None:
                    raise Demote(layer, "its parameters are used outside its forward")
            for (layer, x, _, shape), g in zip(saved, grads):
                if g is not None:
                    self._accumulate(layer, x, g.view(shape), norms)
        del saved
        if self.fallback:
            self._fallback(batch, B, loss_fn, norms)
        return loss.detach()

    def _fallback(self, batch, B, loss_fn, norms) -> None:
        names, params = list(self.fallback), list(self.fallback.values())
        for i in range(B):
            li = loss_fn(self.model, slice_batch(batch, i, B))
            _check_loss(li, 1)
            grads = torch.autograd.grad(li.sum(), params, allow_unused=True)
            for n, g in zip(names, grads):
                if g is None:
                    continue
                g = g.float()
                if self.mode == SQ:
                    self.acc[n].addcmul_(g, g)
                else:
                    norms[i] += g.square().sum()

    # -- per module type -----------------------------------------------------------------------
    def _accumulate(self, layer: _Layer, x: torch.Tensor, g: torch.Tensor, norms) -> None:
        if layer.kind == "local":
            return self._local(layer, x, g, norms)
        if layer.kind == "embedding":
            return self._embedding(layer, x, g, norms)
        m, B = layer.module, x.shape[0]
        if layer.kind == "conv2d":
            # [B, L, K] and [B, L, C_out] as transposed views of channel-major buffers: the op
            # reads either layout along its unit stride, so neither is copied into row order
            X = _im2col(x, m, g.shape[2], g.shape[3]).transpose(1, 2)
            G = g.reshape(B, g.shape[1], -1).transpose(1, 2)
        else:
            X = x.reshape(B, -1, x.shape[-1])
            G = g.reshape(B, -1, g.shape[-1])
        if X.dtype != G.dtype:
            X, G = X.float(), G.float()
        w = layer.params.get("weight")
        b = layer.params.get("bias")
        if layer.kind == "conv1d":
            # transformers' Conv1D: y = x W + b with W [d_in, d_out]; the per-sample tile X_b^T G_b
            # is the Linear tile with the roles of X and G swapped.
            if w is not None:
                if self.mode == SQ:
                    ops.linear_sq_grad_accum_(self.acc[w[0]], G, X)
                else:
                    ops.linear_grad_sq_norm_accum_(norms, X, G)
            if b is not None:
                self._bias(b[0], G, norms)
            return
        if w is not None:
            if self.mode == SQ:
                fw = self.acc[w[0]]
                ops.linear_sq_grad_accum_(fw.view(fw.shape[0], -1), X, G,
                                          fisher_bias=self.acc[b[0]] if b is not None else None)
            else:
                ops.linear_grad_sq_norm_accum_(norms, X, G, bias=b is not None)
        elif b is not None:
            self._bias(b[0], G, norms)

    def _bias(self, name: str, G: torch.Tensor, norms) -> None:
        s = G.float().sum(1)  # [B, d_out]: per-sample bias gradients
        if self.mode == SQ:
            self.acc[name].add_(s.square().sum(0))
        else:
            norms.add_(s.square().sum(1))

    def _embedding(self, layer: _Layer, ids: torch.Tensor, g: torch.Tensor, norms) -> None:
        m, B = layer.module, ids.shape[0]
        V, d = m.weight.shape
        ids = ids.reshape(B, -1)
        rows = g.reshape(B, -1, d).float()
        if m.padding_idx is not None:  # nn.Embedding gives the padding row no gradient
            rows = rows * (ids != m.padding_idx).unsqueeze(-1)
        key = (torch.arange(B, device=ids.device).unsqueeze(1) * V + ids).flatten()
        uniq, inv = torch.unique(key, return_inverse=True)
        per = torch.zeros(uniq.numel(), d, dtype=torch.float32, device=rows.device).index_add_(0, inv, rows.reshape(-1, d))
        sq = per.square()
        if self.mode == SQ:
            self.acc[layer.params["weight"][0]].index_add_(0, uniq % V, sq)
        else:
            norms.index_add_(0, uniq // V, sq.sum(1))

    def _local(self, layer: _Layer, x: torch.Tensor, g: torch.Tensor, norms) -> None:
        m = layer.module
        fixed = {k: v.detach() for k, v in m.named_parameters(recurse=False) if k not in layer.params}
        fixed.update({k: v for k, v in m.named_buffers(recurse=False)})
        req = {k: p.detach() for k, (_, p) in layer.params.items()}

        def inner(params, xb, gb):
            out = torch.func.functional_call(m, {**fixed, **params}, (xb.unsqueeze(0),))
            return (out.float() * gb.unsqueeze(0).float()).sum()

        per = torch.func.vmap(torch.func.grad(inner), in_dims=(None, 0, 0))(req, x, g)
        for k, (full, _) in layer.params.items():
            gk = per[k].float()
            if self.mode == SQ:
                self.acc[full].add_(gk.square().sum(0))
            else:
                norms.add_(gk.square().flatten(1).sum(1))


def _im2col(x: torch.Tensor, m: nn.Conv2d, Ho: int, Wo: int) -> torch.Tensor:
    """[B, C kh kw, Ho Wo] patches of the zero-padded conv input, rows in the weight's (C, kh, kw)
    order (what F.unfold computes), by one strided copy whose inner loop runs along the width."""
    (ph, pw), (sh, sw), (dh, dw), (kh, kw) = m.padding, m.stride, m.dilation, m.kernel_size
    xp = F.pad(x, (pw, pw, ph, ph)).contiguous()
    B, C, Hp, Wp = xp.shape
    view = xp.as_strided((B, C, kh, kw, Ho, Wo), (C * Hp * Wp, Hp * Wp, dh * Wp, dw, sh * Wp, sw))
    return view.reshape(B, C * kh * kw, Ho * Wo)


def _check_loss(loss, B: int) -> None:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn must return a Tensor of per-sample losses, got {type(loss).__name__}")
    if loss.dim() != 1 or loss.shape[0] != B:
        raise ValueError(
            f"loss_fn must return per-sample losses of shape [{B}] (the batch size), got shape {list(loss.shape)}"
        )
