import numpy as np
import pytest
import torch

from unlearnx.data.canvas import canvas_dataset
from unlearnx.eval.diffusion import (
    canvas_metrics,
    canvas_prompt_grid,
    change_storage,
    evaluator_features,
    frechet_distance,
    train_evaluator,
)


def test_frechet_distance_closed_cases():
    g = np.random.default_rng(0)
    a = g.normal(size=(400, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([1.0, -2.0, 0.5])
    # same covariance, shifted mean: FID = ||shift||^2
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    with pytest.raises(ValueError, match="same F"):
        frechet_distance(a, a[:, :2])


def test_change_storage_counts_changed_entries():
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.weight[0, 1] += 1
    assert change_storage(a, b) == {"changed_params": 1, "changed_tensors": 1, "changed_bytes": 4, "total_params": 8,
                                    "added_params": 0}


def test_change_storage_counts_a_wrapped_layer_by_what_it_adds():
    """SPM-style wrapping: the base Linear moves under a new name unchanged (nothing to store), the
    added vectors count whole; a wrapped layer whose base weight also changed counts that too."""

    class Wrapped(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base
            self.u = torch.nn.Parameter(torch.zeros(2))

    a = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    b = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    b.load_state_dict(a.state_dict())
    b[0] = Wrapped(b[0])
    ch = change_storage(a, b)
    assert ch["changed_params"] == 2 and ch["added_params"] == 2 and ch["changed_tensors"] == 1
    with torch.no_grad():
        b[0].base.weight[0, 0] += 1
    ch = change_storage(a, b)
    assert ch["changed_params"] == 2 + 6 and ch["added_params"] == 2 + 6 and ch["changed_tensors"] == 2


@pytest.mark.slow
def test_canvas_evaluators_reach_95_percent_and_metrics_run(tiny_text):
    train = canvas_dataset(n_per_pair=24, size=16, n_styles=4, n_objects=4, seed=0)
    test = canvas_dataset(n_per_pair=10, size=16, n_styles=4, n_objects=4, seed=1)
    sc, sa = train_evaluator(train.style_labeled(), test.style_labeled(), num_classes=4, in_channels=3, epochs=15)
    oc, oa = train_evaluator(train.object_labeled(), test.object_labeled(), num_classes=4, in_channels=3, epochs=15)
    assert sa >= 0.95 and oa >= 0.95, (sa, oa)
    assert evaluator_features(sc, test.images[:5]).shape == (5, 64)
    # the metric plumbing on an (untrained) 8x8 model: keys, ranges, counts
    small = canvas_dataset(n_per_pair=2, size=8, n_styles=3, n_objects=3, seed=0)
    s8, _ = train_evaluator(small.style_labeled(), small.style_labeled(), num_classes=3, in_channels=3, epochs=1)
    o8, _ = train_evaluator(small.object_labeled(), small.object_labeled(), num_classes=3, in_channels=3, epochs=1)
    out = canvas_metrics(tiny_text, style_clf=s8, object_clf=o8, styles=small.styles, objects=small.objects,
                         target="ocean", n_per_prompt=2, steps=2, real=small)
    assert out["n_generations"] == 18 and all(0 <= out[k] <= 100 for k in ("ua", "ira", "cra"))
    assert out["fid_evaluator"] >= 0
    prompts, sids, oids = canvas_prompt_grid(small.styles, small.objects, 2)
    assert prompts[0] == "a circle in crimson style" and sids.tolist()[:6] == [0] * 6


def test_metrics_generate_with_the_methods_sampler():
    """A one-step generator (SFD's log: one_step, t_init) is evaluated with its own sampler; other
    methods with guided DDIM (sampler None)."""
    from unlearnx.diffusion import tiny_class_model
    from unlearnx.eval.diffusion import class_metrics
    from unlearnx.experiments.diffusion import method_sampler

    assert method_sampler({"log": {"forget_loss": [1.0]}}) is None and method_sampler({}) is None
    one = method_sampler({"log": {"one_step": True, "t_init": 7}})
    assert one.keywords == {"t_init": 7}
    torch.manual_seed(0)
    m = tiny_class_model(2, image_size=8, block_out_channels=(8, 16))
    calls = []

    def sampler(model, conditions, *, seed):
        calls.append((list(conditions), seed))
        return torch.stack([torch.full((1, 8, 8), float(c)) for c in conditions])

    class ByBrightness(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))  # evaluators are real modules with weights

        def forward(self, x):
            b = x.mean((1, 2, 3))
            return self.scale * torch.stack([-b, b], 1)

    out = class_metrics(m, classifier=ByBrightness(), forget_classes=[0], n_per_class=3, seed=5, sampler=sampler)
    assert calls == [([0, 0, 0, 1, 1, 1], 5)]
    assert out["ua"] == 0.0 and out["retain_acc"] == 100.0  # the sampler's images, classified
    assert one(m, [0, 1], seed=0).shape == (2, 1, 8, 8)
