"""unlearnx.exact: exact unlearning with an audit trail.

SISA (Bourtoule et al., 2021) and S3T (Chowdhury et al., 2024) over a directory with a SQLite
deletion ledger, atomic safetensors checkpoints, crash recovery and an audit. See docs/exact.md.

    from unlearnx.exact import ExactStore, builtin_digits
    d = builtin_digits()
    store = ExactStore.create("model_dir", train=d["train"], test=d["test"], public=d["public"],
                              method="sisa", shards=5, slices=5)
    store.train()
    store.delete([12, 40], requester="ticket-7")
    assert audit_directory("model_dir").ok
"""
from unlearnx.exact.audit import AuditReport, audit_directory
from unlearnx.exact.data import Arrays, assign_slices, builtin_digits, load_data_file, synthetic_blobs
from unlearnx.exact.ledger import Ledger, LedgerCorrupt, LedgerError
from unlearnx.exact.models import MLP, LoRALinear, S3TNet, SGDTrainer, TrainFn, derive_seed
from unlearnx.exact.s3t import S3T, cyclic_orders, simulate_deletion_rate, truncate_prefixes
from unlearnx.exact.sisa import SISA
from unlearnx.exact.store import ExactStore

__all__ = [
    "Arrays", "AuditReport", "ExactStore", "Ledger", "LedgerCorrupt", "LedgerError", "LoRALinear", "MLP", "S3T", "S3TNet",
    "SGDTrainer", "SISA", "TrainFn", "assign_slices", "audit_directory", "builtin_digits", "cyclic_orders",
    "derive_seed", "load_data_file", "simulate_deletion_rate", "synthetic_blobs", "truncate_prefixes",
]
