"""Multi-process unlearning under torchrun (DDP-style gradient sums, FSDP2 wrapping, sharded
checkpoints) with results that do not depend on the number of processes.

    torchrun --nproc_per_node=2 my_script.py      # my_script calls ux.unlearn(...) unchanged

Every unlearnx gradient loop asks `current()` for the process context. Under torchrun each rank
reads the same deterministic global batch, keeps its rows (`rank_share`), runs them in
micro-batches, scales each loss term by its share of the global batch's tokens or samples, and
the gradients are summed over ranks: the step equals the one-process step on the same global
batch, up to fp32 summation order. See docs/distributed.md.
"""
from unlearnx.distributed.context import (DistContext, current, init_distributed, rank_seed, set_current,
                                          shutdown, split_sizes, stream_seed)
from unlearnx.distributed.reduce import (all_reduce_floats, all_reduce_gradients_, all_reduce_stats_,
                                         all_reduce_tensors_, broadcast_parameters_, gather_ordered, owned,
                                         owned_count, owned_items)
from unlearnx.distributed.sharding import count_units, micro_batches, rank_parts, rank_share
from unlearnx.distributed.wrap import gradient_scale, reduces_gradients, wrap_model
from unlearnx.distributed.checkpoint import export_safetensors, load_checkpoint, save_checkpoint

__all__ = ["DistContext", "current", "init_distributed", "rank_seed", "set_current", "shutdown", "split_sizes",
           "stream_seed",
           "all_reduce_floats", "all_reduce_gradients_", "all_reduce_stats_", "all_reduce_tensors_",
           "broadcast_parameters_", "gather_ordered", "owned", "owned_count", "owned_items", "count_units", "micro_batches", "rank_parts",
           "rank_share",
           "gradient_scale", "reduces_gradients", "wrap_model", "export_safetensors", "load_checkpoint",
           "save_checkpoint"]
