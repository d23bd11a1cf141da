"""load_pretrained_lm: a tiny random Llama + tokenizer saved with save_pretrained and loaded back."""
import pytest
import torch

from unlearnx.data.text import build_tokenizer
from unlearnx.models.lm import build_lm, load_pretrained_lm


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tok = build_tokenizer(["Question: who wrote it?\nAnswer: Velmora Stone wrote it."], vocab_size=300)
    model = build_lm("llama", tokenizer=tok, layers=1, hidden=32, heads=2)
    d = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d, model, tok


def test_round_trip_same_logits(saved):
    d, model, tok = saved
    loaded, ltok = load_pretrained_lm(str(d), dtype="float32")
    ids = torch.tensor([tok("Answer: Velmora")["input_ids"]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert ltok("Answer: Velmora")["input_ids"] == ids[0].tolist() and ltok.pad_token_id == tok.pad_token_id


def test_dtype_and_lora(saved):
    d, _, _ = saved
    m, _ = load_pretrained_lm(str(d), dtype="bfloat16")
    assert next(m.parameters()).dtype == torch.bfloat16
    peft_model, _ = load_pretrained_lm(str(d), lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert peft_model.peft_config["default"].r == 4


def test_errors(tmp_path, saved):
    d, _, _ = saved
    with pytest.raises(FileNotFoundError, match="network off"):
        load_pretrained_lm(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="dtype"):
        load_pretrained_lm(str(d), dtype="int8")
    with pytest.raises(ValueError, match="lora: unknown keys"):
        load_pretrained_lm(str(d), lora={"rank": 4})
