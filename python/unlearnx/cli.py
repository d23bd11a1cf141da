"""The `unlearnx` command.

    unlearnx demo [--task classification|llm] [--quick] [--methods ...] [--out DIR] [--quiet]
    unlearnx run CONFIG.yaml [key=value ...] [--out DIR] [--quiet]
    unlearnx eval CONFIG.yaml [key=value ...] [--out DIR] [--quiet]
    unlearnx bench [--family NAME] [--device cpu|cuda] [--quick] [--out FILE] [extra benchmark arguments]
    unlearnx info

Exit codes: 0 success, 2 bad input (config, arguments, missing files), 1 a failure during a run.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

# The demo's panel (SalUn's comparison set); methods not registered in this installation are
# skipped with a note, so the demo picks them up as soon as they exist.
DEMO_METHODS = ("ft", "ga", "rl", "l1_sparse", "salun", "ssd")


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    import unlearnx
    from unlearnx import _native

    info = _native.build_info()
    print(f"unlearnx {unlearnx.__version__}")
    print(f"python   {platform.python_version()} ({sys.executable})")
    print(f"torch    {torch.__version__} (CUDA {torch.version.cuda or 'none'}; GPU available: {torch.cuda.is_available()})")
    if info["native"]:
        print(f"native   yes: CPU kernels for {', '.join(info['cpu_isas'])}; active ISA {info['cpu_isa_active']}")
        print(f"         CUDA kernels: {'yes, archs ' + info['cuda_archs'] if info['cuda'] else 'no'}; built against the torch {info['torch_target']} stable ABI")
    else:
        print(f"native   no ({info['error']}); reference kernels in use")
    print(f"triton   {'importable' if _native.triton_available() else 'not importable'}")
    try:
        requested = _native.requested_backend()
        cpu = _native.select_backend("cpu")
        gpu = _native.select_backend("cuda") if torch.cuda.is_available() else "n/a (no GPU)"
    except (ValueError, RuntimeError) as exc:
        print(f"backend  error: {exc}")
        return 2
    print(f"backend  UNLEARNX_BACKEND={requested}: cpu -> {cpu}, cuda -> {gpu}")
    return 0


def demo_config(methods=None, *, out_dir: str = "runs/demo") -> dict:
    """The demo experiment: small_cnn on scikit-learn's digits, 10 % random forgetting, Retrain
    oracle, and `methods` (default `DEMO_METHODS`, each skipped with a note when not registered;
    explicitly named methods must exist). Training recipe: 20 epochs SGD lr 0.05, cosine schedule.
    One torch thread: the models are tiny, so intra-op threads only add synchronisation (and on a
    busy machine a descheduled worker thread stalls every op)."""
    explicit = methods is not None
    entries = [{"name": m} if explicit else {"name": m, "optional": True} for m in (methods or DEMO_METHODS)]
    return {
        "name": "demo: digits, small_cnn, 10% random forgetting",
        "out_dir": out_dir,
        "seeds": [0],
        "threads": 1,
        "data": {"name": "digits"},
        "model": {"name": "small_cnn"},
        "scenario": {"kind": "random", "fraction": 0.1},
        "train": {"epochs": 20, "lr": 0.05, "batch_size": 64, "schedule": "cosine"},
        "methods": entries,
        "eval": {"suite": "classification"},
    }


def _is_main_process() -> bool:
    """False on the ranks > 0 of a torchrun launch: only rank 0 prints the run's summary."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    from unlearnx.distributed import current

    return current().is_main


def _finish(results: dict, out: Path, started: float) -> int:
    from unlearnx.report import summary_table

    if not _is_main_process():
        return 0

    for s in results["skipped"]:
        print(f"note: {s['method']} skipped ({s['reason']})")
    cached = sorted({c for v in results["cached_steps"].values() for c in v})
    if cached:
        print(f"reused finished steps: {', '.join(cached)}")
    sc = results["scenario"]
    print(f"\n{results['name']}: |D_f| = {sc['n_forget']}, |D_r| = {sc['n_retain']}, |test| = {sc['n_test']}; "
          f"seeds {results['seeds']}")
    print(summary_table(results))
    print(f"results: {out / 'results.json'}\nreport:  {out / 'report.md'}, {out / 'report.html'}")
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    return 0


def _experiment(cfg_or_path, overrides, args, *, eval_only: bool) -> int:
    from unlearnx.experiment import ConfigError, load_config, run_experiment, validate_config

    started = time.perf_counter()
    try:
        cfg = load_config(cfg_or_path, overrides) if isinstance(cfg_or_path, str) else validate_config(cfg_or_path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out if args.out else cfg["out_dir"])
    try:
        results = run_experiment(cfg, out, quiet=args.quiet, eval_only=eval_only)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg["task"] == "llm":
        return _finish_llm(results, out, started)
    return _finish(results, out, started)


def _demo_llm(args: argparse.Namespace) -> int:
    from unlearnx.experiment_llm import run_llm_demo

    started = time.perf_counter()
    out = Path(args.out or "runs/demo-llm")
    try:
        results = run_llm_demo(out, quick=args.quick, methods=args.methods, quiet=args.quiet)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # transformers / rouge-score: the "llm" extra
        print(f"error: --task llm needs the llm extra (pip install 'unlearnx[llm]'): {exc}", file=sys.stderr)
        return 2
    return _finish_llm(results, out, started)


def _finish_llm(results: dict, out: Path, started: float) -> int:
    from unlearnx.experiment_llm import llm_summary_table

    if not _is_main_process():
        return 0

    for s in results["skipped"]:
        print(f"note: {s['method']} skipped ({s['reason']})")
    if results["cached_steps"]:
        print(f"reused finished steps: {', '.join(results['cached_steps'])}")
    d = results["data"]
    print(f"\n{results['name']}: forget10 = {d['n_forget']} QA, retain90 = {d['n_retain']} QA; "
          f"Retrain = the retain oracle, target = before unlearning")
    print(llm_summary_table(results))
    print(f"results: {out / 'results.json'}\nreport:  {out / 'report.md'}, {out / 'report.html'}")
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.task == "llm":
        return _demo_llm(args)
    if args.quick:
        print("error: --quick is only for --task llm (the classification demo takes a few minutes already)",
              file=sys.stderr)
        return 2
    return _experiment(demo_config(args.methods, out_dir=args.out or "runs/demo"), [], args, eval_only=False)


def _cmd_run(args: argparse.Namespace) -> int:
    return _experiment(args.config, args.overrides, args, eval_only=False)


def _cmd_eval(args: argparse.Namespace) -> int:
    return _experiment(args.config, args.overrides, args, eval_only=True)


def _benchmark_dir() -> Path | None:
    # The end-to-end benchmarks are scripts of the source tree; the op benchmarks ship in unlearnx.bench.
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "benchmarks").is_dir() and any((root / "benchmarks").glob("bench_*.py")):
            return root / "benchmarks"
    return None


def _cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    import os

    import unlearnx
    from unlearnx.bench import FAMILIES
    from unlearnx.bench.harness import BenchError, resolve_device

    if args.device is not None:
        try:
            resolve_device(args.device)
        except BenchError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    bench_dir = _benchmark_dir()
    scripts = {p.stem.removeprefix("bench_"): p for p in sorted(bench_dir.glob("bench_*.py"))} if bench_dir else {}
    available = list(FAMILIES) + [name for name in scripts if name not in FAMILIES]
    if args.family:
        if args.family not in available:
            more = "" if scripts else " (the end-to-end benchmarks need a checkout of the repository)"
            print(f"error: --family {args.family!r} has no benchmark; available: {', '.join(available)}{more}",
                  file=sys.stderr)
            return 2
        available = [args.family]
    # The children import this very unlearnx (a checkout on PYTHONPATH or an installed package).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(unlearnx.__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]))
    outputs, status = [], 0
    for name in available:
        device = ["--device", args.device] if args.device else []
        if name in FAMILIES:
            cmd = [sys.executable, "-m", FAMILIES[name]]
        else:
            text = scripts[name].read_text(encoding="utf-8")
            if args.quick and "--quick" not in text:
                print(f"note: {scripts[name].name} has no --quick mode; skipped (run it with --family {name} "
                      "and without --quick)")
                continue
            if device and "--device" not in text:
                print(f"note: {scripts[name].name} has no --device option; skipped")
                continue
            cmd = [sys.executable, str(scripts[name])]
        cmd += (["--quick"] if args.quick else []) + device + extra
        print(f"$ {' '.join(cmd)}", flush=True)
        proc = subprocess.run(cmd, cwd=bench_dir.parent if bench_dir else None, env=env, capture_output=True, text=True)
        print(proc.stdout, end="")
        if proc.returncode != 0:
            print(proc.stderr, end="", file=sys.stderr)
            print(f"error: {name} exited with {proc.returncode}", file=sys.stderr)
            status = 2 if proc.returncode == 2 and status != 1 else 1
        outputs.append(f"## {name}\n\n{proc.stdout}")
    if args.out:
        from unlearnx.report import atomic_write_text

        atomic_write_text(args.out, "\n".join(outputs))
        print(f"wrote {args.out}")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unlearnx", description="Machine unlearning for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="version, torch, compiled backends and the backend in use")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="a complete unlearning experiment on embedded data (a few minutes on a CPU)")
    p.add_argument("--task", choices=("classification", "llm"), default="classification",
                   help="classification: digits + small_cnn; llm: a tiny Llama on fictitious authors (TOFU forget10)")
    p.add_argument("--quick", action="store_true", help="--task llm only: smaller data and training (~1 minute)")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help=f"methods to compare with Retrain (default: {' '.join(DEMO_METHODS)}; with --task llm: "
                        "ga graddiff npo simnpo uld; skipping any not registered)")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/demo, runs/demo-llm with --task llm); "
                                                "rerunning reuses finished steps")
    p.add_argument("--quiet", action="store_true", help="no progress bars or step messages")
    p.set_defaults(func=_cmd_demo)

    for name, func, text in (("run", _cmd_run, "train or load, unlearn, evaluate and report, as a config says"),
                             ("eval", _cmd_eval, "evaluate the saved models of a run again (no training)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", metavar="CONFIG.yaml")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")
        p.add_argument("--out", metavar="DIR", help="run directory (default: the config's out_dir)")
        p.add_argument("--quiet", action="store_true", help="no progress bars or step messages")
        p.set_defaults(func=func)

    p = sub.add_parser("bench", help="run the op benchmarks (unlearnx.bench) and, in a checkout, benchmarks/bench_*.py "
                                     "(unknown arguments, e.g. --no-compile --csv FILE, are passed to them)")
    p.add_argument("--family", help="one family: an op family of unlearnx.bench or a benchmarks/bench_<family>.py")
    p.add_argument("--device", help="cpu or cuda (op benchmarks; scripts without --device are skipped)")
    p.add_argument("--quick", action="store_true", help="tiny working sets (not for reported numbers)")
    p.add_argument("--out", metavar="FILE", help="also write the printed tables to FILE")
    p.set_defaults(func=_cmd_bench)

    # `unlearnx exact ...` is its own command tree (unlearnx.exact.cli); main() hands it the rest of
    # the command line, so this entry only makes it show up in `unlearnx --help`.
    sub.add_parser("exact", help="exact unlearning service: init|train|delete|serve-predict|audit|status DIR",
                   add_help=False)
    return parser


@record  # under torchrun, a rank's uncaught exception goes into the launcher's failure summary
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["exact"]:
        from unlearnx.exact.cli import main as exact_main

        return int(exact_main(argv[1:]) or 0)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        return int(_cmd_bench(args, extra) or 0)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
