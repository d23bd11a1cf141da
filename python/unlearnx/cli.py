"""The `unlearnx` command."""
from __future__ import annotations

import argparse
import platform
import sys


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unlearnx", description="Machine unlearning for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="version, torch, compiled backends and the backend in use")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
