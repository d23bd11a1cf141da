"""Loaders for the published LLM-unlearning benchmark files (TOFU, MUSE, WMDP, RWKU), read from
local files in the schemas their authors released; nothing is downloaded.

Each loader returns the library's own item types, so methods and evaluation consume them as is:
question/answer data -> `QAItem`, plain corpora -> `list[str]`, multiple choice ->
`MultipleChoiceItem`. Files may be a JSON array, JSON Lines (whatever the extension: TOFU's
".json" files are JSON Lines), parquet (needs the `datasets` package or `pyarrow`) or, for plain
corpora, a ".txt" file. A record with a missing or mistyped field raises `BenchmarkSchemaError`
naming the file, the record, the field and the expected schema.

Schemas (docs/llm-eval.md cites the sources):

    TOFU  (huggingface.co/datasets/locuslab/TOFU; Maini et al., 2024)
        forget01|05|10, retain90|95|99, full, real_authors, world_facts: question, answer
        forget01|05|10_perturbed, retain_perturbed: question, answer, paraphrased_answer,
            perturbed_answer (list of str)   [paraphrased_question ignored]
        real_authors_perturbed, world_facts_perturbed: question, answer, perturbed_answer (list)
    MUSE  (huggingface.co/datasets/muse-bench/MUSE-News, MUSE-Books; Shi et al., 2024)
        raw/{forget,retain1,retain2,holdout}, privleak/{forget,retain,holdout},
            scal/forget_{1..4}, sust/forget_{1..4}: text (or a bare string per record, or .txt)
        verbmem/forget: prompt, gt
        knowmem/{forget_qa,retain_qa,forget_qa_icl,retain_qa_icl}: question, answer
    WMDP  (huggingface.co/datasets/cais/wmdp, cais/wmdp-corpora; Li et al., 2024)
        wmdp-{bio,cyber,chem} test: question, choices (list of 4 str), answer (int index)
        corpora (bio/cyber forget and retain): text (or a bare string per record, or .txt)
    RWKU  (huggingface.co/datasets/jinzhuoran/RWKU, github.com/jinzhuoran/RWKU; Jin et al., 2024)
        forget_target (intro.json): target [, intro]
        forget_level1|2|3, neighbor_level1|2: subject, query, answer, level [, type]
            (type, the attack kind, is required at level 3)
        forget_mia, retain_mia: text, subject
        utility sets (retain_mmlu, retain_bbh, truthful, triviaqa, fluency): kept as raw records
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearnx.data.text import QAItem

__all__ = [
    "BenchmarkSchemaError",
    "MultipleChoiceItem",
    "RWKUData",
    "BENCHMARKS",
    "TOFU_SPLITS",
    "MUSE_SPLITS",
    "WMDP_SUBJECTS",
    "read_records",
    "load_tofu",
    "load_muse",
    "load_wmdp",
    "load_wmdp_corpus",
    "load_rwku",
    "rwku_targets",
    "load_benchmark",
]

BENCHMARKS = ("tofu", "muse", "wmdp", "rwku")
TOFU_SPLITS = ("forget01", "forget05", "forget10", "retain90", "retain95", "retain99", "full", "real_authors",
               "world_facts", "forget01_perturbed", "forget05_perturbed", "forget10_perturbed",
               "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed")
MUSE_SPLITS = {
    "raw": ("forget", "retain1", "retain2", "holdout"),
    "verbmem": ("forget",),
    "knowmem": ("forget_qa", "retain_qa", "forget_qa_icl", "retain_qa_icl"),
    "privleak": ("forget", "retain", "holdout"),
    "scal": ("forget_1", "forget_2", "forget_3", "forget_4"),
    "sust": ("forget_1", "forget_2", "forget_3", "forget_4"),
}
WMDP_SUBJECTS = ("bio", "cyber", "chem")
_WMDP_TOPIC = {"bio": "biology", "cyber": "computer security", "chem": "chemistry"}
_RWKU_UTILITY = {"general": "retain_mmlu", "reason": "retain_bbh", "truthfulness": "truthful",
                 "factuality": "triviaqa", "fluency": "fluency"}


class BenchmarkSchemaError(ValueError):
    """A benchmark file whose records do not follow the published schema."""


@dataclass(frozen=True)
class MultipleChoiceItem:
    """One multiple-choice question (WMDP, MMLU): `choices[answer]` is the right one."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""

    def __post_init__(self):
        if not isinstance(self.question, str):
            raise TypeError("MultipleChoiceItem.question must be a str")
        choices = tuple(self.choices)
        if len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise TypeError("MultipleChoiceItem.choices must hold at least 2 str")
        if isinstance(self.answer, bool) or not isinstance(self.answer, int) or not 0 <= self.answer < len(choices):
            raise ValueError(f"MultipleChoiceItem.answer must be an index in [0, {len(choices)}), got {self.answer!r}")
        object.__setattr__(self, "choices", choices)


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------

_EXTENSIONS = (".json", ".jsonl", ".parquet", ".txt")


def _read_parquet(path: Path) -> list:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"path: reading {path} needs pyarrow (install `datasets` or `pyarrow`)") from None
    return pq.read_table(str(path)).to_pylist()


def read_records(path: str | os.PathLike) -> list:
    """The records of one file: a JSON array, JSON Lines (one value per line, any extension),
    parquet (rows as dicts), or .txt (the whole file as one string). Records are dicts or str."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file: {path}")
    if path.suffix == ".parquet":
        return _read_parquet(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        return [text]
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BenchmarkSchemaError(f"{path}: invalid JSON array ({e.msg} at line {e.lineno})") from None
        return data
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BenchmarkSchemaError(f"{path}:{lineno}: invalid JSON line ({e.msg})") from None
    return records


def _find(root: Path, stems: Sequence[str], what: str) -> Path:
    """`root` itself when it is a file, else the first root/stem.{json,jsonl,parquet,txt} (or a
    Hugging Face parquet shard root/stem-00000-of-00001.parquet) that exists."""
    if root.is_file():
        return root
    if not root.is_dir():
        raise FileNotFoundError(f"path: no such file or directory: {root}")
    tried = []
    for stem in stems:
        for ext in _EXTENSIONS:
            cand = root / f"{stem}{ext}"
            tried.append(cand.name if cand.parent == root else str(cand.relative_to(root)))
            if cand.is_file():
                return cand
        shards = sorted((root / stem).parent.glob(f"{Path(stem).name}-*.parquet"))
        if shards:
            return shards[0]
    raise FileNotFoundError(f"path: {root} holds no {what} file (looked for {', '.join(tried)})")


def _schema_error(path, i: int, problem: str, schema: str) -> BenchmarkSchemaError:
    return BenchmarkSchemaError(f"{path}: record {i}: {problem}; expected schema: {schema}")


def _field(rec: Any, key: str, kind: type, path, i: int, schema: str):
    if not isinstance(rec, Mapping):
        raise _schema_error(path, i, f"expected a JSON object, got {type(rec).__name__}", schema)
    if key not in rec:
        raise _schema_error(path, i, f"missing field {key!r} (fields present: {sorted(rec)})", schema)
    value = rec[key]
    if kind is list:
        if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
            raise _schema_error(path, i, f"field {key!r} must be a list of str", schema)
        return tuple(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _schema_error(path, i, f"field {key!r} must be an int, got {type(value).__name__}", schema)
        return value
    if not isinstance(value, kind):
        raise _schema_error(path, i, f"field {key!r} must be a {kind.__name__}, got {type(value).__name__}", schema)
    return value


def _nonempty(records: list, path) -> list:
    if not isinstance(records, list):
        raise BenchmarkSchemaError(f"{path}: expected a list of records, got {type(records).__name__}")
    if not records:
        raise BenchmarkSchemaError(f"{path}: holds no records")
    return records


def _texts(path: Path, schema: str = "text (str) per record, or a bare str per record, or a .txt file") -> list[str]:
    out = []
    for i, rec in enumerate(_nonempty(read_records(path), path)):
        out.append(rec if isinstance(rec, str) else _field(rec, "text", str, path, i, schema))
    return out


# --------------------------------------------------------------------------------------------
# TOFU
# --------------------------------------------------------------------------------------------

def load_tofu(path: str | os.PathLike, split: str) -> list[QAItem]:
    """TOFU items of `split` (one of TOFU_SPLITS) from `path`: the split's file, or a directory
    holding `{split}.json` (the layout of huggingface.co/datasets/locuslab/TOFU).

    Plain splits give QAItem(question, answer). `*_perturbed` splits also fill
    `perturbed_answers` from perturbed_answer and, on the forget/retain sets,
    `paraphrased_answer` (the held sets have none: TOFU's truth ratio then uses the answer)."""
    if split not in TOFU_SPLITS:
        raise ValueError(f"split: unknown TOFU split {split!r}; expected one of {TOFU_SPLITS}")
    file = _find(Path(path), [split], f"TOFU {split}")
    perturbed = split.endswith("_perturbed")
    paraphrased = perturbed and not split.startswith(("real_authors", "world_facts"))
    schema = "question (str), answer (str)"
    if perturbed:
        schema += (", paraphrased_answer (str)" if paraphrased else "") + ", perturbed_answer (list of str)"
    items = []
    for i, rec in enumerate(_nonempty(read_records(file), file)):
        q = _field(rec, "question", str, file, i, schema)
        a = _field(rec, "answer", str, file, i, schema)
        kw = {}
        if perturbed:
            kw["perturbed_answers"] = _field(rec, "perturbed_answer", list, file, i, schema)
            if paraphrased:
                kw["paraphrased_answer"] = _field(rec, "paraphrased_answer", str, file, i, schema)
        items.append(QAItem(question=q, answer=a, **kw))
    return items


# --------------------------------------------------------------------------------------------
# MUSE
# --------------------------------------------------------------------------------------------

def load_muse(path: str | os.PathLike, subset: str, split: str) -> list[str] | list[QAItem]:
    """One MUSE file: `path` is the corpus directory (news or books) holding `{subset}/{split}`
    as in muse-bench/MUSE-News and MUSE-Books (parquet shards) or MUSE's GitHub data folder
    (json / txt), or the file itself.

    raw, privleak, scal, sust -> list[str]; knowmem -> QAItem(question, answer); verbmem ->
    QAItem(question=prompt, answer=gt) (the prompt MUSE continues and the ground truth it scores)."""
    if subset not in MUSE_SPLITS:
        raise ValueError(f"subset: unknown MUSE subset {subset!r}; expected one of {tuple(MUSE_SPLITS)}")
    if split not in MUSE_SPLITS[subset]:
        raise ValueError(f"split: MUSE {subset} has splits {MUSE_SPLITS[subset]}, got {split!r}")
    file = _find(Path(path), [f"{subset}/{split}", split], f"MUSE {subset}/{split}")
    if subset in ("raw", "privleak", "scal", "sust"):
        return _texts(file)
    keys = ("prompt", "gt") if subset == "verbmem" else ("question", "answer")
    schema = f"{keys[0]} (str), {keys[1]} (str)"
    return [QAItem(question=_field(rec, keys[0], str, file, i, schema),
                   answer=_field(rec, keys[1], str, file, i, schema))
            for i, rec in enumerate(_nonempty(read_records(file), file))]


# --------------------------------------------------------------------------------------------
# WMDP
# --------------------------------------------------------------------------------------------

def load_wmdp(path: str | os.PathLike, subject: str = "bio") -> list[MultipleChoiceItem]:
    """WMDP questions of `subject` ("bio", "cyber", "chem") from the file, or a directory holding
    `wmdp-{subject}/test-*.parquet` (cais/wmdp's layout) or `wmdp-{subject}.{json,jsonl,parquet}`.
    Each record: question (str), choices (list of 4 str), answer (int index into choices)."""
    if subject not in WMDP_SUBJECTS:
        raise ValueError(f"subject: expected one of {WMDP_SUBJECTS}, got {subject!r}")
    file = _find(Path(path), [f"wmdp-{subject}/test", f"wmdp-{subject}", f"wmdp_{subject}", subject],
                 f"WMDP {subject}")
    schema = "question (str), choices (list of 4 str), answer (int in 0..3)"
    items = []
    for i, rec in enumerate(_nonempty(read_records(file), file)):
        q = _field(rec, "question", str, file, i, schema)
        choices = _field(rec, "choices", list, file, i, schema)
        answer = _field(rec, "answer", int, file, i, schema)
        if len(choices) != 4 or not 0 <= answer < 4:
            raise _schema_error(file, i, f"{len(choices)} choices and answer {answer}", schema)
        items.append(MultipleChoiceItem(question=q, choices=choices, answer=answer, subject=_WMDP_TOPIC[subject]))
    return items


def load_wmdp_corpus(path: str | os.PathLike) -> list[str]:
    """A WMDP forget or retain corpus (cais/wmdp-corpora, e.g. cyber-forget-corpus.jsonl,
    bio-retain-corpus.jsonl; the bio forget corpus is distributed on request): `text` per record."""
    return _texts(_find(Path(path), [], "WMDP corpus"))


# --------------------------------------------------------------------------------------------
# RWKU
# --------------------------------------------------------------------------------------------

@dataclass
class RWKUData:
    """RWKU files for one target (a Target/N_Name folder) or for all (the All folder).

    targets: target names; forget: {"level1": FB probes, "level2": QA probes, "level3":
    adversarial probes}, each a list of QAItem(question=query, answer, subject, fact=type);
    neighbor: {"level1", "level2"} likewise; mia_forget / mia_retain: texts (with subjects
    in mia_*_subjects); utility: {"general" | "reason" | "truthfulness" | "factuality" |
    "fluency": raw records} for the files present."""

    targets: list[str]
    forget: dict[str, list[QAItem]] = field(default_factory=dict)
    neighbor: dict[str, list[QAItem]] = field(default_factory=dict)
    mia_forget: list[str] = field(default_factory=list)
    mia_forget_subjects: list[str] = field(default_factory=list)
    mia_retain: list[str] = field(default_factory=list)
    mia_retain_subjects: list[str] = field(default_factory=list)
    utility: dict[str, list] = field(default_factory=dict)

    def for_target(self, target: str) -> RWKUData:
        """The probes, MIA texts and utility records whose subject is `target` (RWKU's single-target
        setting; utility records without a subject field are kept)."""
        if target not in self.targets:
            raise ValueError(f"target: {target!r} is not one of the {len(self.targets)} targets")

        def pick(d):
            return {k: [it for it in v if it.subject == target] for k, v in d.items()}

        mf = [(t, s) for t, s in zip(self.mia_forget, self.mia_forget_subjects) if s == target]
        mr = [(t, s) for t, s in zip(self.mia_retain, self.mia_retain_subjects) if s == target]
        return RWKUData(targets=[target], forget=pick(self.forget), neighbor=pick(self.neighbor),
                        mia_forget=[t for t, _ in mf], mia_forget_subjects=[s for _, s in mf],
                        mia_retain=[t for t, _ in mr], mia_retain_subjects=[s for _, s in mr],
                        utility={k: [r for r in v if not isinstance(r, Mapping) or r.get("subject", target) == target]
                                 for k, v in self.utility.items()})


_RWKU_PROBE_SCHEMA = "subject (str), query (str), answer (str), level (str or int) [, type (str), required at level 3]"


def _rwku_probes(file: Path, level: int) -> list[QAItem]:
    items = []
    for i, rec in enumerate(_nonempty(read_records(file), file)):
        subject = _field(rec, "subject", str, file, i, _RWKU_PROBE_SCHEMA)
        query = _field(rec, "query", str, file, i, _RWKU_PROBE_SCHEMA)
        answer = _field(rec, "answer", str, file, i, _RWKU_PROBE_SCHEMA)
        if "level" not in rec:
            raise _schema_error(file, i, "missing field 'level'", _RWKU_PROBE_SCHEMA)
        if str(rec["level"]) != str(level):
            raise _schema_error(file, i, f"level {rec['level']!r} in a level-{level} file", _RWKU_PROBE_SCHEMA)
        kind = ("FB" if level == 1 else "QA") if level < 3 else _field(rec, "type", str, file, i, _RWKU_PROBE_SCHEMA)
        items.append(QAItem(question=query, answer=answer, subject=subject, fact=kind))
    return items


def _optional(root: Path, stem: str) -> Path | None:
    if root.is_file():
        return None
    try:
        return _find(root, [stem], stem)
    except FileNotFoundError:
        return None


def load_rwku(path: str | os.PathLike) -> RWKUData:
    """RWKU from a directory in the layout of github.com/jinzhuoran/RWKU (LLaMA-Factory/data/RWKU
    Target/N_Name or All): intro.json (or forget_target.*), forget_level{1,2,3}, neighbor_level{1,2},
    forget_mia, retain_mia, and the utility files when present. forget_level1..3 are required;
    the rest is loaded when present."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"path: RWKU needs a directory, got {root}")
    forget = {f"level{k}": _rwku_probes(_find(root, [f"forget_level{k}"], f"RWKU forget_level{k}"), k)
              for k in (1, 2, 3)}
    neighbor = {f"level{k}": _rwku_probes(p, k) for k in (1, 2)
                if (p := _optional(root, f"neighbor_level{k}")) is not None}
    target_file = _optional(root, "intro") or _optional(root, "forget_target")
    if target_file is not None:
        schema = "target (str) [, intro (str)]"
        targets = [_field(rec, "target", str, target_file, i, schema)
                   for i, rec in enumerate(_nonempty(read_records(target_file), target_file))]
    else:
        targets = list(dict.fromkeys(it.subject for level in forget.values() for it in level))
    out = RWKUData(targets=list(dict.fromkeys(targets)), forget=forget, neighbor=neighbor)
    schema = "text (str), subject (str)"
    for name in ("forget", "retain"):
        file = _optional(root, f"{name}_mia")
        if file is None:
            continue
        recs = _nonempty(read_records(file), file)
        setattr(out, f"mia_{name}", [_field(r, "text", str, file, i, schema) for i, r in enumerate(recs)])
        setattr(out, f"mia_{name}_subjects", [_field(r, "subject", str, file, i, schema) for i, r in enumerate(recs)])
    for key, stem in _RWKU_UTILITY.items():
        file = _optional(root, stem)
        if file is not None:
            out.utility[key] = _nonempty(read_records(file), file)
    return out


def rwku_targets(path: str | os.PathLike) -> list[tuple[str, Path]]:
    """(target, folder) for each `N_Name` folder under an RWKU Target directory, in RWKU's
    numeric order (the order of its batch setting)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"path: no such directory: {root}")
    found = []
    for d in root.iterdir():
        number, _, name = d.name.partition("_")
        if d.is_dir() and number.isdigit() and name:
            found.append((int(number), name.replace("_", " "), d))
    if not found:
        raise FileNotFoundError(f"path: {root} holds no N_Name target folders")
    return [(name, d) for _, name, d in sorted(found)]


# --------------------------------------------------------------------------------------------
# One entry point for configs
# --------------------------------------------------------------------------------------------

def load_benchmark(name: str, path: str | os.PathLike, *, split: str | None = None, subset: str | None = None):
    """`data: {benchmark: NAME, path: PATH, split: ..., subset: ...}` in one call.

    tofu: split (default "forget10") -> list[QAItem]; muse: subset (default "raw"), split
    (default "forget") -> list[str] | list[QAItem]; wmdp: split = subject (default "bio") ->
    list[MultipleChoiceItem], or split="corpus" -> list[str] from the file `path`; rwku ->
    RWKUData (split = a target name selects that target's items)."""
    if name not in BENCHMARKS:
        raise ValueError(f"name: unknown benchmark {name!r}; expected one of {BENCHMARKS}")
    if name == "tofu":
        return load_tofu(path, split or "forget10")
    if name == "muse":
        return load_muse(path, subset or "raw", split or "forget")
    if name == "wmdp":
        return load_wmdp_corpus(path) if split == "corpus" else load_wmdp(path, split or "bio")
    data = load_rwku(path)
    return data.for_target(split) if split else data
