"""Datasets: kinds, loaders, validation, splits and built-in sets.

>>> ds = load_dataset("builtin:cities")          # LabeledDataset, 1,500 rows
>>> train, val, test = split_dataset(ds, seed=0)  # stratified, groups kept together
"""

from __future__ import annotations

from reprlab.data.builtins import BUILTINS, list_builtins, load_builtin
from reprlab.data.kinds import ContrastPairs, LabeledDataset, PreferenceTriples
from reprlab.data.loaders import Dataset, encode_labels, load_dataset
from reprlab.data.split import kfold_indices, split_dataset, stratified_split

__all__ = [
    "BUILTINS",
    "ContrastPairs",
    "Dataset",
    "LabeledDataset",
    "PreferenceTriples",
    "encode_labels",
    "kfold_indices",
    "list_builtins",
    "load_builtin",
    "load_dataset",
    "split_dataset",
    "stratified_split",
]
