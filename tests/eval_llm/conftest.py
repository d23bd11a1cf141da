"""Shared fixtures for the LLM evaluation tests: a tokenizer, a fixed-logits bigram model, and
(for the slow tests) a target / retain pair of tiny Llamas trained once per session."""
import types

import pytest
import torch

from unlearnx.data.authors import make_authors
from unlearnx.data.lm_batches import QADataset, QATemplate
from unlearnx.data.text import build_tokenizer
from unlearnx.models.lm import build_lm
from unlearnx.models.lm_training import finetune_lm


class BigramLM(torch.nn.Module):
    """A fake causal LM with fixed logits: logits[b, t] = table[input_ids[b, t]].

    The next-token distribution depends only on the current token, so every metric can be
    recomputed by hand from `table`. No KV cache (greedy_generate re-runs the sequence)."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g) * 2)
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, **kwargs):
        self.calls += 1
        return types.SimpleNamespace(logits=self.table[input_ids])


@pytest.fixture(scope="session")
def qa():
    return make_authors(6, n_real_authors=4, n_world_facts=12)


@pytest.fixture(scope="session")
def tok(qa):
    t = QATemplate()
    texts = qa.texts() + [t.render(i.question, i.answer) for i in qa["full"]]
    return build_tokenizer(texts, vocab_size=700)


@pytest.fixture()
def bigram(tok):
    return BigramLM(len(tok))


@pytest.fixture(scope="session")
def trained(qa, tok):
    """{"target": trained on every split, "retain": trained without forget10} (tiny Llamas)."""
    torch.set_num_threads(1)
    held = list(qa["real_authors"]) + list(qa["world_facts"])
    models = {}
    for name, items in (("target", list(qa["full"]) + held), ("retain", list(qa["retain90"]) + held)):
        m = build_lm("llama", tokenizer=tok, layers=2, seed=0)
        finetune_lm(m, QADataset(items, tok), epochs=30, lr=3e-3, batch_size=16, seed=0, progress=False)
        models[name] = m
    return models
