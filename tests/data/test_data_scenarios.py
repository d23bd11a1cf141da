import pytest
import torch
from torch.utils.data import Dataset

from unlearnx.data import (
    badnets_poison,
    class_forget,
    digits_dataset,
    inputs_of,
    interclass_confusion,
    labels_of,
    random_forget,
    subclass_forget,
)


@pytest.fixture(scope="module")
def digits():
    return digits_dataset(seed=0)


class ListDataset(Dataset):
    def __init__(self, base):
        self.items = [(base[i][0].clone(), int(base[i][1])) for i in range(len(base))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _partition_ok(sc):
    f, r = set(sc.forget_indices.tolist()), set(sc.retain_indices.tolist())
    assert not f & r
    assert f | r == set(range(len(sc.train)))
    assert len(sc.forget) == len(f) and len(sc.retain) == len(r)
    # forget / retain items are exactly the train items at those indices
    i = sc.forget_indices[0].item()
    assert torch.equal(sc.forget[0][0], sc.train[i][0]) and int(sc.forget[0][1]) == int(sc.train[i][1])


def test_random_forget_sizes_and_partition(digits):
    train, test = digits
    sc = random_forget(train, test, fraction=0.1, seed=0)
    assert len(sc.forget) == round(0.1 * len(train))
    _partition_ok(sc)
    assert sc.test is test
    sc_n = random_forget(train, test, n=25, seed=0)
    assert len(sc_n.forget) == 25
    assert torch.equal(sc_n.forget_indices, sc_n.forget_indices.sort().values)


def test_random_forget_deterministic(digits):
    train, test = digits
    a = random_forget(train, test, n=50, seed=7).forget_indices
    b = random_forget(train, test, n=50, seed=7).forget_indices
    c = random_forget(train, test, n=50, seed=8).forget_indices
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs, name",
    [({}, "fraction or n"), ({"fraction": 0.1, "n": 3}, "fraction or n"), ({"fraction": 1.2}, "fraction"),
     ({"fraction": 0.0}, "fraction"), ({"n": 0}, "n"), ({"n": 10**6}, "n")],
)
def test_random_forget_bad_args(digits, kwargs, name):
    with pytest.raises(ValueError, match=name):
        random_forget(*digits, **kwargs)


def test_random_forget_empty_train(digits):
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="train"):
        random_forget(empty, digits[1], n=1)


def test_class_forget_removes_class_from_test(digits):
    train, test = digits
    sc = class_forget(train, test, classes=3)
    _partition_ok(sc)
    y = labels_of(train)
    assert set(labels_of(sc.forget).tolist()) == {3}
    assert len(sc.forget) == int((y == 3).sum())
    assert 3 not in labels_of(sc.retain).tolist()
    assert 3 not in labels_of(sc.test).tolist()
    assert set(labels_of(sc.extra["forget_test"]).tolist()) == {3}
    assert len(sc.test) + len(sc.extra["forget_test"]) == len(test)
    multi = class_forget(train, test, classes=[1, 7])
    assert set(labels_of(multi.forget).tolist()) == {1, 7}


def test_class_forget_bad_class(digits):
    with pytest.raises(ValueError, match="classes"):
        class_forget(*digits, classes=11)
    with pytest.raises(ValueError, match="classes"):
        class_forget(*digits, classes=[])


def test_subclass_forget_kmeans(digits):
    train, test = digits
    sc = subclass_forget(train, test, class_=5, n_subclasses=2, seed=0)
    _partition_ok(sc)
    n_class = int((labels_of(train) == 5).sum())
    assert set(labels_of(sc.forget).tolist()) == {5}
    assert n_class / 2 <= len(sc.forget) < n_class  # subclass 0 is the larger cluster
    smaller = subclass_forget(train, test, class_=5, n_subclasses=2, subclass=1, seed=0)
    assert len(sc.forget) + len(smaller.forget) == n_class
    assert not set(sc.forget_indices.tolist()) & set(smaller.forget_indices.tolist())
    assert torch.equal(sc.forget_indices, subclass_forget(train, test, class_=5, seed=0).forget_indices)
    # the sub-class's test samples leave the test set; the rest of class 5 stays in it
    assert len(sc.test) + len(sc.extra["forget_test"]) == len(test)
    assert 5 in labels_of(sc.test).tolist()


def test_subclass_forget_fn(digits):
    train, test = digits
    bright = lambda x: float(x.mean()) > 0.3  # noqa: E731
    sc = subclass_forget(train, test, class_=0, subclass_fn=bright)
    x = inputs_of(train)
    expected = [i for i in range(len(train)) if int(train[i][1]) == 0 and float(x[i].mean()) > 0.3]
    assert sc.forget_indices.tolist() == expected
    with pytest.raises(ValueError, match="class_"):
        subclass_forget(train, test, class_=42)
    with pytest.raises(ValueError, match="subclass"):
        subclass_forget(train, test, class_=0, subclass=2)


@pytest.mark.parametrize("identified", [0.1, 0.5, 1.0])
def test_badnets_poison(digits, identified):
    train, test = digits
    sc = badnets_poison(train, test, poison_fraction=0.1, target_class=0, identified_fraction=identified, seed=0)
    _partition_ok(sc)
    poison = sc.meta["poison_indices"]
    assert len(poison) == round(0.1 * len(train))
    max_val = float(train.tensors[0].max())
    y_orig = labels_of(train)
    assert bool((y_orig[poison] != 0).all())  # drawn outside the target class
    for i in poison[:20].tolist():
        x, y = sc.train[i]
        assert int(y) == 0
        assert bool((x[..., -3:, -3:] == max_val).all())
        # the rest of the image is unchanged
        mask = torch.ones_like(x, dtype=torch.bool)
        mask[..., -3:, -3:] = False
        assert torch.equal(x[mask], train[i][0][mask])
    clean = [i for i in range(len(train)) if i not in set(poison.tolist())][:20]
    for i in clean:
        assert torch.equal(sc.train[i][0], train[i][0]) and int(sc.train[i][1]) == int(train[i][1])
    # the forget set is the identified fraction of the poison; unidentified poison stays in retain
    assert len(sc.forget) == max(1, round(identified * len(poison)))
    assert set(sc.forget_indices.tolist()) <= set(poison.tolist())
    assert set(labels_of(sc.forget).tolist()) == {0}
    # triggered test: no target-class sample, clean labels, trigger present
    trig = sc.extra["triggered_test"]
    yt = labels_of(test)
    assert len(trig) == int((yt != 0).sum())
    assert 0 not in labels_of(trig).tolist()
    assert bool((trig[0][0][..., -3:, -3:] == max_val).all())
    assert sc.extra["clean_test"] is test


def test_badnets_deterministic_and_bad_args(digits):
    train, test = digits
    a = badnets_poison(train, test, identified_fraction=0.3, seed=1)
    b = badnets_poison(train, test, identified_fraction=0.3, seed=1)
    assert torch.equal(a.meta["poison_indices"], b.meta["poison_indices"])
    assert torch.equal(a.forget_indices, b.forget_indices)
    bad = (({"poison_fraction": 1.5}, "poison_fraction"), ({"identified_fraction": 0.0}, "identified_fraction"),
           ({"target_class": 10}, "target_class"), ({"patch": 9}, "patch"))
    for kwargs, name in bad:
        with pytest.raises(ValueError, match=name):
            badnets_poison(train, test, **kwargs)


def test_interclass_confusion(digits):
    train, test = digits
    sc = interclass_confusion(train, test, classes=(3, 8), fraction=0.5, identified_fraction=0.5, seed=0)
    _partition_ok(sc)
    y, y_new = labels_of(train), labels_of(sc.train)
    swapped = sc.meta["swapped_indices"]
    changed = (y != y_new).nonzero().squeeze(1)
    assert torch.equal(changed, swapped)
    for c, other in ((3, 8), (8, 3)):
        members = y == c
        n_sw = int((members & (y_new == other)).sum())
        assert n_sw == round(0.5 * int(members.sum()))
    assert len(sc.forget) == round(0.5 * len(swapped))
    assert set(sc.forget_indices.tolist()) <= set(swapped.tolist())
    assert set(labels_of(sc.extra["confused_test"]).tolist()) == {3, 8}
    assert not {3, 8} & set(labels_of(sc.extra["clean_test"]).tolist())
    with pytest.raises(ValueError, match="classes"):
        interclass_confusion(train, test, classes=(3, 3))
    with pytest.raises(ValueError, match="fraction"):
        interclass_confusion(train, test, fraction=1.5)


def test_scenarios_work_on_plain_dataset(digits):
    train, test = digits
    small_train = ListDataset(torch.utils.data.Subset(train, range(300)))
    small_test = ListDataset(torch.utils.data.Subset(test, range(100)))
    sc = badnets_poison(small_train, small_test, poison_fraction=0.1, identified_fraction=0.5, seed=0)
    _partition_ok(sc)
    i = sc.meta["poison_indices"][0].item()
    assert int(sc.train[i][1]) == 0 and bool((sc.train[i][0][..., -3:, -3:] == 1.0).all())
    sc = class_forget(small_train, small_test, classes=2)
    assert 2 not in labels_of(sc.test).tolist()
