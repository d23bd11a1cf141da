"""Shared benchmark harness: timing, bandwidth limits, one CSV schema for every kernel.

Every benchmark compares, in one process and one run, the unlearnx op against the baselines a
user would otherwise use, and reports the ratio and the percentage of a physical limit measured
in the same run. Rows are appended to benchmarks/results/<family>.csv with the columns below.
"""
from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
COLUMNS = ["kernel", "provider", "mode", "metric", "unit", "x", "p50", "p20", "p80",
           "device", "torch", "unlearnx", "date"]


def device_name(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu} x{torch.get_num_threads()} threads"


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, *, device="cpu", warmup: int = 2, reps: int = 10, min_seconds: float = 0.0):
    """Median, 20th and 80th percentile wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start_all) < min_seconds:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 10 * reps:
            break
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return statistics.median(times), q[1], q[7]


def read_bandwidth_gbs(nbytes: int = 1 << 30, device="cpu") -> float:
    """Bandwidth of a full read of an nbytes fp32 buffer (torch.sum, all threads), GB/s."""
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    p50, _, _ = time_fn(lambda: x.sum(), device=device, warmup=2, reps=7)
    return nbytes / (p50 * 1e-3) / 1e9


def copy_bandwidth_gbs(nbytes: int = 1 << 30, device="cpu") -> float:
    """Read + write bandwidth of dst.copy_(src) over nbytes each, counted R+W, GB/s."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    p50, _, _ = time_fn(lambda: dst.copy_(src), device=device, warmup=2, reps=7)
    return 2 * nbytes / (p50 * 1e-3) / 1e9


def append_results(family: str, rows: list[dict]) -> Path:
    """Append rows (dicts with COLUMNS keys; missing provenance filled in) to results/<family>.csv."""
    import unlearnx

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{family}.csv"
    new = not path.exists()
    today = _dt.date.today().isoformat()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        for row in rows:
            full = {"torch": torch.__version__, "unlearnx": unlearnx.__version__, "date": today, **row}
            w.writerow({k: full.get(k, "") for k in COLUMNS})
        fh.flush()
        os.fsync(fh.fileno())
    return path


def write_table_files(stem: str, title: str, markdown: str, fields: list[str], rows: list[dict]) -> None:
    """Write results/<stem>.md ("# title" + markdown) and results/<stem>.csv (rows under fields), each
    atomically, so an interrupted benchmark never leaves a half-written table."""
    import io

    from unlearnx.report.io import atomic_write_text

    atomic_write_text(RESULTS_DIR / f"{stem}.md", f"# {title}\n\n{markdown}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(RESULTS_DIR / f"{stem}.csv", buf.getvalue())


def print_table(headers: list[str], rows: list[list]) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
