"""Data: the IDX reader, MNIST and Fashion-MNIST, the DataLoader, its batch samplers and
DistributedSampler."""

from .datasets import (
    MNIST,
    DataNotFoundError,
    FashionMNIST,
    IDXImageDataset,
    Normalize,
    Source,
    default_cache_dir,
)
from .distributed import DistributedSampler
from .download import ChecksumError, DownloadError, download
from .idx import IDXError, read_idx
from .loader import DataLoader
from .samplers import ClassBatchSampler, RandomBatchSampler, SequentialBatchSampler

__all__ = [
    "MNIST",
    "ChecksumError",
    "ClassBatchSampler",
    "DataLoader",
    "DataNotFoundError",
    "DistributedSampler",
    "DownloadError",
    "FashionMNIST",
    "IDXError",
    "IDXImageDataset",
    "Normalize",
    "RandomBatchSampler",
    "SequentialBatchSampler",
    "Source",
    "default_cache_dir",
    "download",
    "read_idx",
]
