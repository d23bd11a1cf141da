"""Question/answer items, loaders for user text data, and the locally built tokenizer.

Every LLM data source in unlearnx (the built-in fictitious authors of `unlearnx.data.authors`,
JSONL files, Hugging Face `datasets.Dataset` objects) produces the same `QAItem` records, so the
batching code (`unlearnx.data.lm_batches`), the LLM methods and the evaluation suite never care
where the data came from.

Nothing is downloaded: `build_tokenizer` trains a small byte-level BPE tokenizer on the text it is
given, with the `tokenizers` package that ships with `transformers`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "QAItem",
    "SPECIAL_TOKENS",
    "load_qa_jsonl",
    "load_text_jsonl",
    "qa_from_records",
    "texts_from_records",
    "qa_from_dataset",
    "texts_from_dataset",
    "build_tokenizer",
    "save_tokenizer",
    "load_tokenizer",
]


@dataclass(frozen=True)
class QAItem:
    """One question with its answer and, when known, the alternative answers TOFU's metrics need.

    Attributes:
        question: the question text (no template applied).
        answer: the true answer.
        paraphrased_answer: the same fact in other words (TOFU truth ratio denominator), or None.
        perturbed_answers: wrong but plausible answers in the paraphrase's wording (TOFU truth
            ratio numerator); empty when unknown.
        subject: who or what the question is about (an author's name, a place); "" when unknown.
        fact: the kind of fact asked ("birth_place", ...); "" when unknown.
        value: the bare fact inside the answer ("Velmora"), or None when unknown.
    """

    question: str
    answer: str
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = field(default_factory=tuple)
    subject: str = ""
    fact: str = ""
    value: str | None = None

    def __post_init__(self):
        for name in ("question", "answer"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"QAItem.{name} must be a str, got {type(getattr(self, name)).__name__}")
        if self.paraphrased_answer is not None and not isinstance(self.paraphrased_answer, str):
            raise TypeError("QAItem.paraphrased_answer must be a str or None")
        # Accept any sequence of strings but store a tuple so items stay hashable and immutable.
        perturbed = tuple(self.perturbed_answers)
        if not all(isinstance(p, str) for p in perturbed):
            raise TypeError("QAItem.perturbed_answers must contain only str")
        object.__setattr__(self, "perturbed_answers", perturbed)


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------

_PARAPHRASE_KEY = "paraphrased_answer"
_PERTURBED_KEY = "perturbed_answers"


def _record_to_item(record: Any, where: str, question_key: str, answer_key: str) -> QAItem:
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in (question_key, answer_key):
        if key not in record:
            raise ValueError(f"{where}: missing key {key!r} (keys present: {sorted(record)})")
        if not isinstance(record[key], str):
            raise ValueError(f"{where}: key {key!r} must be a string, got {type(record[key]).__name__}")
    paraphrased = record.get(_PARAPHRASE_KEY)
    if paraphrased is not None and not isinstance(paraphrased, str):
        raise ValueError(f"{where}: key {_PARAPHRASE_KEY!r} must be a string")
    perturbed = record.get(_PERTURBED_KEY, ())
    if isinstance(perturbed, str) or not isinstance(perturbed, Sequence) or not all(
        isinstance(p, str) for p in perturbed
    ):
        raise ValueError(f"{where}: key {_PERTURBED_KEY!r} must be a list of strings")
    return QAItem(
        question=record[question_key],
        answer=record[answer_key],
        paraphrased_answer=paraphrased,
        perturbed_answers=tuple(perturbed),
        subject=str(record.get("subject", "")),
        fact=str(record.get("fact", "")),
        value=record.get("value") if isinstance(record.get("value"), str) else None,
    )


def _record_to_text(record: Any, where: str, text_key: str) -> str:
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if text_key not in record:
        raise ValueError(f"{where}: missing key {text_key!r} (keys present: {sorted(record)})")
    if not isinstance(record[text_key], str):
        raise ValueError(f"{where}: key {text_key!r} must be a string, got {type(record[text_key]).__name__}")
    return record[text_key]


def _jsonl_records(path: str | os.PathLike):
    """Yield (line_number, record) for the non-blank lines of a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such JSONL file: {path}")
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None


def load_qa_jsonl(path: str | os.PathLike, *, question_key: str = "question",
                  answer_key: str = "answer") -> list[QAItem]:
    """Read question/answer pairs from a JSONL file, one JSON object per line.

    Each object needs `question_key` and `answer_key` string fields; optional fields
    "paraphrased_answer" (str), "perturbed_answers" (list of str), "subject", "fact", "value" are
    kept. Blank lines are skipped. Errors name the file, the 1-based line number and the key.
    """
    items = [_record_to_item(rec, f"{path}:{lineno}", question_key, answer_key)
             for lineno, rec in _jsonl_records(path)]
    if not items:
        raise ValueError(f"path: {path} holds no records")
    return items


def load_text_jsonl(path: str | os.PathLike, *, text_key: str = "text") -> list[str]:
    """Read plain texts (one JSON object with a `text_key` string field per line) from a JSONL file."""
    texts = [_record_to_text(rec, f"{path}:{lineno}", text_key) for lineno, rec in _jsonl_records(path)]
    if not texts:
        raise ValueError(f"path: {path} holds no records")
    return texts


def qa_from_records(records: Iterable[Mapping[str, Any]], *, question_key: str = "question",
                    answer_key: str = "answer", source: str = "records") -> list[QAItem]:
    """`load_qa_jsonl` for in-memory records (dicts); errors name `source` and the 0-based row."""
    items = [_record_to_item(rec, f"{source}[{i}]", question_key, answer_key) for i, rec in enumerate(records)]
    if not items:
        raise ValueError(f"records: {source} holds no records")
    return items


def texts_from_records(records: Iterable[Mapping[str, Any]], *, text_key: str = "text",
                       source: str = "records") -> list[str]:
    """`load_text_jsonl` for in-memory records (dicts); errors name `source` and the 0-based row."""
    texts = [_record_to_text(rec, f"{source}[{i}]", text_key) for i, rec in enumerate(records)]
    if not texts:
        raise ValueError(f"records: {source} holds no records")
    return texts


def _require_hf_dataset(dataset: Any):
    try:
        import datasets  # optional dependency
    except ImportError:
        raise ImportError(
            "dataset: the Hugging Face `datasets` package is not installed; "
            "install it, or pass plain dicts to qa_from_records / texts_from_records"
        ) from None
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"dataset: expected a datasets.Dataset, got {type(dataset).__name__}")


def qa_from_dataset(dataset: Any, *, question_key: str = "question", answer_key: str = "answer") -> list[QAItem]:
    """QA items from an in-memory Hugging Face `datasets.Dataset` (needs the `datasets` package)."""
    _require_hf_dataset(dataset)
    return qa_from_records(dataset, question_key=question_key, answer_key=answer_key, source="dataset")


def texts_from_dataset(dataset: Any, *, text_key: str = "text") -> list[str]:
    """Texts from an in-memory Hugging Face `datasets.Dataset` (needs the `datasets` package)."""
    _require_hf_dataset(dataset)
    return texts_from_records(dataset, text_key=text_key, source="dataset")


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

# Fixed ids 0..3 so that models built for one tokenizer agree on padding / bos / eos.
SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>"}


def build_tokenizer(texts: Iterable[str], *, vocab_size: int = 2048, min_frequency: int = 1):
    """Train a byte-level BPE tokenizer on `texts` and wrap it as a `PreTrainedTokenizerFast`.

    Byte-level BPE (GPT-2's scheme) round-trips every string exactly, which ROUGE and answer
    matching rely on, and never needs `<unk>` (kept for API completeness). Special tokens get ids
    pad=0, unk=1, bos=2, eos=3. Encoding a text (`add_special_tokens=True`, the default) prepends
    `<bos>`, like Llama tokenizers; `<eos>` is appended by the batching code. The merges stop
    early if the corpus has fewer than `vocab_size` distinct pieces, so `len(tokenizer)` may be
    smaller than `vocab_size`. Deterministic for a given list of texts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if isinstance(texts, str):
        raise TypeError("texts: expected an iterable of strings, got a single str")
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts: expected a non-empty iterable of strings")
    specials = list(SPECIAL_TOKENS.values())
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if not isinstance(vocab_size, int) or vocab_size < len(alphabet) + len(specials):
        raise ValueError(f"vocab_size: must be an int >= {len(alphabet) + len(specials)} "
                         f"(256 bytes + {len(specials)} special tokens), got {vocab_size!r}")
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency: must be an int >= 1, got {min_frequency!r}")

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=specials, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="right", **SPECIAL_TOKENS)


def save_tokenizer(tokenizer, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save a tokenizer to `directory` atomically (written to a temporary sibling, then renamed).

    A crash never leaves a half-written tokenizer at `directory`. An existing `directory` is
    replaced only with `overwrite=True`.
    """
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"directory: {directory} exists; pass overwrite=True to replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        tokenizer.save_pretrained(str(tmp))
        for f in tmp.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return directory


def load_tokenizer(directory: str | os.PathLike):
    """Load a tokenizer saved by `save_tokenizer` (a `PreTrainedTokenizerFast`)."""
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        raise FileNotFoundError(f"directory: {directory} holds no tokenizer.json")
    return PreTrainedTokenizerFast.from_pretrained(str(directory))
