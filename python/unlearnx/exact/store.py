"""The exact-unlearning service over a directory: configuration, served manifest, deletion ledger,
checkpoints, recovery.

Layout of DIR (see docs/exact.md):
  config.json        immutable settings and the shard/slice assignment (written atomically at init)
  served.json        the served manifest: per shard its data file, current slice ids and the
                     checkpoints/adapters served; replaced atomically, so readers and a crash see
                     either the old or the new state
  ledger.sqlite      the deletion ledger (WAL, synchronous=FULL)
  checkpoints/       safetensors files named by content hash (never overwritten)
  data/              per-shard training rows (rewritten without deleted rows), test/public rows
  .lock              advisory lock taken by writers

Applying request k: record it ('received', durable) -> rewrite affected shard data -> train or
truncate -> write new checkpoints -> write the new served.json (atomic swap) -> mark the request
applied with the manifest and file hashes (one SQLite transaction) -> delete unreferenced files.
Recovery on open finishes a swap the ledger missed and re-applies received requests in order;
`served.json["applied_through"]` says which requests the served model reflects, so each request is
applied exactly once.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearnx.exact.data import Arrays, assign_slices, load_arrays, save_arrays
from unlearnx.exact.distributed import DistContext
from unlearnx.exact.io import (
    CheckpointStore, DirLock, atomic_write_json, crash_point, fsync_dir, parse_json, read_json, sha256_bytes,
    sha256_file,
)
from unlearnx.exact.ledger import Ledger, Request
from unlearnx.exact.models import SGDTrainer, TrainFn, mlp_factory, steps_for
from unlearnx.exact.s3t import S3T, simulate_deletion_rate
from unlearnx.exact.sisa import SISA

CONFIG_FORMAT = "unlearnx.exact.config/1"
MANIFEST_FORMAT = "unlearnx.exact.manifest/1"
METHODS = ("sisa", "s3t")
AGGREGATIONS = ("vote", "mean")
DEFAULT_RECIPE = {"epochs": 10.0, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "pretrain_epochs": 30.0}


# Inclusive ranges of the numeric settings (the CLI checks its arguments against the same table).
INT_RANGES = {"shards": (1, 10_000), "slices": (1, 10_000), "sequences": (1, 10_000), "seed": (0, 2**63 - 1),
              "hidden": (1, 65_536), "batch_size": (1, 1_000_000), "lora_rank": (1, 4096)}
# (low, high, low_inclusive): lr in (0, 10], epochs in (0, 10000], momentum in [0, 1).
FLOAT_RANGES = {"epochs": (0.0, 10_000.0, False), "pretrain_epochs": (0.0, 10_000.0, False), "lr": (0.0, 10.0, False),
                "momentum": (0.0, 1.0, True), "lora_alpha": (0.0, 1e6, False)}


def _check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    lo, hi = INT_RANGES.get(name, (low, high))
    lo, hi = lo if low is None else low, hi if high is None else high
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def check_float(name: str, value) -> float:
    """`value` as a finite float inside FLOAT_RANGES[name]; ValueError naming `name` otherwise."""
    lo, hi, lo_incl = FLOAT_RANGES[name]
    interval = f"{'[' if lo_incl else '('}{lo:g}, {hi:g}{']' if name != 'momentum' else ')'}"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        value = float(value)
        ok = (value >= lo if lo_incl else value > lo) and (value < hi if name == "momentum" else value <= hi)
    if not ok:
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return value


def manifest_files(manifest: dict, engine) -> list[dict]:
    """Every file a manifest serves, with its role: shard data, backbone, checkpoints/adapters."""
    files = [{"path": e["data"]["path"], "sha256": e["data"]["sha256"], "role": "shard-data"} for e in manifest["shards"]]
    if manifest.get("backbone"):
        files.append({**manifest["backbone"], "role": "s3t-backbone"})
    if manifest["trained"]:
        for e in manifest["shards"]:
            files += engine.files(e)
    return files


def _remove_new_entries(directory: Path, before: set[Path] | None) -> None:
    """Undo a failed `create`: remove `directory` (the topmost folder it created) when `before` is
    None, else the entries of `directory` that are not in `before`."""
    if before is None:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for p in set(directory.iterdir()) - before if directory.is_dir() else ():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


class ExactStore:
    """An exact-unlearning model (SISA or S3T) stored in a directory, with its deletion ledger.

    Create with `ExactStore.create`, reopen with `ExactStore.open`. For a custom SISA classifier
    pass `model_fn` (() -> nn.Module, logits [N, C]) and `train_fn` (see `models.TrainFn`) to both.
    """

    def __init__(self, directory: Path, config: dict, *, model_fn: Callable[[], nn.Module] | None,
                 train_fn: TrainFn | None, device: str | torch.device | None, progress: bool):
        self.dir = directory
        self.config = config
        self.progress = progress
        self.device = torch.device(device if device is not None else config["device"])
        self.lock = DirLock(directory)
        self.ckpt = CheckpointStore(directory)
        self.ledger = Ledger(directory / "ledger.sqlite")
        self.known_ids = {i for shard in config["assignment"] for sl in shard for i in sl}
        recipe = config["recipe"]
        custom = config["model"]["kind"] == "custom"
        if custom and (model_fn is None or train_fn is None):
            raise ValueError(f"{directory} was created with a custom model: pass model_fn= and train_fn= to open it")
        if train_fn is None:
            train_fn = SGDTrainer(
                steps=steps_for(epochs=recipe["epochs"], rows=config["nominal_slice_rows"], batch_size=recipe["batch_size"]),
                batch_size=recipe["batch_size"], lr=recipe["lr"], momentum=recipe["momentum"],
            )
        self.train_fn = train_fn
        if config["method"] == "sisa":
            self.engine = SISA(seed=config["seed"], slices=config["slices"],
                               model_fn=model_fn if custom else mlp_factory(config["model"]),
                               train_fn=train_fn, store=self.ckpt, device=self.device, progress=progress)
        else:
            self.engine = S3T(seed=config["seed"], slices=config["slices"], sequences=config["sequences"],
                              spec=config["model"], train_fn=train_fn, store=self.ckpt,
                              rank=config["lora"]["rank"], alpha=config["lora"]["alpha"],
                              device=self.device, progress=progress)

    # -- creation and opening -------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str | os.PathLike, *, train: Arrays, test: Arrays | None = None,
               public: Arrays | None = None, method: str = "sisa", shards: int = 5, slices: int = 5,
               sequences: int | None = None, seed: int = 0, aggregation: str = "vote",
               hidden: int = 128, recipe: dict | None = None, lora_rank: int = 8, lora_alpha: float = 16.0,
               model_fn: Callable[[], nn.Module] | None = None, train_fn: TrainFn | None = None,
               device: str = "cpu", source: str = "custom", progress: bool = False) -> "ExactStore":
        """Initialise DIR: assign training ids to shards x slices, store the data, write the
        config and the untrained manifest (version 0). Nothing is trained yet (see `train`).

        sequences: S3T's B (default R: all cyclic rotations). recipe: epochs (per slice, counted
        in passes over one slice), batch_size, lr, momentum, pretrain_epochs (S3T backbone).
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise FileExistsError(f"{directory} exists and is not a directory")
        if (directory / "config.json").exists():
            raise FileExistsError(f"{directory} already holds an exact-unlearning model (config.json)")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        _check_int("shards", shards)
        _check_int("slices", slices)
        _check_int("seed", seed)
        _check_int("hidden", hidden)
        _check_int("lora_rank", lora_rank)
        lora_alpha = check_float("lora_alpha", lora_alpha)
        sequences = slices if sequences is None else _check_int("sequences", sequences)
        if method == "s3t" and sequences > slices:
            raise ValueError(f"sequences must be <= slices ({slices}) for cyclic rotations, got {sequences}")
        try:
            torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None
        if not isinstance(train, Arrays):
            raise TypeError(f"train must be unlearnx.exact.data.Arrays, got {type(train).__name__}")
        if len(train) == 0:
            raise ValueError("train has no rows")
        if (model_fn is None) != (train_fn is None):
            raise ValueError("pass both model_fn and train_fn for a custom model, or neither")
        if model_fn is not None and method != "sisa":
            raise ValueError("a custom model_fn is supported for method='sisa' only (S3T uses its LoRA MLP)")
        if recipe is not None and not isinstance(recipe, dict):
            raise TypeError(f"recipe must be a dict, got {type(recipe).__name__}")
        unknown = set(recipe or {}) - set(DEFAULT_RECIPE)
        if unknown:
            raise ValueError(f"recipe has unknown keys {sorted(unknown)}; known: {sorted(DEFAULT_RECIPE)}")
        recipe = {**DEFAULT_RECIPE, **(recipe or {})}
        for k, v in recipe.items():
            try:
                recipe[k] = _check_int(k, v) if k == "batch_size" else check_float(k, v)
            except ValueError as exc:
                raise ValueError(f"recipe[{k!r}]: {exc}") from None
        if public is not None and not set(public.ids.tolist()).isdisjoint(train.ids.tolist()):
            raise ValueError("public ids must be disjoint from training ids")
        for name, d in (("train", train), ("test", test), ("public", public)):
            if d is not None and len(d) and int(d.y.min()) < 0:
                raise ValueError(f"{name} labels must be >= 0, got {int(d.y.min())}")
            if d is not None and name != "train" and d.x.shape[1] != train.x.shape[1]:
                raise ValueError(f"{name} rows have {d.x.shape[1]} features, train rows {train.x.shape[1]}")
        classes = 1 + max(int(d.y.max()) for d in (train, test, public) if d is not None and len(d))
        assignment = assign_slices(train.ids, shards=shards, slices=slices, seed=seed)
        # Everything is validated; from here on a failure removes what this call created.
        before = set(directory.iterdir()) if directory.is_dir() else None
        created_top = directory
        while not created_top.parent.exists():
            created_top = created_top.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            shard_entries = []
            for s, shard in enumerate(assignment):
                ref = save_arrays(directory, f"data/shard{s}", train.select(i for sl in shard for i in sl))
                shard_entries.append({"shard": s, "data": ref, "slices": shard})
            config = {
                "format": CONFIG_FORMAT, "method": method, "shards": shards, "slices": slices,
                "sequences": sequences if method == "s3t" else 1, "seed": seed, "aggregation": aggregation,
                "device": device, "source": source, "recipe": recipe,
                "lora": {"rank": lora_rank, "alpha": lora_alpha},
                "model": ({"kind": "custom"} if model_fn is not None else
                          {"kind": "mlp", "in_features": int(train.x.shape[1]), "hidden": hidden, "classes": classes}),
                "nominal_slice_rows": max(len(sl) for shard in assignment for sl in shard),
                "test_data": save_arrays(directory, "data/test", test) if test is not None else None,
                "public_data": save_arrays(directory, "data/public", public) if public is not None else None,
                "assignment": assignment,
            }
            manifest = {"format": MANIFEST_FORMAT, "version": 0, "method": method, "trained": False,
                        "applied_through": 0, "request": None, "backbone": None, "shards": shard_entries}
            store = cls(directory, config, model_fn=model_fn, train_fn=train_fn, device=device, progress=progress)
            with store.lock:
                store._commit(manifest, request=None)
                # The config goes last: a directory without it is an interrupted init and can be re-run.
                atomic_write_json(directory / "config.json", config)
        except BaseException:
            if "store" in locals():
                store.close()
            _remove_new_entries(created_top if before is None else directory, before)
            raise
        return store

    @classmethod
    def open(cls, directory: str | os.PathLike, *, model_fn: Callable[[], nn.Module] | None = None,
             train_fn: TrainFn | None = None, device: str | torch.device | None = None,
             progress: bool = False, recover: bool = True) -> "ExactStore":
        """Open DIR; with recover=True finish any interrupted request first (see module doc)."""
        directory = Path(directory)
        if not (directory / "config.json").exists():
            raise FileNotFoundError(f"{directory} is not an exact-unlearning directory (no config.json); run init")
        if not (directory / "ledger.sqlite").exists():  # init creates it before config.json
            raise FileNotFoundError(f"{directory / 'ledger.sqlite'} is missing: the deletion ledger of this directory "
                                    "was removed; restore it from a backup (a new, empty ledger would lose the "
                                    "record of every deletion)")
        config = read_json(directory / "config.json")
        if config.get("format") != CONFIG_FORMAT:
            raise ValueError(f"{directory}/config.json has format {config.get('format')!r}, expected {CONFIG_FORMAT}")
        try:
            store = cls(directory, config, model_fn=model_fn, train_fn=train_fn, device=device, progress=progress)
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"{directory / 'config.json'}: unexpected content ({exc!r}); "
                             "the file is corrupt or was modified outside unlearnx") from None
        if recover:
            store.recover()
        return store

    def close(self) -> None:
        self.ledger.close()

    # -- manifest -------------------------------------------------------------------------------
    def served(self) -> tuple[dict, str]:
        """The served manifest and the sha256 of its bytes."""
        with open(self.dir / "served.json", "rb") as f:
            data = f.read()
        return parse_json(data, self.dir / "served.json"), sha256_bytes(data)

    def _commit(self, manifest: dict, *, request: Request | None) -> None:
        """Swap in `manifest` atomically, then record it (and apply `request`) in the ledger."""
        for folder in ("checkpoints", "data"):  # the new files' names are durable before the swap
            if (self.dir / folder).is_dir():
                fsync_dir(self.dir / folder)
        crash_point("before_manifest_swap")
        sha = atomic_write_json(self.dir / "served.json", manifest)
        crash_point("after_manifest_swap")
        self.ledger.record_manifest(
            manifest["version"], sha, manifest_files(manifest, self.engine),
            request_id=None if request is None else request.id,
            effect=None if request is None else manifest["request"]["effect"],
        )
        crash_point("after_ledger_commit")
        self._collect_garbage(manifest)

    def _collect_garbage(self, manifest: dict) -> None:
        """Delete files no longer served: retrained checkpoints, deactivated S3T adapters (they saw
        deleted ids) and shard data still holding deleted rows, plus temp files of crashed writes."""
        keep = {f["path"] for f in manifest_files(manifest, self.engine)}
        keep |= {self.config[k]["path"] for k in ("test_data", "public_data") if self.config.get(k)}
        for folder in ("checkpoints", "data"):
            root = self.dir / folder
            if not root.is_dir():
                continue
            removed = False
            for p in root.iterdir():
                if f"{folder}/{p.name}" not in keep:
                    p.unlink()
                    removed = True
            if removed:
                fsync_dir(root)

    def _shard_data(self, entry: dict) -> Arrays:
        path = self.dir / entry["data"]["path"]
        if sha256_file(path) != entry["data"]["sha256"]:
            raise RuntimeError(f"shard data {path} does not match its recorded sha256; run audit")
        return load_arrays(path)

    def _arrays(self, key: str) -> Arrays | None:
        ref = self.config.get(key)
        return None if ref is None else load_arrays(self.dir / ref["path"])

    # -- recovery -------------------------------------------------------------------------------
    def recover(self) -> list[int]:
        """Bring ledger and served state together after a crash; returns request ids applied."""
        with self.lock:
            return self._recover_locked()

    def _recover_locked(self) -> list[int]:
        manifest, sha = self.served()
        latest = self.ledger.latest_manifest()
        if latest is None or latest[0] < manifest["version"]:
            # Crash between the manifest swap and the ledger commit: record what is served.
            req = manifest.get("request")
            pending = {r.id: r for r in self.ledger.pending()}
            request = pending.get(req["id"]) if req else None
            self.ledger.record_manifest(
                manifest["version"], sha, manifest_files(manifest, self.engine),
                request_id=None if request is None else request.id,
                effect=None if request is None else req["effect"],
            )
        elif latest != (manifest["version"], sha):
            raise RuntimeError(
                f"served.json (version {manifest['version']}, sha256 {sha}) does not match the ledger's latest "
                f"manifest {latest}: the directory was modified outside unlearnx; run audit"
            )
        applied = []
        for req in self.ledger.pending():
            if req.id <= manifest["applied_through"]:
                raise RuntimeError(f"request {req.id} is pending but the served manifest already reflects it")
            manifest = self._apply(manifest, req)
            applied.append(req.id)
        self._collect_garbage(manifest)
        return applied

    # -- training -------------------------------------------------------------------------------
    def train(self, ctx: DistContext | None = None) -> dict:
        """Train every shard (rank r of a torchrun group trains shards s % world == r) and serve
        the result as the next manifest version. Returns the new manifest."""
        ctx = ctx or DistContext(device=self.device)
        if ctx.rank == 0:
            self.lock.__enter__()
        try:
            manifest, _ = self.served()
            if manifest["trained"]:
                raise RuntimeError(f"{self.dir} is already trained; deletions are applied with delete()")
            if self.ledger.pending():
                raise RuntimeError("requests are pending; open the directory with recover=True first")
            backbone = None
            if isinstance(self.engine, S3T):
                public = self._arrays("public_data")
                pre = None
                if public is not None:
                    rc = self.config["recipe"]
                    pre = SGDTrainer(steps=steps_for(epochs=rc["pretrain_epochs"], rows=len(public), batch_size=rc["batch_size"]),
                                     batch_size=rc["batch_size"], lr=rc["lr"], momentum=rc["momentum"])
                backbone = self.engine.pretrain_backbone(public, pre)
                self.engine.set_backbone(backbone)
            parts = {e["shard"]: self.engine.train_shard(e["shard"], e["slices"], self._shard_data(e))
                     for e in manifest["shards"] if ctx.owns(e["shard"])}
            merged: dict = {}
            for p in ctx.all_gather(parts):
                merged.update(p)
            new = {**manifest, "version": manifest["version"] + 1, "trained": True, "request": None,
                   "backbone": backbone,
                   "shards": [{**e, **merged[e["shard"]]} for e in manifest["shards"]]}
            if ctx.rank == 0:
                self._commit(new, request=None)
            ctx.barrier()
            return new
        finally:
            if ctx.rank == 0:
                self.lock.__exit__(None, None, None)

    # -- deletion -------------------------------------------------------------------------------
    def delete(self, ids, *, requester: str, request_key: str | None = None) -> int:
        """Record a deletion request in the ledger and apply it (and any earlier pending one).
        Raises LedgerError for malformed, unknown or already-deleted ids. Returns the request id;
        a retry (see `request_deletion`) returns the id of the request it repeats."""
        return self.request_deletion(ids, requester=requester, request_key=request_key)[0]

    def request_deletion(self, ids, *, requester: str, request_key: str | None = None) -> tuple[int, bool]:
        """Like `delete`, returning (request id, retry). Idempotent: a request with the
        `request_key` of an earlier one (same ids and requester, else LedgerError), or without a
        key the same requester and exactly the same ids as an earlier one, is a retry: nothing new
        is recorded, the earlier request is applied if a crash left it pending, and its id is
        returned with retry=True."""
        with self.lock:
            self._recover_locked()  # applies a pending original before its retry is answered
            prior = self.ledger.find_retry(ids, requester, request_key=request_key)
            if prior is not None:
                return prior.id, True
            rid = self.ledger.record_request(ids, requester, known_ids=self.known_ids, request_key=request_key)
            crash_point("after_request_recorded")
            manifest, _ = self.served()
            for req in self.ledger.pending():
                manifest = self._apply(manifest, req)
        return rid, False

    def _apply(self, manifest: dict, req: Request) -> dict:
        deleted = set(req.ids)
        if self.config["method"] == "s3t" and manifest["trained"]:
            self.engine.set_backbone(manifest["backbone"])
        shards, effects = [], []
        for entry in manifest["shards"]:
            s = entry["shard"]
            hit = [r for r, sl in enumerate(entry["slices"]) if not deleted.isdisjoint(sl)]
            if not hit:
                shards.append(entry)
                continue
            slices = [[i for i in sl if i not in deleted] for sl in entry["slices"]]
            data = self._shard_data(entry).without(deleted)
            ref = save_arrays(self.dir, f"data/shard{s}", data)
            crash_point("after_data_write")
            if manifest["trained"]:
                part, eff = self.engine.forget(s, entry, slices, hit, data)
            else:
                part, eff = {}, {"shard": s, "slices_hit": hit, "untrained": True}
            shards.append({**entry, "data": ref, "slices": slices, **part})
            effects.append(eff)
        new = {**manifest, "version": manifest["version"] + 1, "applied_through": req.id,
               "request": {"id": req.id, "effect": {"shards": effects}}, "shards": shards}
        self._commit(new, request=req)
        return new

    # -- serving --------------------------------------------------------------------------------
    def shard_models(self) -> list[nn.Module]:
        with self.lock:
            manifest, _ = self.served()
            if not manifest["trained"]:
                raise RuntimeError(f"{self.dir} is not trained yet; run train")
            if isinstance(self.engine, S3T):
                self.engine.set_backbone(manifest["backbone"])
            return [self.engine.shard_model(e["shard"], e) for e in manifest["shards"]]

    @torch.no_grad()
    def predict_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Aggregated class scores [N, C] for x [N, F]: "mean" averages the shard softmaxes,
        "vote" adds the mean softmax / 2 to the vote count, so ties go to the more confident class."""
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            raise ValueError(f"x must be a 2-D tensor [N, F], got {getattr(x, 'shape', type(x))}")
        x = x.to(self.device, torch.float32)
        probs = torch.stack([F.softmax(m(x), dim=-1) for m in self.shard_models()])  # [S, N, C]
        mean = probs.mean(0)
        if self.config["aggregation"] == "mean":
            return mean
        votes = F.one_hot(probs.argmax(-1), probs.shape[-1]).sum(0).to(mean.dtype)
        return votes + 0.5 * mean

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels [N] (int64)."""
        return self.predict_scores(x).argmax(-1)

    def test_data(self) -> Arrays | None:
        return self._arrays("test_data")

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict:
        manifest, sha = self.served()
        cfg = self.config
        out = {"directory": str(self.dir), "method": cfg["method"], "shards": cfg["shards"],
               "slices": cfg["slices"], "trained": manifest["trained"], "manifest_version": manifest["version"],
               "manifest_sha256": sha, "applied_through": manifest["applied_through"], **self.ledger.summary()}
        applied = self.ledger.requests("applied")
        out["shard_retrainings"] = sum(e.get("retrained", False) for r in applied for e in r.effect["shards"])
        out["requests_without_retraining"] = sum(
            not any(e.get("retrained", False) for e in r.effect["shards"]) for r in applied)
        if cfg["method"] == "s3t":
            out["sequences"] = cfg["sequences"]
            if manifest["trained"]:
                out["prefixes"] = [[len(s["adapters"]) for s in e["sequences"]] for e in manifest["shards"]]
            orders = self.engine.orders
            sim = simulate_deletion_rate(shards=cfg["shards"], slices=cfg["slices"], orders=orders, trials=100, seed=0)
            out["deletion_rate_simulated"] = float(sim.mean())
        return out
