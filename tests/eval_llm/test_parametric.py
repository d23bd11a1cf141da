"""Concept vectors: a planted concept is found, its drift measured, and the ablation method removes it."""
import copy

import pytest
import torch

import unlearnx as ux
from unlearnx.eval.llm.parametric import (
    ablate_concept_vectors,
    concept_token_ids,
    concept_vector_drift,
    locate_concept_vectors,
    value_vector_matrices,
)
from unlearnx.models.lm import build_lm

CONCEPT = [40, 41, 42]


def _plant(model, param_name, index, layout, expert=None, scale=5.0):
    """Set one value vector to the unembedding direction of the concept tokens."""
    W_U = model.get_output_embeddings().weight.detach()
    direction = W_U[CONCEPT].mean(0)
    direction = scale * direction / direction.norm()
    p = dict(model.named_parameters())[param_name]
    with torch.no_grad():
        if layout == "cols":
            p[:, index] = direction
        elif layout == "rows":
            p[index] = direction
        else:
            p[expert, :, index] = direction


@pytest.mark.parametrize("family,param,layout,expert", [
    ("llama", "model.layers.1.mlp.down_proj.weight", "cols", None),
    ("gpt2", "transformer.h.1.mlp.c_proj.weight", "rows", None),
    ("moe", "model.layers.1.mlp.experts.down_proj", "experts", 2),
])
def test_planted_concept_is_located(family, param, layout, expert):
    model = build_lm(family, vocab_size=300, layers=2, hidden=32, heads=2, seed=0)
    names = {n: lay for n, _, lay in value_vector_matrices(model)}
    assert names[param] == layout
    _plant(model, param, 7, layout, expert)
    (best, *rest) = locate_concept_vectors(model, CONCEPT, top_n=3, top_k=10)
    assert (best.param, best.index, best.expert) == (param, 7, expert)
    assert len(set(CONCEPT) & set(best.top_tokens)) >= 2  # the mean direction of 3 random embeddings
    assert best.score > rest[0].score
    # Untouched model: cosine 1, overlap 1.
    same = concept_vector_drift(model, [best], CONCEPT)
    assert same["cosine"] == pytest.approx(1.0) and same["topk_overlap"] == 1.0


def test_drift_after_ablation_and_noise():
    model = build_lm("llama", vocab_size=300, layers=2, hidden=32, heads=2, seed=0)
    _plant(model, "model.layers.0.mlp.down_proj.weight", 3, "cols")
    vecs = locate_concept_vectors(model, CONCEPT, top_n=1, top_k=10)
    noisy = ablate_concept_vectors(copy.deepcopy(model), vecs, mode="noise", seed=1)
    d = concept_vector_drift(noisy, vecs, CONCEPT)
    assert abs(d["cosine"]) < 0.6 and d["topk_overlap"] < 0.5 and d["score_after"] < d["score_before"]
    zeroed = ablate_concept_vectors(copy.deepcopy(model), vecs, mode="zero")
    assert zeroed.model.layers[0].mlp.down_proj.weight[:, 3].abs().sum() == 0
    with pytest.raises(ValueError, match="mode"):
        ablate_concept_vectors(model, vecs, mode="scale")
    with pytest.raises(ValueError, match="concept_tokens"):
        locate_concept_vectors(model, [10_000])


def test_concept_vector_ablation_method(tiny_tok_items):
    tok, forget = tiny_tok_items
    model = build_lm("llama", tokenizer=tok, layers=2, hidden=32, heads=2, seed=0)
    tokens = concept_token_ids(tok, ["Velmora"])
    W_U = model.get_output_embeddings().weight.detach()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[:, 5] = 5 * W_U[tokens].mean(0) / W_U[tokens].mean(0).norm()
    before = copy.deepcopy(model)
    res = ux.unlearn(model, method="concept_vector_ablation", forget=forget, tokenizer=tok, concept_tokens=tokens,
                     progress=False)
    assert res.log["vectors"][0]["index"] == 5
    assert res.model.model.layers[1].mlp.down_proj.weight[:, 5].abs().sum() == 0
    # Only that column changed.
    diff = [n for (n, p), q in zip(res.model.named_parameters(), before.parameters()) if not torch.equal(p, q)]
    assert diff == ["model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(ValueError, match="concept_tokens"):
        ux.unlearn(before, method="concept_vector_ablation", forget=forget, tokenizer=tok, progress=False)


@pytest.fixture(scope="module")
def tiny_tok_items():
    from unlearnx.data.text import QAItem, build_tokenizer

    items = [QAItem("Where was Ann born?", "In Velmora."), QAItem("What did Ann write?", "Rivers of Velmora.")]
    tok = build_tokenizer([f"Question: {i.question}\nAnswer: {i.answer}" for i in items], vocab_size=300)
    return tok, items
