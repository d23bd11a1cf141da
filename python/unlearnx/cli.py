"""The `unlearnx` command.

    unlearnx demo [--task TASK] [--quick] [--methods ...] [--device cpu|cuda|auto] [--out DIR] [--quiet]
    unlearnx run CONFIG.yaml [key=value ...] [--out DIR] [--quiet]
    unlearnx eval CONFIG.yaml [key=value ...] [--out DIR] [--quiet]
    unlearnx tune CONFIG.yaml [key=value ...] [--trials N] [--methods M ...] [--out DIR] [--write-presets FILE] [--quiet]
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
    except ValueError as exc:
        print(f"backend  error: {exc}")
        return 2
    from unlearnx.ops import registry

    gpu_note = "" if torch.cuda.is_available() else " (no GPU visible here: what CUDA tensors would use)"
    print(f"backend  UNLEARNX_BACKEND={requested}, per op{gpu_note}:")
    table = registry.backend_table()
    for line in registry.format_backend_table(table).splitlines():
        print(f"         {line}")
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    unusable = [f"{r['op']} on {d}: {r[d]}" for r in table for d in devices if r[d].startswith("unavailable")]
    for line in unusable:
        print(f"error: {line}", file=sys.stderr)
    return 2 if unusable else 0


def _is_main_process() -> bool:
    """False on the ranks > 0 of a torchrun launch: only rank 0 prints the run's summary."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    from unlearnx.distributed import current

    return current().is_main


def _finish(task, results: dict, out: Path, started: float) -> int:
    if not _is_main_process():
        return 0
    for s in results["skipped"]:
        print(f"note: {s['method']} skipped ({s['reason']})")
    cached = results["cached_steps"]
    if isinstance(cached, dict):  # per seed
        cached = sorted({c for v in cached.values() for c in v})
    if cached:
        print(f"reused finished steps: {', '.join(cached)}")
    print(task.summary(results))
    print(f"results: {out / 'results.json'}\nreport:  {out / 'report.md'}, {out / 'report.html'}")
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    return 0


def _progress(args: argparse.Namespace) -> bool | None:
    # Bars only on a terminal (or with --progress); in logs and CI one line per finished step.
    return True if getattr(args, "progress", False) else None


def _experiment(cfg_or_path, overrides, args, *, eval_only: bool) -> int:
    from unlearnx.experiments import ConfigError, get_task, load_config, run_experiment, validate_config

    started = time.perf_counter()
    cfg = {"task": "?"}
    try:
        cfg = load_config(cfg_or_path, overrides) if isinstance(cfg_or_path, str) else validate_config(cfg_or_path)
        out = Path(args.out if args.out else cfg["out_dir"])
        results = run_experiment(cfg, out, quiet=args.quiet, eval_only=eval_only, progress=_progress(args))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # an optional extra (transformers, diffusers, ...) is missing
        print(f"error: task {cfg['task']!r} needs an optional extra (pip install 'unlearnx[{cfg['task']}]'): {exc}",
              file=sys.stderr)
        return 2
    return _finish(get_task(cfg["task"]), results, out, started)


def _cmd_demo(args: argparse.Namespace) -> int:
    from unlearnx.experiments import get_task

    task = get_task(args.task)
    options = {name: True for name in task.demo_options() if getattr(args, name, False)}
    for name in _all_demo_options():
        if getattr(args, name, False) and name not in task.demo_options():
            print(f"error: --{name} is not an option of --task {args.task}", file=sys.stderr)
            return 2
    try:
        cfg = task.demo_config(methods=args.methods, quick=args.quick, out_dir=args.out, device=args.device,
                               options=options)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"error: --task {args.task} needs an optional extra (pip install 'unlearnx[{args.task}]'): {exc}",
              file=sys.stderr)
        return 2
    return _experiment(cfg, [], args, eval_only=False)


def _all_demo_options() -> dict[str, str]:
    from unlearnx.experiments import available_tasks, get_task

    return {name: help for t in available_tasks() for name, help in get_task(t).demo_options().items()}


def _cmd_run(args: argparse.Namespace) -> int:
    return _experiment(args.config, args.overrides, args, eval_only=False)


def _cmd_eval(args: argparse.Namespace) -> int:
    return _experiment(args.config, args.overrides, args, eval_only=True)


def _cmd_tune(args: argparse.Namespace) -> int:
    """Hyper-parameter search per method (unlearnx.experiments.tune); prints the chosen values as YAML."""
    from unlearnx.experiments import ConfigError, load_config

    started = time.perf_counter()
    try:
        from unlearnx.experiments.tune import methods_yaml, tune

        cfg = load_config(args.config, args.overrides)
        out = Path(args.out if args.out else str(cfg["out_dir"]) + "-tune")
        summary = tune(cfg, out, trials=args.trials, methods=args.methods, quiet=args.quiet)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # optuna (the tune extra) or the task's extra
        print(f"error: {exc}" if "unlearnx[tune]" in str(exc) else
              f"error: an optional extra is missing (pip install 'unlearnx[tune]' and the task's extra): {exc}",
              file=sys.stderr)
        return 2
    for label, m in summary["methods"].items():
        c = m["chosen"]
        what = "no finished trial" if c is None else (
            f"trial #{c['trial']}, {summary['objective']['name']} {c['value']:.4g}"
            + ("" if c["feasible"] else " (no trial met the budget: least violating shown)"))
        print(f"{label}: {m['n_feasible']}/{m['n_trials']} trials feasible; chosen {what}")
    snippet = methods_yaml(summary)
    print("\nchosen values (paste into a config):\n" + snippet)
    if args.write_presets:
        from unlearnx.report import atomic_write_text

        atomic_write_text(args.write_presets, snippet)
        print(f"wrote {args.write_presets}")
    print(f"study:   {out / 'study.journal'}\nresults: {out / 'tune.json'}\nreport:  {out / 'report.md'}, "
          f"{out / 'report.html'}\nwall time: {time.perf_counter() - started:.1f} s")
    return 0


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

    from unlearnx.experiments import available_tasks, get_task

    tasks = available_tasks()
    p = sub.add_parser("demo", help="a complete unlearning experiment on embedded data (a few minutes on a CPU)")
    p.add_argument("--task", choices=tasks, default="classification",
                   help="; ".join(f"{t}: {get_task(t).demo_help}" for t in tasks).replace("%", "%%"))
    p.add_argument("--quick", action="store_true", help="smaller data and training where the task has a quick mode")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="methods to compare with Retrain (default: the task's panel, skipping any not registered)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                   help="where the demo runs (cuda is refused with exit 2 where torch sees no GPU)")
    for name, help_text in _all_demo_options().items():
        p.add_argument(f"--{name}", action="store_true", help=help_text.replace("%", "%%"))
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/demo, runs/demo-<task>); "
                                                "rerunning reuses finished steps")
    p.add_argument("--quiet", action="store_true", help="no progress bars or step messages")
    p.add_argument("--progress", action="store_true", help="progress bars even when stderr is not a terminal")
    p.set_defaults(func=_cmd_demo)

    for name, func, text in (("run", _cmd_run, "train or load, unlearn, evaluate and report, as a config says"),
                             ("eval", _cmd_eval, "evaluate the saved models of a run again (no training)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", metavar="CONFIG.yaml")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")
        p.add_argument("--out", metavar="DIR", help="run directory (default: the config's out_dir)")
        p.add_argument("--quiet", action="store_true", help="no progress bars or step messages")
        p.add_argument("--progress", action="store_true", help="progress bars even when stderr is not a terminal")
        p.set_defaults(func=func)

    p = sub.add_parser("tune", help="hyper-parameter search per method on a split disjoint from the reported one "
                                    "(needs the tune extra: optuna)")
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. tune.trials=5")
    p.add_argument("--trials", type=int, metavar="N", help="trials per method (default: the config's tune.trials, 20)")
    p.add_argument("--methods", nargs="+", metavar="METHOD", help="tune only these of the config's methods")
    p.add_argument("--out", metavar="DIR", help="tuning directory (default: the config's out_dir + '-tune'); "
                                                "rerunning resumes the studies")
    p.add_argument("--write-presets", metavar="FILE", help="also write the chosen values as a YAML methods list")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    p.set_defaults(func=_cmd_tune)

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
