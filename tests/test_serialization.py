"""tinynorm.save / tinynorm.load: data only, never code; one clear error for any bad file."""

import io
import json
import math
import os
import pickle
import zipfile

import numpy as np
import pytest

import tinynorm as tn
from tinynorm import nn


def checkpoint() -> dict:
    tn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 2))
    opt = tn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F = tn.nn.functional
    F.cross_entropy(model(tn.randn(2, 1, 4, 4)), tn.tensor(np.array([0, 1]))).backward()
    opt.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "log": [{"loss": 0.5, "best": math.inf}],
        "shape": (2, 3),
        "labels": np.arange(5, dtype=np.uint8),
        "only": {"$tensor": "not a tag"},
        "flags": {True: None, 2: "two"},
    }


def assert_same(a, b) -> None:
    """Equal values and types (an OrderedDict comes back a dict), arrays compared exactly."""
    kinds = (tn.Tensor, dict)
    assert type(a) is type(b) or any(isinstance(a, k) and isinstance(b, k) for k in kinds)
    if isinstance(a, (tn.Tensor, np.ndarray)):
        a, b = (x.numpy() if isinstance(x, tn.Tensor) else x for x in (a, b))
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b or (a != a and b != b)  # NaN equals NaN here


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    obj = checkpoint()
    tn.save(obj, path)
    return obj, path


def test_round_trip_keeps_every_value_and_type(saved):
    obj, path = saved
    assert_same(obj, tn.load(path))
    loaded = tn.load(path)
    assert isinstance(loaded["model"]["0.weight"], tn.Tensor)
    assert isinstance(loaded["labels"], np.ndarray)
    assert loaded["shape"] == (2, 3) and loaded["optimizer"]["state"].keys() == {0, 1, 2, 3, 4, 5}


def test_numpy_alone_reads_a_checkpoint(saved):
    obj, path = saved
    z = np.load(path)  # allow_pickle stays False
    meta = json.loads(z["tinynorm.json"])
    assert meta["format"] == "tinynorm" and meta["version"] == 1
    assert meta["object"]["epoch"] == 3
    np.testing.assert_array_equal(z["model/0.weight"], obj["model"]["0.weight"].numpy())
    momentum = obj["optimizer"]["state"][0]["momentum_buffer"]
    np.testing.assert_array_equal(z["optimizer/state/0/momentum_buffer"], momentum)


@pytest.mark.parametrize(
    "bad",
    [{"f": print}, {"x": np.array([1, None], dtype=object)}, [{1, 2}], {(1, 2): 3}, {"s": b"x"}],
)
def test_what_would_need_pickle_is_a_type_error_and_writes_nothing(tmp_path, bad):
    with pytest.raises(TypeError, match="cannot save"):
        tn.save(bad, tmp_path / "x.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_keeps_the_previous_file(tmp_path, saved):
    path = tmp_path / "keep.ckpt"
    tn.save({"a": 1}, path)
    with pytest.raises(TypeError):
        tn.save({"a": object()}, path)
    assert tn.load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["keep.ckpt"]


class Exploit:
    """Unpickling this creates the marker file: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "evil.ckpt"
    crafted.write_bytes(pickle.dumps({"model": {}, "x": Exploit(marker)}))
    with pytest.raises(ValueError, match=r"evil\.ckpt"):
        tn.load(crafted)
    # the same payload inside a well-formed archive, as a pickled object array
    payload = io.BytesIO()
    np.save(payload, np.array([Exploit(marker)], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(crafted, "w") as z:
        z.writestr("tinynorm.json", json.dumps({"format": "tinynorm", "version": 1,
                                                "object": {"$ndarray": "x"}}))  # fmt: skip
        z.writestr("x.npy", payload.getvalue())
    with pytest.raises(ValueError, match="dtype object"):
        tn.load(crafted)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, world\n", b"PK\x03\x04" + bytes(40), b"\x80\x04K\x01."],
    ids=["empty", "text", "zip-header", "pickle-int"],
)
def test_a_foreign_file_is_one_value_error(tmp_path, content):
    path = tmp_path / "foreign.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"foreign\.ckpt: not a readable tinynorm checkpoint"):
        tn.load(path)


def test_an_npz_of_someone_else_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.ones(3))
    with pytest.raises(ValueError, match=r"other\.npz"):
        tn.load(path)


def test_truncated_files_are_one_value_error(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    for cut in range(0, len(data), max(1, len(data) // 60)):
        (tmp_path / "cut.ckpt").write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"cut\.ckpt"):
            tn.load(tmp_path / "cut.ckpt")


def test_byte_flipped_checkpoints_load_correctly_or_raise_one_value_error(saved, tmp_path):
    """Fuzz: 400 copies with 1-4 random bytes changed; each is either refused with a clean
    ValueError or loads equal to the original (a flip in a field nobody reads)."""
    obj, path = saved
    data = np.frombuffer(path.read_bytes(), np.uint8)
    rng = np.random.default_rng(0)
    outcomes = {"refused": 0, "loaded": 0}
    for _ in range(400):
        flipped = data.copy()
        where = rng.integers(0, len(data), rng.integers(1, 5))
        flipped[where] ^= rng.integers(1, 256, len(where)).astype(np.uint8)
        fuzzed = tmp_path / "fuzz.ckpt"
        fuzzed.write_bytes(flipped.tobytes())
        try:
            loaded = tn.load(fuzzed)
        except ValueError as err:
            assert str(err).startswith(f"{fuzzed}: ")
            outcomes["refused"] += 1
        else:
            assert_same(obj, loaded)
            outcomes["loaded"] += 1
    assert outcomes["refused"] > 300, outcomes


def test_a_lying_array_header_is_refused_before_allocating(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    )
    path = tmp_path / "huge.ckpt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("tinynorm.json", json.dumps({"format": "tinynorm", "version": 1,
                                                "object": {"$tensor": "w"}}))  # fmt: skip
        z.writestr("w.npy", header.getvalue() + bytes(16))
    with pytest.raises(ValueError, match="16 bytes of data for shape"):
        tn.load(path)


def test_missing_file_and_bad_map_location(tmp_path, saved):
    with pytest.raises(FileNotFoundError):
        tn.load(tmp_path / "absent.ckpt")
    with pytest.raises(ValueError, match="unknown device"):
        tn.load(saved[1], map_location="tpu")
    assert os.path.exists(saved[1])
