"""The data package: the IDX reader, the bundled mnist-lite, the DataLoader and its samplers."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest

import tinynorm as tn
from tinynorm.data import (
    MNIST,
    ClassBatchSampler,
    DataLoader,
    IDXError,
    Normalize,
    RandomBatchSampler,
    SequentialBatchSampler,
    read_idx,
)

CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """`array` in the IDX format: magic, big-endian sizes, big-endian data."""
    magic = bytes([0, 0, CODES[array.dtype.str[1:]], array.ndim])
    sizes = np.array(array.shape, dtype=">u4").tobytes()
    return magic + sizes + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, payload: bytes, compress: bool = False):
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


# ---- the IDX reader ---------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize(
    "dtype, shape",
    [("u1", (7, 5, 3)), ("u1", (11,)), ("i1", (4, 3)), ("i2", (6,)), ("i4", (2, 3, 4)),
     ("f4", (3, 2, 2)), ("f8", (9,))],
)  # fmt: skip
def test_read_idx_round_trip(tmp_path, rng, dtype, shape, compress):
    array = (rng.standard_normal(shape) * 50).astype(dtype)
    path = write(tmp_path / "data.idx", idx_bytes(array), compress)
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    assert got.shape == shape
    np.testing.assert_array_equal(got, array)
    got[...] = 0  # an ordinary, writable array


def test_gzip_is_recognized_by_content_not_name(tmp_path):
    array = np.arange(10, dtype=np.uint8)
    gz_without_suffix = write(tmp_path / "labels", idx_bytes(array), compress=True)
    raw_with_suffix = write(tmp_path / "labels.gz", idx_bytes(array), compress=False)
    np.testing.assert_array_equal(read_idx(gz_without_suffix), array)
    np.testing.assert_array_equal(read_idx(raw_with_suffix), array)


GOOD = idx_bytes(np.zeros((10, 28, 28), np.uint8))  # 16-byte header + 7840 bytes


@pytest.mark.parametrize(
    "payload, message",
    [
        (GOOD[:-1234], "truncated: expected 7840 bytes of data for shape (10, 28, 28), found 6606"),
        (GOOD + b"abc", "3 trailing bytes: expected 7840 bytes of data"),
        (b"\x12\x34\x56\x78" + GOOD[4:], "wrong magic 0x12345678, not an IDX file"),
        (b"\x00\x00\x0a\x03" + GOOD[4:], "unknown IDX type code 0x0A"),
        (b"\x00\x00\x08\x00", "the header declares 0 dimensions"),
        (GOOD[:10], "truncated header: 3 dimensions need 16 bytes, found 10"),
        (b"\x00\x00", "only 2 bytes, too short for an IDX header"),
    ],
    ids=["truncated", "trailing", "magic", "type-code", "no-dims", "short-header", "tiny"],
)
@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_read_idx_rejects_bad_files(tmp_path, payload, message, compress):
    path = write(tmp_path / "train-images-idx3-ubyte.gz", payload, compress)
    with pytest.raises(IDXError, match=re.escape(f"{path}: {message}")):
        read_idx(path)


def test_read_idx_rejects_corrupt_gzip(tmp_path):
    stream = bytearray(gzip.compress(GOOD))
    stream[20:30] = b"\xff" * 10  # damage the deflate data
    corrupt = write(tmp_path / "corrupt.gz", bytes(stream))
    cut = write(tmp_path / "cut.gz", bytes(stream[: len(stream) // 2]))
    for path in (corrupt, cut):
        with pytest.raises(IDXError, match=re.escape(f"{path}: not a valid gzip file")):
            read_idx(path)


# ---- MNIST: the bundled mnist-lite and the dataset checks -------------------------------------
@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Keyword arguments for MNIST that keep it off the network and out of the real cache."""
    monkeypatch.delenv("TINYNORM_DATA", raising=False)
    monkeypatch.delenv("TINYNORM_OFFLINE", raising=False)
    return {"download": False, "cache_dir": tmp_path / "cache"}


def test_bundled_mnist_lite(offline, capsys):
    train, test = MNIST(train=True, **offline), MNIST(train=False, **offline)
    assert train.source.kind == test.source.kind == "bundled"
    assert train.images.shape == test.images.shape == (10_000, 28, 28)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    # the class counts listed in mnist_lite/PROVENANCE.md
    expected = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    assert np.bincount(train.labels).tolist() == expected
    assert len(test) == 10_000 and set(np.unique(test.labels)) == set(range(10))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("data: MNIST train (10,000 images) from ")
    assert "(bundled mnist-lite: 10,000 training digits; offline (download=False" in lines[0]
    assert "bundled mnist-lite: the official 10,000 test images" in lines[1]


def test_normalization(offline):
    data = MNIST(**offline, verbose=False)
    x = data.normalized()
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == np.float32
    assert abs(x.mean()) < 0.02 and abs(x.std() - 1) < 0.02  # mean 0.1307, std 0.3081
    images, labels = data[np.array([3, 1])]
    np.testing.assert_array_equal(images, x[[3, 1]])
    np.testing.assert_array_equal(labels, data.labels[[3, 1]])
    raw, _ = MNIST(**offline, transform=None, verbose=False)[0]
    assert raw.dtype == np.uint8 and raw.shape == (28, 28)
    np.testing.assert_allclose(Normalize(0.5, 0.5)(np.array([[0, 255]], np.uint8)), [[[-1, 1]]])


def test_raw_files_in_a_named_directory(offline, tmp_path, rng):
    """gunzipped files (names without .gz) are found too."""
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(images))
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.arange(5, dtype=np.uint8)))
    data = MNIST(root=tmp_path, **offline)
    assert data.source.kind == "root"
    np.testing.assert_array_equal(data.images, images)


def test_count_and_shape_mismatch_are_errors(offline, tmp_path):
    write(tmp_path / "t10k-images-idx3-ubyte.gz", idx_bytes(np.zeros((5, 28, 28), np.uint8)))
    write(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(IDXError, match=r"holds 5 images but .*t10k-labels.* holds 4 labels"):
        MNIST(root=tmp_path, train=False, **offline)
    write(tmp_path / "t10k-images-idx3-ubyte.gz", idx_bytes(np.zeros((4, 784), np.uint8)))
    with pytest.raises(IDXError, match=re.escape("shape (N, 28, 28), found uint8 (4, 784)")):
        MNIST(root=tmp_path, train=False, **offline)


# ---- DataLoader -------------------------------------------------------------------------------
def epochs(loader: DataLoader, count: int = 2) -> list[list[np.ndarray]]:
    """The labels of every batch, for `count` epochs (the labels here are the indices)."""
    return [[y.numpy() for _, y in loader] for _ in range(count)]


def pair(n: int = 10):
    return np.arange(n * 2, dtype=np.float64).reshape(n, 2), np.arange(n)


def test_loader_batches_are_tensors():
    x, y = next(iter(DataLoader(pair(), batch_size=4)))
    assert isinstance(x, tn.Tensor) and isinstance(y, tn.Tensor)
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (4, 2)
    np.testing.assert_array_equal(x.numpy(), [[0, 1], [2, 3], [4, 5], [6, 7]])


@pytest.mark.parametrize("shuffle", [False, True])
def test_last_partial_batch_and_drop_last(shuffle):
    loader = DataLoader(pair(10), batch_size=4, shuffle=shuffle, seed=0)
    assert len(loader) == 3
    batches = epochs(loader, 1)[0]
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    dropped = DataLoader(pair(10), batch_size=4, shuffle=shuffle, seed=0, drop_last=True)
    assert len(dropped) == 2 and [len(b) for b in epochs(dropped, 1)[0]] == [4, 4]


def test_shuffle_is_deterministic_per_seed():
    first = epochs(DataLoader(pair(50), batch_size=8, shuffle=True, seed=7), 3)
    again = epochs(DataLoader(pair(50), batch_size=8, shuffle=True, seed=7), 3)
    other = epochs(DataLoader(pair(50), batch_size=8, shuffle=True, seed=8), 3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
    assert not np.array_equal(np.concatenate(first[0]), np.concatenate(first[1]))  # reshuffled
    assert not np.array_equal(np.concatenate(first[0]), np.concatenate(other[0]))
    tn.manual_seed(3)  # seed=None follows tinynorm's global seed
    a = epochs(DataLoader(pair(50), batch_size=8, shuffle=True))
    tn.manual_seed(3)
    b = epochs(DataLoader(pair(50), batch_size=8, shuffle=True))
    np.testing.assert_array_equal(np.concatenate(a[1]), np.concatenate(b[1]))


def test_loader_takes_a_dataset_a_sampler_or_a_batch_sampler():
    class Squares:
        def __len__(self):
            return 6

        def __getitem__(self, index):
            return index**2, index

    assert [y.tolist() for y in epochs(DataLoader(Squares(), batch_size=4), 1)[0]] == [
        [0, 1, 2, 3],
        [4, 5],
    ]
    by_sampler = DataLoader(pair(), batch_size=2, sampler=[9, 3, 1])
    assert len(by_sampler) == 2
    assert [b.tolist() for b in epochs(by_sampler, 1)[0]] == [[9, 3], [1]]
    by_batches = DataLoader(pair(), batch_sampler=[np.array([2, 2]), np.array([5])])
    assert [b.tolist() for b in epochs(by_batches, 1)[0]] == [[2, 2], [5]]


def test_loader_argument_errors():
    with pytest.raises(ValueError, match="10 inputs but 9 labels"):
        DataLoader((np.zeros((10, 2)), np.zeros(9)))
    with pytest.raises(ValueError, match="batch_sampler chooses the batches itself"):
        DataLoader(pair(), batch_size=4, batch_sampler=[np.arange(3)])
    with pytest.raises(ValueError, match="leave shuffle=False"):
        DataLoader(pair(), shuffle=True, sampler=[0, 1])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        DataLoader(pair(), batch_size=0)


# ---- samplers ---------------------------------------------------------------------------------
def test_sequential_and_random_batch_samplers():
    assert [b.tolist() for b in SequentialBatchSampler(5, 2)] == [[0, 1], [2, 3], [4]]
    sampler = RandomBatchSampler(5, 2, drop_last=True, seed=0)
    assert len(sampler) == 2 and [len(b) for b in sampler] == [2, 2]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_class_batch_sampler(rng, k):
    labels = rng.choice(10, size=1000, p=np.linspace(1, 3, 10) / 20)  # unbalanced classes
    sampler = ClassBatchSampler(labels, batch_size=32, classes_per_batch=k, seed=0)
    assert len(sampler) == 32  # ceil(1000 / 32)
    batches = list(sampler)
    assert [len(b) for b in batches] == [32] * 31 + [1000 - 31 * 32]
    for batch in batches:
        assert batch.min() >= 0 and batch.max() < 1000
        counts = np.bincount(labels[batch], minlength=10)
        assert np.count_nonzero(counts) <= k
        assert counts.max() - counts[counts > 0].min() <= 1  # shares differ by at most one
    assert len(np.unique(np.concatenate(batches))) > 900  # mostly without replacement
    again = ClassBatchSampler(labels, batch_size=32, classes_per_batch=k, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    assert not np.array_equal(np.concatenate(batches), np.concatenate(list(sampler)))  # epoch 2


def test_class_batch_sampler_in_a_loader(rng):
    labels = rng.integers(0, 10, 200)
    sampler = ClassBatchSampler(labels, 16, classes_per_batch=2, seed=1, drop_last=True)
    loader = DataLoader((rng.standard_normal((200, 3)), labels), batch_sampler=sampler)
    assert len(loader) == 12
    for x, y in loader:
        assert x.shape == (16, 3) and len(np.unique(y.numpy())) <= 2
    with pytest.raises(ValueError, match="classes_per_batch must be between 1 and the 10"):
        ClassBatchSampler(labels, 16, classes_per_batch=11)
