"""Datasets behind one interface: ``Sample`` / ``PartDataset`` (see ``base``), loaded by
``load_dataset(kind, **paths)`` or by each loader directly."""

from part_point_ros.data.base import PartDataset, Sample
from part_point_ros.data.errors import DataError
from part_point_ros.data.registry import DATASET_KINDS, load_dataset

__all__ = ["DATASET_KINDS", "DataError", "PartDataset", "Sample", "load_dataset"]
