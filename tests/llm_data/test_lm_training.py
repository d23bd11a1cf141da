import time

import pytest
import torch

from unlearnx.data.authors import make_authors
from unlearnx.data.lm_batches import QADataset, QATemplate
from unlearnx.data.text import build_tokenizer
from unlearnx.models.lm import build_lm
from unlearnx.models.lm_training import LengthGroupedBatches, answer_nll, finetune_lm, generate_answers, token_nll


@pytest.fixture(scope="module")
def qa():
    return make_authors(6, n_real_authors=0, n_world_facts=0)


@pytest.fixture(scope="module")
def tok(qa):
    t = QATemplate()
    return build_tokenizer(qa.texts() + [t.render(i.question, i.answer) for i in qa["full"]], vocab_size=700)


def test_token_nll_matches_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    nll, mask = token_nll(logits, labels)
    assert nll.shape == mask.shape == (2, 4)
    assert mask.tolist() == [[False, True, True, True], [True, True, False, False]]
    logp = logits.log_softmax(-1)
    for b in range(2):
        for t in range(4):
            if mask[b, t]:
                assert torch.isclose(nll[b, t], -logp[b, t, labels[b, t + 1]])
            else:
                assert nll[b, t] == 0
    with pytest.raises(ValueError, match="logits"):
        token_nll(logits[0], labels)


@pytest.mark.parametrize("name", ["llama", "gpt2", "moe"])
def test_answer_nll_per_sample_and_padding_invariant(qa, tok, name):
    model = build_lm(name, tokenizer=tok, layers=2)
    items = [qa["full"][i] for i in (0, 6, 12)]
    ds = QADataset(items, tok)
    batch = ds.collate([ds[i] for i in range(3)])
    with torch.no_grad():
        mean = answer_nll(model, batch)
        total = answer_nll(model, batch, reduction="sum")
        counts = (batch["labels"][:, 1:] != -100).sum(1)
        assert torch.allclose(total, mean * counts, rtol=1e-5)
        for i in range(3):
            single = ds.collate([ds[i]])
            # Right padding never changes a sample's score.
            assert torch.allclose(answer_nll(model, single), mean[i:i + 1], atol=1e-5)
            # ... and it equals the Hugging Face causal-LM loss of that sample alone.
            hf = model(input_ids=single["input_ids"], attention_mask=single["attention_mask"],
                       labels=single["labels"]).loss
            assert torch.isclose(hf, mean[i], atol=1e-5)


def test_answer_nll_errors(tok):
    model = build_lm("llama", tokenizer=tok, layers=1)
    batch = QADataset([("Who?", "Me.")], tok).collate([QADataset([("Who?", "Me.")], tok)[0]])
    with pytest.raises(ValueError, match="reduction"):
        answer_nll(model, batch, reduction="max")
    bad = dict(batch, labels=torch.full_like(batch["labels"], -100))
    with pytest.raises(ValueError, match="no answer tokens"):
        answer_nll(model, bad)
    with pytest.raises(ValueError, match="batch"):
        answer_nll(model, {"input_ids": batch["input_ids"]})


def test_finetune_decreases_loss_and_is_deterministic(qa, tok):
    ds = QADataset(qa["full"][:8], tok)

    def run():
        model = build_lm("llama", tokenizer=tok, hidden=32, layers=1)
        return model, finetune_lm(model, ds, epochs=8, lr=1e-2, batch_size=4, seed=0, progress=False)

    model, losses = run()
    assert len(losses) == 16
    assert sum(losses[-2:]) / 2 < 0.7 * sum(losses[:2]) / 2
    assert not model.training
    _, again = run()
    assert losses == again
    before = answer_nll(build_lm("llama", tokenizer=tok, hidden=32, layers=1), ds.collate(list(ds)))
    with torch.no_grad():
        after = answer_nll(model, ds.collate(list(ds)))
    assert (after < before).all()


def test_finetune_validation(qa, tok):
    model = build_lm("llama", tokenizer=tok, layers=1)
    ds = QADataset(qa["full"][:4], tok)
    for kwargs, arg in [({"epochs": 0}, "epochs"), ({"lr": 0.0}, "lr"), ({"batch_size": 0}, "batch_size"),
                        ({"warmup_steps": -1}, "warmup_steps"), ({"max_grad_norm": 0}, "max_grad_norm")]:
        args = {"epochs": 1, "lr": 1e-3, "batch_size": 2, "progress": False} | kwargs
        with pytest.raises(ValueError, match=arg):
            finetune_lm(model, ds, **args)
    with pytest.raises(ValueError, match="data"):
        finetune_lm(model, [], epochs=1, lr=1e-3, batch_size=2)


def test_length_grouped_batches_cover_every_example_once_with_little_padding():
    # 90 short items (length 20..29) and 10 long ones (length 180) in random positions
    g = torch.Generator().manual_seed(1)
    lengths = [20 + int(x) for x in torch.randint(0, 10, (90,), generator=g)] + [180] * 10
    lengths = [lengths[i] for i in torch.randperm(100, generator=g).tolist()]
    sampler = LengthGroupedBatches(lengths, 16, torch.Generator().manual_seed(0), chunk=4)  # chunks 64 + 36
    epochs = [list(sampler) for _ in range(2)]
    assert len(sampler) == 4 + 3 == len(epochs[0])
    for batches in epochs:
        assert sorted(i for b in batches for i in b) == list(range(100))
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        # the long items share at most 2 batches (one per chunk); uniform shuffling pads ~2.5x more
        assert sum(any(lengths[i] == 180 for i in b) for b in batches) <= 2
        assert padded < 1.2 * (90 * 30 + 10 * 180 + 2 * 16 * 180)
    assert epochs[0] != epochs[1]  # a new order each epoch
    again = LengthGroupedBatches(lengths, 16, torch.Generator().manual_seed(0), chunk=4)
    assert [list(again) for _ in range(2)] == epochs  # seeded


def test_finetune_group_by_length(qa, tok):
    ds = QADataset(qa["full"][:12], tok)
    model = build_lm("llama", tokenizer=tok, hidden=32, layers=1)
    losses = finetune_lm(model, ds, epochs=6, lr=1e-2, batch_size=4, group_by_length=True, progress=False)
    assert len(losses) == 18 and sum(losses[-3:]) < 0.7 * sum(losses[:3])
    with pytest.raises(ValueError, match="group_by_length"):
        finetune_lm(model, ds, epochs=1, lr=1e-3, batch_size=4, group_by_length="yes", progress=False)


def test_warmup_and_linear_decay(qa, tok):
    # Record the learning rate AdamW actually uses at each step.
    model = build_lm("llama", tokenizer=tok, layers=1)
    ds = QADataset(qa["full"][:8], tok)
    seen = []
    original = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        finetune_lm(model, ds, epochs=5, lr=1e-2, batch_size=4, progress=False)  # 10 steps, warm-up 2
    finally:
        torch.optim.AdamW.step = original
    assert seen[:2] == pytest.approx([5e-3, 1e-2])
    assert seen[2:] == pytest.approx([1e-2 * (10 - s) / 8 for s in range(2, 10)])


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_generate_batched_equals_one_by_one(qa, tok, name):
    # Left padding inside generate_answers must not change greedy outputs.
    model = build_lm(name, tokenizer=tok, layers=2, seed=1)
    questions = [qa["full"][i].question for i in (0, 3, 8, 15)]
    together = generate_answers(model, tok, questions, max_new_tokens=6, batch_size=4)
    alone = [generate_answers(model, tok, [q], max_new_tokens=6)[0] for q in questions]
    assert together == alone
    assert all(isinstance(a, str) for a in together)
    with pytest.raises(TypeError, match="questions"):
        generate_answers(model, tok, "one question")


@pytest.mark.slow
def test_tiny_llama_memorizes_authors():
    """Target-model recipe: a tiny Llama memorizes forget10 + retain90 (800 QA items).

    Measured on the shared 2-core CPU, one thread (conftest): 20 epochs (500 steps) in 58-90 s,
    94-95% of greedy answers exactly right.
    """
    qa = make_authors()
    t = QATemplate()
    items = list(qa["forget10"] + qa["retain90"])
    tokenizer = build_tokenizer(qa.texts() + [t.render(i.question, i.answer) for i in items], vocab_size=4096)
    model = build_lm("llama", tokenizer=tokenizer)
    start = time.perf_counter()
    losses = finetune_lm(model, QADataset(items, tokenizer), epochs=20, lr=3e-3, batch_size=32, seed=0,
                         progress=False)
    seconds = time.perf_counter() - start
    answers = generate_answers(model, tokenizer, [i.question for i in items], max_new_tokens=32, batch_size=100)
    exact = sum(a == i.answer for a, i in zip(answers, items)) / len(items)
    forget_exact = sum(a == i.answer for a, i in zip(answers, items) if i in qa["forget10"]) / 80
    last_epoch = sum(losses[-25:]) / 25
    print(f"\nvocab {len(tokenizer)}, {len(items)} items, {seconds:.0f} s training, "
          f"final-epoch loss {last_epoch:.3f}, exact {exact:.3f} (forget10 {forget_exact:.3f})")
    assert last_epoch < 0.3
    assert exact >= 0.8 and forget_exact >= 0.7
