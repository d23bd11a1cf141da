"""`unlearnx exact init|train|delete|serve-predict|audit|status DIR ...`

Run as `python -m unlearnx.exact.cli ...`; `add_subcommands(subparsers)` lets the `unlearnx`
command mount the same subcommands under `unlearnx exact`. `train` also runs under torchrun:
    python -m torch.distributed.run --nproc_per_node=2 --standalone -m unlearnx.exact.cli train DIR

Every user error (an argument out of range, a missing, corrupt or foreign file, a refused request)
exits with status 2 and one `error: ...` line naming the argument or file, never a traceback; the
arguments are checked by argparse before any file is opened or written.
"""
from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
from pathlib import Path

import numpy as np
import torch


class UsageError(ValueError):
    """A user error the CLI reports as `error: ...` with exit status 2."""


def int_arg(name: str, low: int, high: int):
    """argparse type: an integer in [low, high]; the message names the expectation."""
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except (ValueError, AttributeError):
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {value}")
        return value
    parse.__name__ = name
    parse.bounds = ("int", low, high)  # read by the generated bad-input tests
    return parse


def float_arg(name: str, low: float, high: float, *, low_inclusive: bool = False, high_inclusive: bool = True):
    """argparse type: a finite number in the interval (low, high] (bounds per the flags)."""
    interval = f"{'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except (ValueError, AttributeError):
            raise argparse.ArgumentTypeError(f"expected a finite number in {interval}, got {text!r}") from None
        inside = (value >= low if low_inclusive else value > low) and (value <= high if high_inclusive else value < high)
        if not math.isfinite(value) or not inside:
            raise argparse.ArgumentTypeError(f"expected a finite number in {interval}, got {text!r}")
        return value
    parse.__name__ = name
    parse.bounds = ("float", low, high, low_inclusive, high_inclusive)
    return parse


def _parse_ids(text: str) -> list[int]:
    from unlearnx.exact.ledger import LedgerError, validate_ids

    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
        validate_ids(ids)
    except ValueError as exc:
        detail = str(exc) if isinstance(exc, LedgerError) else f"got {text!r}"
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated integer ids: {detail}") from None
    return ids


def _ledger_text(validate):
    def parse(text: str) -> str:
        from unlearnx.exact.ledger import LedgerError

        try:
            return validate(text)
        except LedgerError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def _requester(text: str) -> str:
    from unlearnx.exact.ledger import validate_requester

    return _ledger_text(validate_requester)(text)


def _request_key(text: str) -> str:
    from unlearnx.exact.ledger import validate_request_key

    return _ledger_text(validate_request_key)(text)


def _device(text: str) -> str:
    try:
        torch.device(text)
    except (RuntimeError, TypeError):
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu or cuda:0, got {text!r}") from None
    return text


def _named(arg: str, exc: Exception) -> UsageError:
    return UsageError(f"{arg}: {exc}")


def cmd_init(args) -> int:
    from unlearnx.exact.data import builtin_digits, load_data_file
    from unlearnx.exact.store import ExactStore

    splits = builtin_digits(seed=args.seed) if args.data == "digits" else load_data_file(args.data, what="--data")
    recipe = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("batch_size", args.batch_size)) if v is not None}
    store = ExactStore.create(
        args.dir, train=splits["train"], test=splits.get("test"), public=splits.get("public"),
        method=args.method, shards=args.shards, slices=args.slices, sequences=args.sequences,
        seed=args.seed, aggregation=args.aggregation, hidden=args.hidden, recipe=recipe,
        device=args.device, source=args.data,
    )
    print(f"initialised {args.dir}: {args.method}, {args.shards} shards x {args.slices} slices, "
          f"{len(store.known_ids)} training ids")
    store.close()
    return 0


def cmd_train(args) -> int:
    from unlearnx.exact.distributed import init_distributed, shutdown
    from unlearnx.exact.store import ExactStore

    ctx = init_distributed(args.device)
    try:
        store = ExactStore.open(args.dir, device=ctx.device, progress=args.progress, recover=ctx.rank == 0)
        ctx.barrier()
        manifest = store.train(ctx)
        if ctx.rank == 0:
            print(f"trained {args.dir}: manifest version {manifest['version']} "
                  f"({store.config['shards']} shards over {ctx.world_size} process(es))")
        store.close()
    finally:
        shutdown(ctx)
    return 0


def cmd_delete(args) -> int:
    from unlearnx.exact.store import ExactStore

    from unlearnx.exact.ledger import LedgerError

    store = ExactStore.open(args.dir, progress=args.progress)
    try:
        rid, retry = store.request_deletion(args.ids, requester=args.requester, request_key=args.request_key)
        req = next(r for r in store.ledger.requests() if r.id == rid)
    except LedgerError as exc:
        raise _named("--request-key" if "request key" in str(exc) else "--ids", exc) from None
    finally:
        store.close()
    # A retry (same --request-key, or same requester and ids) answers with the recorded outcome.
    print(json.dumps({"request": rid, "state": req.state, "ids": len(req.ids), "effect": req.effect,
                      "retry": retry, "request_key": req.request_key}, sort_keys=True))
    return 0


def _load_inputs(path: str, features: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    from unlearnx.exact.data import read_array_file

    raw = read_array_file(path, "--input")
    if "x" not in raw:
        raise UsageError(f"--input {path} has no 'x' array (keys: {sorted(raw)})")
    x = raw["x"]
    if not np.issubdtype(x.dtype, np.number) or x.ndim != 2 or (features is not None and x.shape[1] != features):
        raise UsageError(f"--input {path}: x must be a numeric array [N, {features if features else 'F'}], "
                         f"got dtype {x.dtype} shape {x.shape}")
    if not np.isfinite(x).all():
        raise UsageError(f"--input {path}: x contains NaN or Inf")
    y = None
    if "y" in raw:
        if not np.issubdtype(raw["y"].dtype, np.integer) or raw["y"].shape != (len(x),):
            raise UsageError(f"--input {path}: y must be integer labels of shape [{len(x)}], "
                             f"got dtype {raw['y'].dtype} shape {raw['y'].shape}")
        y = torch.from_numpy(raw["y"].astype(np.int64))
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), y


def _check_out(path: str | None) -> None:
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"--out {p} is a directory, expected a file path")
    if not p.parent.is_dir():
        raise UsageError(f"--out {p}: folder {p.parent} does not exist")


def cmd_serve_predict(args) -> int:
    from unlearnx.exact.store import ExactStore

    _check_out(args.out)
    store = ExactStore.open(args.dir)
    try:
        if args.input:
            x, y = _load_inputs(args.input, store.config["model"].get("in_features"))
        else:
            test = store.test_data()
            if test is None:
                raise UsageError(f"no --input given and {args.dir} has no test split")
            x, y = (torch.from_numpy(a) for a in (test.x, test.y))
        pred = store.predict(x).cpu()
    finally:
        store.close()
    out = {"n": len(pred), "predictions": pred.tolist()}
    if y is not None:
        out["accuracy"] = float((pred == y).float().mean())
    if args.out:
        from unlearnx.exact.io import atomic_write_json

        atomic_write_json(args.out, out)
    else:
        print(" ".join(map(str, out["predictions"])))
    if "accuracy" in out:
        print(f"accuracy: {out['accuracy']:.4f} on {out['n']} rows")
    return 0


def cmd_audit(args) -> int:
    from unlearnx.exact.audit import audit_directory

    if not Path(args.dir).is_dir():
        raise UsageError(f"{args.dir} is not a directory")
    report = audit_directory(args.dir)
    print(report.format())
    return 0 if report.ok else 1


def cmd_status(args) -> int:
    from unlearnx.exact.store import ExactStore

    store = ExactStore.open(args.dir)
    try:
        print(json.dumps(store.status(), indent=1, sort_keys=True))
    finally:
        store.close()
    return 0


def _float_range(name: str):
    from unlearnx.exact.store import FLOAT_RANGES

    low, high, low_inclusive = FLOAT_RANGES[name]
    return float_arg(name, low, high, low_inclusive=low_inclusive)


def add_subcommands(subparsers) -> None:
    """Add init/train/delete/serve-predict/audit/status to an argparse subparsers object."""
    from unlearnx.exact.store import INT_RANGES

    p = subparsers.add_parser("init", help="create DIR: data, shard/slice assignment, config")
    p.add_argument("dir")
    p.add_argument("--data", default="digits", help="'digits' (built-in) or a .npz/.pt file with x, y, ids")
    p.add_argument("--method", choices=("sisa", "s3t"), default="sisa")
    p.add_argument("--shards", "-S", type=int_arg("shards", *INT_RANGES["shards"]), default=5)
    p.add_argument("--slices", "-R", type=int_arg("slices", *INT_RANGES["slices"]), default=5)
    p.add_argument("--sequences", "-B", type=int_arg("sequences", *INT_RANGES["sequences"]), default=None,
                   help="S3T sequences (default: R cyclic rotations)")
    p.add_argument("--seed", type=int_arg("seed", *INT_RANGES["seed"]), default=0)
    p.add_argument("--aggregation", choices=("vote", "mean"), default="vote")
    p.add_argument("--hidden", type=int_arg("hidden", *INT_RANGES["hidden"]), default=128)
    p.add_argument("--epochs", type=_float_range("epochs"), default=None, help="passes over one slice per training step")
    p.add_argument("--lr", type=_float_range("lr"), default=None)
    p.add_argument("--batch-size", type=int_arg("batch_size", *INT_RANGES["batch_size"]), default=None)
    p.add_argument("--device", type=_device, default="cpu")
    p.set_defaults(func=cmd_init)

    p = subparsers.add_parser("train", help="train every shard (runs under torchrun too)")
    p.add_argument("dir")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("delete", help="record and apply a deletion request")
    p.add_argument("dir")
    p.add_argument("--ids", type=_parse_ids, required=True, help="comma-separated training ids")
    p.add_argument("--requester", type=_requester, required=True, help="tag recorded in the ledger (e.g. a ticket id)")
    p.add_argument("--request-key", type=_request_key, default=None,
                   help="client-chosen key: a retry with the same key answers with the recorded outcome "
                        "(without one, the same requester and ids count as a retry)")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=cmd_delete)

    p = subparsers.add_parser("serve-predict", help="predict with the served model")
    p.add_argument("dir")
    p.add_argument("--input", default=None, help=".npz/.pt with x [N, F] (and y); default: the test split")
    p.add_argument("--out", default=None, help="write predictions (and accuracy) as JSON here")
    p.set_defaults(func=cmd_serve_predict)

    p = subparsers.add_parser("audit", help="prove deleted ids are gone; exit 1 otherwise")
    p.add_argument("dir")
    p.set_defaults(func=cmd_audit)

    p = subparsers.add_parser("status", help="ledger and serving summary as JSON")
    p.add_argument("dir")
    p.set_defaults(func=cmd_status)


def main(argv: list[str] | None = None) -> int:
    """`unlearnx exact ...` (also `python -m unlearnx.exact.cli ...`, which torchrun uses)."""
    parser = argparse.ArgumentParser(prog="unlearnx exact", description="exact unlearning (SISA, S3T) with a deletion ledger")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    args = parser.parse_args(argv)  # a bad argument: argparse names it and exits 2
    return run_command(args)


def run_command(args) -> int:
    """Run a parsed subcommand; a user error prints `error: ...` and returns 2."""
    try:
        return args.func(args)
    except sqlite3.DatabaseError as exc:  # the ledger broke after a successful open
        print(f"error: {Path(args.dir) / 'ledger.sqlite'}: unreadable deletion ledger ({exc})", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as exc:  # OSError: FileNotFoundError, FileExistsError...
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
