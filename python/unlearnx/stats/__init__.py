"""unlearnx.stats: gradient statistics over a model and a data stream.

    fisher_diagonal(model, data, loss_fn=None, *, mode="per_sample" | "per_batch", params=None)
    grad_saliency(model, data, loss_fn=None)
    per_sample_grad_norms(model, data, loss_fn=None)

    expert_attribution(model, data, *, retain=None, forget_flag=None)   (MoE router statistics)

loss_fn(model, batch) -> Tensor[B] returns per-sample losses (default: default_loss_fn).
"""
from unlearnx.stats.gradients import fisher_diagonal, grad_saliency, per_sample_grad_norms
from unlearnx.stats.losses import default_loss_fn
from unlearnx.stats.experts import ExpertAttribution, expert_attribution

__all__ = ["fisher_diagonal", "grad_saliency", "per_sample_grad_norms", "default_loss_fn", "ExpertAttribution", "expert_attribution"]
