"""The benchmark harness: timing, ceilings measured in the same run, one CSV schema for every op.

Every op benchmark compares, in one process and one run, the unlearnx op (per backend on CUDA)
with the plain PyTorch composition a user would write (eager, and the same function under
`torch.compile`) and other baselines, and reports for every provider one row of OP_COLUMNS:

    kernel, provider, shape, dtype      what ran
    ms_p50, ms_p20, ms_p80              time per call (CUDA events on CUDA, perf_counter on CPU)
    eager_ms, compile_ms                the eager and compiled baselines' p50 in the same case
    x_vs_eager, x_vs_compile            eager_ms / ms_p50 and compile_ms / ms_p50 (> 1: faster)
    ceiling, limit_ms, pct_of_ceiling   the physical limit measured in this run (a device copy's
                                        read+write bandwidth, or the matmul rate), the time the
                                        op's minimum traffic / FLOPs take at it, 100 * limit / ms
    peak_mib                            extra memory of one call (CUDA: max_memory_allocated
                                        growth; CPU: peak RSS growth), empty where not measured
    note, device, torch, unlearnx, date provenance

The end-to-end benchmarks of the repository (benchmarks/bench_*.py) use the older row schema
COLUMNS through append_results / write_table_files, also from here.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import gc
import io
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

# The end-to-end benchmarks' schema (benchmarks/bench_*.py: methods, evaluation, decoding).
COLUMNS = ["kernel", "provider", "mode", "metric", "unit", "x", "p50", "p20", "p80",
           "device", "torch", "unlearnx", "date"]
# The op benchmarks' schema (unlearnx.bench.<family>), see the module docstring.
OP_COLUMNS = ["kernel", "provider", "shape", "dtype", "ms_p50", "ms_p20", "ms_p80", "eager_ms", "compile_ms",
              "x_vs_eager", "x_vs_compile", "ceiling", "limit_ms", "pct_of_ceiling", "peak_mib", "note",
              "device", "torch", "unlearnx", "date"]


class BenchError(Exception):
    """Bad input to a benchmark (device, arguments, output file): the command exits with status 2."""


def _checkout_results_dir() -> Path | None:
    """benchmarks/results of the source tree unlearnx is imported from, or of the current directory."""
    import unlearnx

    for root in (Path(unlearnx.__file__).resolve().parents[2], Path.cwd()):
        bench = root / "benchmarks"
        if (bench / "harness.py").is_file():
            return bench / "results"
    return None


# Where the end-to-end scripts of a checkout write (they only run from one).
RESULTS_DIR = _checkout_results_dir() or Path.cwd() / "benchmarks" / "results"


def resolve_device(name: str) -> torch.device:
    """torch.device for --device; a clear BenchError when CUDA is asked for and there is none."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise BenchError(f"--device {name!r} is not a device (use cpu or cuda)") from e
    if device.type not in ("cpu", "cuda"):
        raise BenchError(f"--device {name!r}: only cpu and cuda are benchmarked")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchError(f"no CUDA device: --device {name} needs an NVIDIA GPU and a CUDA build of torch "
                             f"(torch {torch.__version__}, torch.version.cuda={torch.version.cuda}, "
                             "torch.cuda.is_available() is False)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BenchError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


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
        torch.cuda.synchronize(device)


def _quantiles(times: list[float]) -> tuple[float, float, float]:
    if len(times) == 1:
        return times[0], times[0], times[0]
    q = statistics.quantiles(times, n=10)
    return statistics.median(times), q[1], q[7]


def time_fn(fn, *, device="cpu", warmup: int = 2, reps: int = 10, min_seconds: float = 0.0,
            max_seconds: float | None = None):
    """(p50, p20, p80) of fn() in milliseconds.

    CPU: wall time per call, synchronous. CUDA: a pair of CUDA events around each call (no host
    synchronization between calls, one at the end). At least `reps` timed calls (fewer only when
    max_seconds runs out after 3), more until min_seconds have passed (at most 10 * reps).
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        return _time_cuda(fn, device, reps, min_seconds, max_seconds)
    times = []
    start_all = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start_all) < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        spent = time.perf_counter() - start_all
        if len(times) >= 10 * reps or (max_seconds is not None and len(times) >= 3 and spent > max_seconds):
            break
    return _quantiles(times)


def _time_cuda(fn, device, reps, min_seconds, max_seconds):
    pairs = []
    start_all = time.perf_counter()
    with torch.cuda.device(device):
        while len(pairs) < reps or (time.perf_counter() - start_all) < min_seconds:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            pairs.append((a, b))
            if len(pairs) >= 10 * reps:
                break
            if max_seconds is not None and len(pairs) >= 3 and len(pairs) % 4 == 0:
                torch.cuda.synchronize(device)  # the clock has to see the GPU's progress
                if time.perf_counter() - start_all > max_seconds:
                    break
        torch.cuda.synchronize(device)
    return _quantiles([a.elapsed_time(b) for a, b in pairs])


def read_bandwidth_gbs(nbytes: int = 1 << 30, device="cpu") -> float:
    """Bandwidth of a full read of an nbytes fp32 buffer (torch.sum), GB/s."""
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    p50, _, _ = time_fn(lambda: x.sum(), device=device, warmup=2, reps=7)
    return nbytes / (p50 * 1e-3) / 1e9


def copy_bandwidth_gbs(nbytes: int = 1 << 30, device="cpu") -> float:
    """Read + write bandwidth of dst.copy_(src) over nbytes each, counted R+W, GB/s."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    p50, _, _ = time_fn(lambda: dst.copy_(src), device=device, warmup=2, reps=7)
    return 2 * nbytes / (p50 * 1e-3) / 1e9


def matmul_tflops(n: int, dtype: torch.dtype, device="cpu") -> float:
    """Rate of one [n, n] x [n, n] matmul in `dtype`, TFLOP/s (2 n^3 FLOPs)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    p50, _, _ = time_fn(lambda: torch.mm(a, b), device=device, warmup=2, reps=7)
    return 2.0 * n ** 3 / (p50 * 1e-3) / 1e12


def rss_kib(field: str) -> int:
    """A /proc/self/status field in KiB (VmRSS:, VmHWM:); -1 where it cannot be read."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


@contextlib.contextmanager
def backend(name: str | None):
    """UNLEARNX_BACKEND=name inside the block (None: leave it as it is); the ops read it per call."""
    if name is None:
        yield
        return
    old = os.environ.get("UNLEARNX_BACKEND")
    os.environ["UNLEARNX_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("UNLEARNX_BACKEND", None)
        else:
            os.environ["UNLEARNX_BACKEND"] = old


# ---- the op benchmarks' runner ---------------------------------------------------------------------


@dataclass
class Provider:
    """One way to compute a case: name, a zero-argument callable, and the UNLEARNX_BACKEND it needs."""

    name: str
    fn: Callable[[], object]
    backend: str | None = None
    reps: int | None = None  # fewer timed calls for slow baselines


def unlearnx_providers(device: torch.device, fn: Callable[[], object], *, native: bool = True,
                       triton: bool = True) -> list[Provider]:
    """The unlearnx op as users call it (backend auto) and, on CUDA, pinned to each GPU backend."""
    out = [Provider("unlearnx", fn)]
    if device.type == "cuda":
        if native:
            out.append(Provider("unlearnx_native", fn, "native"))
        if triton:
            out.append(Provider("unlearnx_triton", fn, "triton"))
    return out


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes in seconds (not for reported numbers)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per provider (default 10; 3 with --quick)")
    ap.add_argument("--csv", metavar="FILE", help="append the rows to FILE (default: benchmarks/results/op_<family>.csv "
                                                  "in a checkout, nothing on an installed package; --quick: nothing)")
    ap.add_argument("--no-save", action="store_true", help="write no CSV")


@dataclass
class Context:
    """One run of one family: device, ceilings measured once, the rows so far."""

    family: str
    device: torch.device
    quick: bool
    compile: bool
    reps: int
    csv: str | None
    save: bool
    device_label: str = ""
    rows: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _ceilings: dict = field(default_factory=dict)

    @classmethod
    def from_args(cls, family: str, args: argparse.Namespace) -> "Context":
        device = resolve_device(args.device)
        if args.reps is not None and args.reps < 1:
            raise BenchError(f"--reps must be >= 1, got {args.reps}")
        reps = args.reps or (3 if args.quick else 10)
        ctx = cls(family, device, args.quick, not args.no_compile, reps, args.csv, not args.no_save,
                  device_name(device))
        print(f"{family}: {ctx.device_label}; torch {torch.__version__}; compile baseline "
              f"{'on' if ctx.compile else 'off'}{'; --quick (tiny shapes)' if args.quick else ''}", flush=True)
        return ctx

    # ceilings, measured lazily once per run
    def copy_gbs(self) -> float:
        if "copy" not in self._ceilings:
            nbytes = 1 << (24 if self.quick else 30)
            self._ceilings["copy"] = copy_bandwidth_gbs(nbytes, self.device)
            print(f"  ceiling: device copy {self._ceilings['copy']:.1f} GB/s (read + write, {nbytes >> 20} MiB)")
        return self._ceilings["copy"]

    def matmul_tflops(self, dtype: torch.dtype) -> float:
        key = ("matmul", dtype)
        if key not in self._ceilings:
            n = 256 if self.quick else (8192 if self.device.type == "cuda" else 2048)
            self._ceilings[key] = matmul_tflops(n, dtype, self.device)
            print(f"  ceiling: {str(dtype).removeprefix('torch.')} matmul {self._ceilings[key]:.3f} TFLOP/s ({n}^3)")
        return self._ceilings[key]

    def _peak(self, fn) -> tuple[object, float | None]:
        """fn()'s result and its extra peak memory in MiB (None where it cannot be measured)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            out = fn()
            torch.cuda.synchronize(self.device)
            return out, (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM to the current RSS
        except OSError:
            return fn(), None
        base = rss_kib("VmRSS:")
        out = fn()
        peak = rss_kib("VmHWM:")
        return out, (max(0, peak - base) / 1024 if base >= 0 and peak >= 0 else None)

    def run_case(self, kernel: str, shape: str, dtype: str, providers: list[Provider], *,
                 eager: Callable[[], object] | None = None, compose: Callable | None = None,
                 compose_args: tuple = (), compile_call: Callable | None = None, bytes_moved: float | None = None, flops: float | None = None,
                 flops_dtype: torch.dtype | None = None, note: str = "") -> list[dict]:
        """Time every provider of one case and append one OP_COLUMNS row each.

        eager: the plain composition, timed as provider "eager"; compose(*compose_args) is the same
        function, compiled with torch.compile as provider "torch_compile" (unless --no-compile);
        compile_call(compiled) gives that provider's zero-argument callable (default: the compiled
        function called on compose_args; e.g. a forward + backward around a compiled loss).
        bytes_moved: minimum bytes the op must read + write (ceiling: the measured copy bandwidth);
        flops: its FLOPs (ceiling: the measured flops_dtype matmul rate).
        """
        allp = list(providers)
        if eager is not None:
            allp.insert(0, Provider("eager", eager))
        compile_note = ""
        if self.compile and compose is not None:
            try:
                compiled = torch.compile(compose, dynamic=False)
                call = compile_call(compiled) if compile_call is not None else (lambda: compiled(*compose_args))
                t0 = time.perf_counter()
                call()
                sync(self.device)
                compile_note = f"compile {time.perf_counter() - t0:.1f} s"
                allp.insert(1 if eager is not None else 0, Provider("torch_compile", call))
            except Exception as e:  # a baseline that does not compile is reported, not fatal
                compile_note = f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                print(f"  {kernel} {shape}: {compile_note}", file=sys.stderr)
        if bytes_moved is not None:
            ceiling, limit_ms = f"copy {self.copy_gbs():.1f} GB/s", bytes_moved / (self.copy_gbs() * 1e9) * 1e3
        elif flops is not None:
            rate = self.matmul_tflops(flops_dtype or torch.float32)
            ceiling = f"{str(flops_dtype or torch.float32).removeprefix('torch.')} matmul {rate:.3f} TFLOP/s"
            limit_ms = flops / (rate * 1e12) * 1e3
        else:
            ceiling, limit_ms = "", None
        timed = {}
        for p in allp:
            with backend(p.backend):
                try:
                    _, peak = self._peak(p.fn)  # warm-up call 1 (and the memory of one call)
                except RuntimeError as e:  # NotImplementedError (no kernel for the device) included
                    first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                    if p.backend is not None and "UNLEARNX_BACKEND" in str(e):
                        print(f"  {kernel} {shape}: {p.name} skipped ({first})")
                        continue
                    # One broken provider must not cost the other measurements of a scarce GPU run:
                    # it is reported, the family goes on, and the command exits with status 1.
                    self.failures.append(f"{kernel} {shape} {p.name}: {type(e).__name__}: {first}")
                    print(f"  FAILED {self.failures[-1]}", file=sys.stderr)
                    continue
                reps = min(self.reps, p.reps) if p.reps else self.reps
                max_s = 2.0 if self.quick else 20.0
                stats = time_fn(p.fn, device=self.device, warmup=1, reps=reps, max_seconds=max_s)
            timed[p.name] = (stats, peak)
            gc.collect()
        eager_ms = timed["eager"][0][0] if "eager" in timed else None
        compile_ms = timed["torch_compile"][0][0] if "torch_compile" in timed else None
        rows = []
        for name, ((p50, p20, p80), peak) in timed.items():
            rows.append({
                "kernel": kernel, "provider": name, "shape": shape, "dtype": dtype,
                "ms_p50": f"{p50:.6g}", "ms_p20": f"{p20:.6g}", "ms_p80": f"{p80:.6g}",
                "eager_ms": f"{eager_ms:.6g}" if eager_ms is not None else "",
                "compile_ms": f"{compile_ms:.6g}" if compile_ms is not None else "",
                "x_vs_eager": f"{eager_ms / p50:.3f}" if eager_ms is not None else "",
                "x_vs_compile": f"{compile_ms / p50:.3f}" if compile_ms is not None else "",
                "ceiling": ceiling,
                "limit_ms": f"{limit_ms:.6g}" if limit_ms is not None else "",
                "pct_of_ceiling": f"{100 * limit_ms / p50:.2f}" if limit_ms is not None else "",
                "peak_mib": f"{peak:.1f}" if peak is not None else "",
                "note": "; ".join(s for s in (note, compile_note if name == "torch_compile" else "") if s),
                "device": self.device_label,
            })
        self.rows.extend(rows)
        return rows

    def finish(self) -> Path | None:
        """Print the table; append the rows to the CSV (see --csv). Returns the CSV path or None."""
        print_table(["kernel", "shape", "dtype", "provider", "ms p50", "x eager", "x compile", "% ceiling", "peak MiB"],
                    [[r["kernel"], r["shape"], r["dtype"], r["provider"], r["ms_p50"], r["x_vs_eager"],
                      r["x_vs_compile"], r["pct_of_ceiling"], r["peak_mib"]] for r in self.rows])
        ceilings = sorted({r["ceiling"] for r in self.rows if r["ceiling"]})
        if ceilings:
            print("ceilings measured in this run: " + "; ".join(ceilings))
        path = None
        if self.csv:
            path = Path(self.csv)
        elif self.save and not self.quick:
            results = _checkout_results_dir()
            if results is None:
                print("note: not in a checkout of unlearnx; pass --csv FILE to keep the rows")
            else:
                path = results / f"op_{self.family}.csv"
        if path is not None and self.save:
            append_op_rows(path, self.rows)
            print(f"appended {len(self.rows)} rows to {path}")
            return path
        return None


def append_op_rows(path: Path | str, rows: list[dict]) -> Path:
    """Append rows (OP_COLUMNS; torch, unlearnx and date filled in) to a CSV, rewriting it atomically.

    An existing file with another header is refused (BenchError) rather than mixed."""
    import unlearnx
    from unlearnx.report.io import atomic_write_text

    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old:
        header = next(csv.reader(io.StringIO(old)), [])
        if header != OP_COLUMNS:
            raise BenchError(f"--csv {path}: the file has other columns ({','.join(header[:6])},...); "
                             "give a new file")
        if not old.endswith("\n"):
            old += "\n"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=OP_COLUMNS, lineterminator="\n")
    if not old:
        w.writeheader()
    today = _dt.datetime.now(_dt.timezone.utc).date().isoformat()
    for row in rows:
        full = {"torch": torch.__version__, "unlearnx": unlearnx.__version__, "date": today, **row}
        w.writerow({k: full.get(k, "") for k in OP_COLUMNS})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, old + buf.getvalue())
    return path


def entry(family: str, build_parser: Callable[[], argparse.ArgumentParser], run: Callable, argv=None) -> int:
    """A family's main(): parse, run(ctx, args), print and save; BenchError -> message and status 2."""
    args = build_parser().parse_args(argv)
    try:
        ctx = Context.from_args(family, args)
        run(ctx, args)
        ctx.finish()
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if ctx.failures:
        print(f"error: {len(ctx.failures)} provider(s) failed:\n  " + "\n  ".join(ctx.failures), file=sys.stderr)
        return 1
    return 0


# ---- the end-to-end scripts' helpers (schema COLUMNS) ---------------------------------------------


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
    from unlearnx.report.io import atomic_write_text

    atomic_write_text(RESULTS_DIR / f"{stem}.md", f"# {title}\n\n{markdown}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(RESULTS_DIR / f"{stem}.csv", buf.getvalue())


def print_table(headers: list[str], rows: list[list]) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    sys.stdout.flush()
