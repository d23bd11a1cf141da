"""`unlearnx exact init|train|delete|serve-predict|audit|status DIR ...`

Run as `python -m unlearnx.exact.cli ...`; `add_subcommands(subparsers)` lets the `unlearnx`
command mount the same subcommands under `unlearnx exact`. `train` also runs under torchrun:
    python -m torch.distributed.run --nproc_per_node=2 --standalone -m unlearnx.exact.cli train DIR
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ids must be comma-separated integers, got {text!r}") from None


def cmd_init(args) -> int:
    from unlearnx.exact.data import builtin_digits, load_data_file
    from unlearnx.exact.store import ExactStore

    splits = builtin_digits(seed=args.seed) if args.data == "digits" else load_data_file(args.data)
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

    store = ExactStore.open(args.dir, progress=args.progress)
    rid = store.delete(args.ids, requester=args.requester)
    req = next(r for r in store.ledger.requests() if r.id == rid)
    print(json.dumps({"request": rid, "state": req.state, "ids": len(req.ids), "effect": req.effect}, sort_keys=True))
    store.close()
    return 0


def _load_inputs(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    p = Path(path)
    if p.suffix == ".npz":
        with np.load(p) as z:
            raw = {k: z[k] for k in z.files}
    elif p.suffix == ".pt":
        raw = {k: np.asarray(v) for k, v in torch.load(p, map_location="cpu", weights_only=True).items()}
    else:
        raise ValueError(f"--input must be a .npz or .pt file with x (and optionally y), got {p.name}")
    if "x" not in raw:
        raise ValueError(f"--input {p} has no 'x' array")
    y = torch.from_numpy(np.asarray(raw["y"]).astype(np.int64)) if "y" in raw else None
    return torch.from_numpy(np.asarray(raw["x"], dtype=np.float32)), y


def cmd_serve_predict(args) -> int:
    from unlearnx.exact.store import ExactStore

    store = ExactStore.open(args.dir)
    if args.input:
        x, y = _load_inputs(args.input)
    else:
        test = store.test_data()
        if test is None:
            print("error: no --input given and the directory has no test split", file=sys.stderr)
            return 2
        x, y = (torch.from_numpy(a) for a in (test.x, test.y))
    pred = store.predict(x).cpu()
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
    store.close()
    return 0


def cmd_audit(args) -> int:
    from unlearnx.exact.audit import audit_directory

    report = audit_directory(args.dir)
    print(report.format())
    return 0 if report.ok else 1


def cmd_status(args) -> int:
    from unlearnx.exact.store import ExactStore

    store = ExactStore.open(args.dir)
    print(json.dumps(store.status(), indent=1, sort_keys=True))
    store.close()
    return 0


def add_subcommands(subparsers) -> None:
    """Add init/train/delete/serve-predict/audit/status to an argparse subparsers object."""
    p = subparsers.add_parser("init", help="create DIR: data, shard/slice assignment, config")
    p.add_argument("dir")
    p.add_argument("--data", default="digits", help="'digits' (built-in) or a .npz/.pt file with x, y, ids")
    p.add_argument("--method", choices=("sisa", "s3t"), default="sisa")
    p.add_argument("--shards", "-S", type=int, default=5)
    p.add_argument("--slices", "-R", type=int, default=5)
    p.add_argument("--sequences", "-B", type=int, default=None, help="S3T sequences (default: R cyclic rotations)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aggregation", choices=("vote", "mean"), default="vote")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--epochs", type=float, default=None, help="passes over one slice per training step")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_init)

    p = subparsers.add_parser("train", help="train every shard (runs under torchrun too)")
    p.add_argument("dir")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("delete", help="record and apply a deletion request")
    p.add_argument("dir")
    p.add_argument("--ids", type=_parse_ids, required=True, help="comma-separated training ids")
    p.add_argument("--requester", required=True, help="tag recorded in the ledger (e.g. a ticket id)")
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
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
