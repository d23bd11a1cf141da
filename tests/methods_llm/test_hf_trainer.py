import pytest
import torch

import unlearnx as ux

transformers = pytest.importorskip("transformers")


def test_trainer_adapter_uses_the_method_loss(tiny, tmp_path):
    from unlearnx.integrations.hf import UnlearnTrainer

    method = ux.methods.get("npo", "causal_lm")(batch_size=8)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=6, learning_rate=1e-3,
                                          per_device_train_batch_size=8, report_to=[], save_strategy="no",
                                          logging_steps=1, use_cpu=True, lr_scheduler_type="constant",
                                          weight_decay=0.0)
    trainer = UnlearnTrainer.build(tiny.model(), method, forget=tiny.forget, retain=tiny.retain, tokenizer=tiny.tok,
                                   args=args)
    trainer.train()
    log = trainer.unlearn_log
    assert len(log["forget_loss"]) == 6
    assert log["forget_loss"][0] == pytest.approx(2 / 0.1 * torch.log(torch.tensor(2.0)).item(), rel=1e-5)
    f, _ = tiny.nll(trainer.unlearned_model())
    assert f > tiny.base_forget_nll + 0.3
    with pytest.raises(TypeError, match="method must be an unlearnx LLM method"):
        UnlearnTrainer(model=tiny.model(), args=args, method=object(), unlearn_loader=None)
