"""unlearnx.data: built-in data sets (no download), Dataset views, forget/retain scenarios."""
from unlearnx.data.datasets import (
    RelabeledDataset,
    TransformedDataset,
    digits_dataset,
    inputs_of,
    labels_of,
    regression_dataset,
    synthetic_images,
)
from unlearnx.data.scenarios import (
    Scenario,
    badnets_poison,
    class_forget,
    interclass_confusion,
    random_forget,
    subclass_forget,
    worst_case_forget,
)

__all__ = [
    "digits_dataset",
    "regression_dataset",
    "synthetic_images",
    "RelabeledDataset",
    "TransformedDataset",
    "labels_of",
    "inputs_of",
    "Scenario",
    "random_forget",
    "class_forget",
    "subclass_forget",
    "badnets_poison",
    "interclass_confusion",
    "worst_case_forget",
]
