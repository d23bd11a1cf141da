"""training_mode: the block runs in the requested mode; the caller's mode comes back, also on error."""
import pytest
from torch import nn

from unlearnx._modes import training_mode


@pytest.mark.parametrize("start", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_training_mode_sets_and_restores(start, train):
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train(start)
    with training_mode(model, train=train):
        assert model.training is train and model[1].training is train
    assert model.training is start and model[1].training is start
    with pytest.raises(RuntimeError), training_mode(model, train=train):
        raise RuntimeError("inside")
    assert model.training is start and model[1].training is start
