import copy

import pytest
import torch

from unlearnx.data.authors import make_authors
from unlearnx.data.lm_batches import QADataset, QATemplate
from unlearnx.data.text import build_tokenizer
from unlearnx.models.lm import build_lm
from unlearnx.models.lm_training import answer_nll, finetune_lm


class TinySetup:
    """A tiny LM trained on 10 fictitious authors; forget10 = 1 author (20 QAs).

    Default: a Llama (4 layers, hidden 64, 12 epochs); `arch` and `model_kw` build another tiny
    model with the same data and recipe (test_uoe.py uses a Qwen2-MoE).
    """

    def __init__(self, arch: str = "llama", epochs: int = 12, **model_kw):
        self.qa = make_authors(10, n_real_authors=0, n_world_facts=0)
        t = QATemplate()
        self.tok = build_tokenizer(self.qa.texts() + [t.render(i.question, i.answer) for i in self.qa["full"]],
                                   vocab_size=600)
        self.forget = self.qa["forget10"]
        self.retain = self.qa["retain90"]
        model = build_lm(arch, tokenizer=self.tok, **(model_kw or {"layers": 4, "hidden": 64}))
        finetune_lm(model, QADataset(self.qa["full"], self.tok), epochs=epochs, lr=3e-3, batch_size=16, progress=False)
        self._model = model
        self.forget_eval = QADataset(self.forget, self.tok)
        self.retain_eval = QADataset(self.retain[:40], self.tok)
        self.base_forget_nll, self.base_retain_nll = self.nll(model)

    def model(self):
        return copy.deepcopy(self._model)

    @torch.no_grad()
    def nll(self, model):
        """Mean answer NLL on forget10 and on 40 retain items."""
        f = answer_nll(model, self.forget_eval.collate(list(self.forget_eval))).mean().item()
        r = answer_nll(model, self.retain_eval.collate(list(self.retain_eval))).mean().item()
        return f, r


@pytest.fixture(scope="session")
def tiny_setup_class():
    """TinySetup itself, for modules that build their own tiny model (conftest is not importable)."""
    return TinySetup


@pytest.fixture(scope="session")
def tiny():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 busy cores: one thread is much faster for a model this small
    try:
        yield TinySetup()
    finally:
        torch.set_num_threads(threads)
