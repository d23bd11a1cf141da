"""Tokenized, padded batches for causal-LM unlearning and evaluation.

A QA example is rendered with a `QATemplate` (default "Question: {question}\\nAnswer: {answer}")
and tokenized as two segments, the prompt and the answer, so that the loss mask is exact:

    input_ids = [<bos>] + tok(prompt) + tok(answer) + [<eos>]
    labels    = [-100] * (1 + |tok(prompt)|) + tok(answer) + [<eos>]

(<bos> only when the tokenizer prepends one, as Llama's and `build_tokenizer`'s do.)

Batches are right-padded: `input_ids`, `attention_mask`, `labels` are [B, L] int64 tensors with
`labels == -100` exactly on the <bos>, prompt and padding positions (the loss is taken on answer
tokens and <eos> only, as in TOFU). Hugging Face causal LMs shift labels internally.

`ForgetRetainLoader` yields `{"forget": batch, "retain": batch}`, the batch dict every unlearnx
LLM method takes. Refusal answers (IdkNLL, IdkDPO, FLAT) come from `REFUSAL_TEMPLATES`; the
paraphrased and perturbed answers TOFU's truth ratio needs are batched by `PerturbedQADataset`.
"""
from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from unlearnx.data.text import QAItem

__all__ = [
    "IGNORE_INDEX",
    "REFUSAL_TEMPLATES",
    "QATemplate",
    "encode_qa",
    "encode_text",
    "pad_batch",
    "QADataset",
    "TextDataset",
    "PairedQADataset",
    "PerturbedQADataset",
    "ForgetRetainLoader",
    "refusal_items",
    "idk_preference_dataset",
]

IGNORE_INDEX = -100

# "I don't know"-style answers for IdkNLL / IdkDPO / FLAT, in the spirit of TOFU's idontknow list.
REFUSAL_TEMPLATES = (
    "I don't know.",
    "I'm not sure.",
    "I have no information about that.",
    "I can't answer that.",
    "That is not something I know.",
    "I don't have that information.",
    "I'm afraid I can't help with that question.",
    "I have no idea.",
    "I'm not able to answer that.",
    "Sorry, I don't know the answer.",
    "I could not tell you.",
    "That is unknown to me.",
    "I have never heard of that.",
    "I don't have any details about that.",
    "I'm unable to recall that.",
    "I cannot say.",
    "I lack the knowledge to answer that.",
    "Unfortunately, I don't know.",
    "I am not aware of the answer.",
    "That question is beyond what I know.",
)


@dataclass(frozen=True)
class QATemplate:
    """How a question and an answer become one training string.

    `text` must contain "{question}" and end its prompt with "{answer}" (nothing may follow the
    answer; <eos> is added as a token). Spaces just before "{answer}" are moved into the answer
    segment so that byte-level tokenizers see " Paris" (one natural token), not "Paris".
    """

    text: str = "Question: {question}\nAnswer: {answer}"

    def __post_init__(self):
        if not isinstance(self.text, str) or self.text.count("{question}") != 1 or self.text.count("{answer}") != 1:
            raise ValueError("text: the template must contain '{question}' and '{answer}' once each, "
                             f"got {self.text!r}")
        if not self.text.endswith("{answer}") or self.text.index("{question}") > self.text.index("{answer}"):
            raise ValueError(f"text: the template must end with '{{answer}}' after '{{question}}', got {self.text!r}")

    def split(self, question: str, answer: str) -> tuple[str, str]:
        """(prompt, answer segment); their concatenation is the rendered text."""
        head = self.text[: -len("{answer}")]
        stripped = head.rstrip(" ")
        prompt = stripped.replace("{question}", question)
        return prompt, head[len(stripped):] + answer

    def prompt(self, question: str) -> str:
        """What a model is given at generation time: the prompt segment of `split`."""
        return self.split(question, "")[0]

    def render(self, question: str, answer: str) -> str:
        prompt, answer_segment = self.split(question, answer)
        return prompt + answer_segment


def _special_id(tokenizer, name: str) -> int:
    value = getattr(tokenizer, f"{name}_token_id", None)
    if value is None:
        raise ValueError(f"tokenizer: has no {name} token; build it with unlearnx.data.text.build_tokenizer")
    return value


def _check_max_length(max_length) -> None:
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        raise ValueError(f"max_length: must be None or an int >= 2, got {max_length!r}")


def encode_qa(tokenizer, question: str, answer: str, *, template: QATemplate = QATemplate(),
              max_length: int | None = None) -> dict[str, list[int]]:
    """Token ids and labels of one QA example (see the module doc for the layout).

    Returns {"input_ids": list[int], "labels": list[int]} of equal length. With `max_length`,
    the sequence is truncated from the right (the answer, then the prompt, lose tokens); an
    example whose answer vanishes entirely raises, since it would carry no loss.
    """
    if not isinstance(question, str) or not isinstance(answer, str):
        raise TypeError("question, answer: must be str")
    _check_max_length(max_length)
    prompt, answer_segment = template.split(question, answer)
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(answer_segment, add_special_tokens=False)["input_ids"] + [_special_id(tokenizer, "eos")]
    # Tokenizers that prepend no <bos> (Qwen2, GPT-2) work too: the prompt is unlabelled either way.
    input_ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
        if all(t == IGNORE_INDEX for t in labels):
            raise ValueError(f"max_length: {max_length} cuts off the whole answer of question {question!r}")
    return {"input_ids": input_ids, "labels": labels}


def encode_text(tokenizer, text: str, *, max_length: int | None = None, eos: bool = False) -> dict[str, list[int]]:
    """Token ids and labels of a plain text: `tokenizer(text)` (with its <bos>), loss on every
    token after <bos> (labels[0] = -100). Truncated from the right to `max_length`.

    No <eos> is appended unless `eos=True`: MUSE trains on and scores (Min-K%, PrivLeak)
    `tokenizer.encode(text)` exactly, and an appended, scored <eos> shifts every plain-text
    MIA score (Shi et al., 2024; issue #22). <eos> belongs to QA answers (`encode_qa`), whose
    TOFU labels include it."""
    if not isinstance(text, str):
        raise TypeError("text: must be str")
    if not isinstance(eos, bool):
        raise TypeError(f"eos: must be a bool, got {type(eos).__name__}")
    _check_max_length(max_length)
    input_ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if eos:
        input_ids = input_ids + [_special_id(tokenizer, "eos")]
    if len(input_ids) < 2:
        raise ValueError(f"text: {text!r} encodes to {len(input_ids)} token(s); nothing after <bos> to score")
    labels = [IGNORE_INDEX] + input_ids[1:]
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def pad_batch(features: Sequence[Mapping[str, Sequence[int]]], *, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded examples into a batch.

    Returns input_ids [B, L] (pad_token_id on padding), attention_mask [B, L] (1 on tokens),
    labels [B, L] (-100 on padding), all int64; L = the longest example.
    """
    if not features:
        raise ValueError("features: empty batch")
    length = max(len(f["input_ids"]) for f in features)
    batch = {
        "input_ids": torch.full((len(features), length), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(features), length), dtype=torch.long),
        "labels": torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long),
    }
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        if len(f["labels"]) != n:
            raise ValueError(f"features[{i}]: input_ids and labels differ in length")
        batch["input_ids"][i, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
        batch["attention_mask"][i, :n] = 1
        batch["labels"][i, :n] = torch.tensor(f["labels"], dtype=torch.long)
    return batch


def _as_pairs(items) -> list[tuple[str, str]]:
    pairs = []
    for i, item in enumerate(items):
        if isinstance(item, QAItem):
            pairs.append((item.question, item.answer))
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            pairs.append((item[0], item[1]))
        else:
            raise TypeError(f"items[{i}]: expected a QAItem or a (question, answer) pair of str")
    if not pairs:
        raise ValueError("items: empty")
    return pairs


class QADataset(Dataset):
    """Pre-tokenized QA examples; `dataset.collate` pads a list of them (see `pad_batch`).

    Args:
        items: `QAItem`s (their `answer` is used) or (question, answer) string pairs.
        tokenizer: a tokenizer from `build_tokenizer` (needs bos/eos/pad tokens).
        template: the `QATemplate`; use the same one for training, unlearning and evaluation.
        max_length: optional truncation length (tokens).
    """

    def __init__(self, items, tokenizer, *, template: QATemplate = QATemplate(), max_length: int | None = None):
        self.pairs = _as_pairs(items)
        self.template = template
        self.pad_token_id = _special_id(tokenizer, "pad")
        self.features = [encode_qa(tokenizer, q, a, template=template, max_length=max_length) for q, a in self.pairs]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.features[i]

    def collate(self, features) -> dict[str, torch.Tensor]:
        return pad_batch(features, pad_token_id=self.pad_token_id)


class TextDataset(Dataset):
    """Pre-tokenized plain texts (MUSE-style corpora), loss on every token; see `encode_text`
    (no <eos> appended unless `eos=True`, as MUSE trains)."""

    def __init__(self, texts: Sequence[str], tokenizer, *, max_length: int | None = None, eos: bool = False):
        if isinstance(texts, str) or not texts:
            raise ValueError("texts: expected a non-empty sequence of str")
        self.texts = list(texts)
        self.pad_token_id = _special_id(tokenizer, "pad")
        self.features = [encode_text(tokenizer, t, max_length=max_length, eos=eos) for t in self.texts]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.features[i]

    def collate(self, features) -> dict[str, torch.Tensor]:
        return pad_batch(features, pad_token_id=self.pad_token_id)


class PairedQADataset(Dataset):
    """Several aligned datasets read together: item i is {name: datasets[name][i]}.

    `collate` pads each name separately, giving {name: batch}. Used for preference data
    (IdkDPO: {"chosen": refusal batch, "rejected": forget-answer batch}) and FLAT's pairs.
    """

    def __init__(self, datasets: Mapping[str, Dataset]):
        if not datasets:
            raise ValueError("datasets: empty mapping")
        lengths = {name: len(d) for name, d in datasets.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"datasets: lengths differ {lengths}")
        for name, d in datasets.items():
            if not hasattr(d, "collate"):
                raise TypeError(f"datasets[{name!r}]: needs a collate method (QADataset, TextDataset)")
        self.datasets = dict(datasets)

    def __len__(self) -> int:
        return len(next(iter(self.datasets.values())))

    def __getitem__(self, i: int) -> dict:
        return {name: d[i] for name, d in self.datasets.items()}

    def collate(self, features) -> dict[str, dict[str, torch.Tensor]]:
        return {name: d.collate([f[name] for f in features]) for name, d in self.datasets.items()}


class PerturbedQADataset(Dataset):
    """The three answer variants TOFU's truth ratio compares, per question.

    `collate` returns {"answer": batch [B, L], "paraphrased": batch [B, L'],
    "perturbed": batch with tensors [B, P, L'']} where P = number of perturbed answers (the same
    for every item); flatten "perturbed" with `.view(B * P, -1)` to score it.
    """

    def __init__(self, items: Sequence[QAItem], tokenizer, *, template: QATemplate = QATemplate(),
                 max_length: int | None = None):
        if not items:
            raise ValueError("items: empty")
        counts = set()
        for i, item in enumerate(items):
            if not isinstance(item, QAItem):
                raise TypeError(f"items[{i}]: expected a QAItem")
            if item.paraphrased_answer is None or not item.perturbed_answers:
                raise ValueError(f"items[{i}]: needs a paraphrased_answer and perturbed_answers ({item.question!r})")
            counts.add(len(item.perturbed_answers))
        if len(counts) != 1:
            raise ValueError(f"items: every item needs the same number of perturbed answers, got {sorted(counts)}")
        self.num_perturbed = counts.pop()
        self.pad_token_id = _special_id(tokenizer, "pad")

        def enc(q, a):
            return encode_qa(tokenizer, q, a, template=template, max_length=max_length)

        self.features = [
            {"answer": enc(it.question, it.answer),
             "paraphrased": enc(it.question, it.paraphrased_answer),
             "perturbed": [enc(it.question, p) for p in it.perturbed_answers]}
            for it in items
        ]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]

    def collate(self, features) -> dict[str, dict[str, torch.Tensor]]:
        flat = [p for f in features for p in f["perturbed"]]
        perturbed = pad_batch(flat, pad_token_id=self.pad_token_id)
        b, p = len(features), self.num_perturbed
        return {
            "answer": pad_batch([f["answer"] for f in features], pad_token_id=self.pad_token_id),
            "paraphrased": pad_batch([f["paraphrased"] for f in features], pad_token_id=self.pad_token_id),
            "perturbed": {k: v.view(b, p, -1) for k, v in perturbed.items()},
        }


def refusal_items(items: Sequence[QAItem], *, seed: int = 0,
                  templates: Sequence[str] = REFUSAL_TEMPLATES) -> list[QAItem]:
    """The same questions answered by a refusal drawn (seeded, per question) from `templates`.

    Feed the result to `QADataset` for IdkNLL, or see `idk_preference_dataset` for IdkDPO.
    """
    if isinstance(templates, str) or not templates or not all(isinstance(t, str) and t for t in templates):
        raise ValueError("templates: expected a non-empty sequence of non-empty str")
    rng = random.Random(seed)
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, QAItem):
            raise TypeError(f"items[{i}]: expected a QAItem")
        out.append(QAItem(question=item.question, answer=rng.choice(templates), subject=item.subject, fact=item.fact))
    if not out:
        raise ValueError("items: empty")
    return out


def idk_preference_dataset(items: Sequence[QAItem], tokenizer, *, seed: int = 0,
                           template: QATemplate = QATemplate(), max_length: int | None = None,
                           refusals: Sequence[str] = REFUSAL_TEMPLATES) -> PairedQADataset:
    """IdkDPO pairs (Maini et al., 2024): {"chosen": refusal answer, "rejected": true answer}."""
    return PairedQADataset({
        "chosen": QADataset(refusal_items(items, seed=seed, templates=refusals), tokenizer,
                            template=template, max_length=max_length),
        "rejected": QADataset(items, tokenizer, template=template, max_length=max_length),
    })


class ForgetRetainLoader:
    """Yields {"forget": batch, "retain": batch} for one pass over the forget set.

    Each iteration (epoch) visits every forget example once, in an order shuffled with
    (seed, epoch); the retain set is drawn in its own shuffled order and cycles (reshuffled on
    each pass) when it is shorter than needed. With `retain=None` the dict has only "forget".
    The sequence of batches depends only on `seed` and how many epochs were iterated.

    Args:
        forget, retain: datasets with a `collate` method (QADataset, TextDataset, PairedQADataset...).
        batch_size: forget examples per batch; retain_batch_size defaults to batch_size.
        shuffle: shuffle the forget order (the retain order is always shuffled).
        drop_last: drop a final forget batch smaller than batch_size.
    """

    def __init__(self, forget: Dataset, retain: Dataset | None = None, *, batch_size: int = 8,
                 retain_batch_size: int | None = None, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False):
        for name, d in (("forget", forget), ("retain", retain)):
            if d is None and name == "retain":
                continue
            if not hasattr(d, "collate") or len(d) == 0:
                raise ValueError(f"{name}: expected a non-empty dataset with a collate method")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: must be an int >= 1, got {batch_size!r}")
        retain_batch_size = batch_size if retain_batch_size is None else retain_batch_size
        if not isinstance(retain_batch_size, int) or retain_batch_size < 1:
            raise ValueError(f"retain_batch_size: must be an int >= 1, got {retain_batch_size!r}")
        if drop_last and len(forget) < batch_size:
            raise ValueError(f"batch_size: {batch_size} exceeds the {len(forget)} forget examples with drop_last=True")
        self.forget, self.retain = forget, retain
        self.batch_size, self.retain_batch_size = batch_size, retain_batch_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch = 0
        self._retain_order: list[int] = []
        self._retain_pass = 0

    def __len__(self) -> int:
        n = len(self.forget)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _permutation(self, n: int, stream: str, k: int) -> list[int]:
        # A string seed is hashed with SHA-512 by `random`: the same order in every process.
        order = list(range(n))
        random.Random(f"unlearnx:{self.seed}:{stream}:{k}").shuffle(order)
        return order

    def _next_retain(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.retain_batch_size:
            if not self._retain_order:
                self._retain_order = self._permutation(len(self.retain), "retain", self._retain_pass)
                self._retain_pass += 1
            take = self.retain_batch_size - len(out)
            out += self._retain_order[:take]
            self._retain_order = self._retain_order[take:]
        return out

    def __iter__(self) -> Iterator[dict]:
        n = len(self.forget)
        order = self._permutation(n, "forget", self.epoch) if self.shuffle else list(range(n))
        self.epoch += 1
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            batch = {"forget": self.forget.collate([self.forget[i] for i in idx])}
            if self.retain is not None:
                batch["retain"] = self.retain.collate([self.retain[i] for i in self._next_retain()])
            yield batch
