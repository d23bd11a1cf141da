"""The benchmark harness ships in the package (unlearnx.bench.harness, with the op benchmarks);
the end-to-end scripts of this folder keep `import harness` through this module, and write to
this folder's results/."""
from __future__ import annotations

from pathlib import Path

import unlearnx.bench.harness as _h
from unlearnx.bench.harness import (  # noqa: F401  (re-exported for the scripts)
    COLUMNS,
    append_results,
    copy_bandwidth_gbs,
    device_name,
    print_table,
    read_bandwidth_gbs,
    rss_kib,
    sync,
    time_fn,
    write_table_files,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_h.RESULTS_DIR = RESULTS_DIR  # append_results / write_table_files write here, whichever unlearnx is imported
