"""unlearnx.bench: the op microbenchmarks, shipped with the package.

    unlearnx bench [--family F] [--device cpu|cuda] [--quick] [--no-compile] [--csv FILE]
    python -m unlearnx.bench.<module> [same options]

One module per op family (FAMILIES: family name -> module), all on the harness of
unlearnx.bench.harness, all writing one row schema (harness.OP_COLUMNS). The end-to-end
benchmarks (methods, evaluation, decoding) are scripts of the repository's benchmarks/ folder.
"""
from __future__ import annotations

FAMILIES = {
    "ssd": "unlearnx.bench.ssd",
    "select": "unlearnx.bench.selection",
    "token_stats": "unlearnx.bench.token_stats",
    "router_stats": "unlearnx.bench.router_stats",
    "grad_stats": "unlearnx.bench.grad_stats",
    "logit_diff": "unlearnx.bench.logit_diff",
}

__all__ = ["FAMILIES"]
