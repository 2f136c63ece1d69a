"""`tinynorm.save` / `tinynorm.load`: checkpoints that hold data only, never code.

A checkpoint is a ZIP archive (uncompressed, like NumPy's `.npz`) with

- `tinynorm.json`: `{"format": "tinynorm", "version": 1, "object": TREE}`, where TREE is the
  saved object as JSON: dicts with str keys, lists, str, int, float, bool and null as
  themselves, and the rest as an object with one `$`-key:
  `{"$tensor": NAME}` / `{"$ndarray": NAME}` (an array stored as member NAME + ".npy"),
  `{"$tuple": [...]}`, `{"$dict": [[key, value], ...]}` (a dict with a non-str key, or whose
  only key starts with "$"), `{"$float": "nan" | "inf" | "-inf"}`;
- one `.npy` member per array (NumPy's format, written with `allow_pickle=False`), named by
  where it sits in the object: `model/0.weight.npy`, `optimizer/state/0/momentum_buffer.npy`.

So NumPy alone reads one: `z = np.load(path); z["model/0.weight"]; json.loads(z["tinynorm.json"])`.
Loading parses JSON and raw numeric arrays and nothing else: no pickle, no imports, no code.
Any damaged, truncated or foreign file is a single `ValueError` that names the file.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
import zlib
from collections.abc import Callable
from os import PathLike
from typing import Any

import numpy as np

from . import backend
from .files import atomic_write
from .tensor import Tensor

META = "tinynorm.json"
FORMAT, VERSION = "tinynorm", 1
ARRAY_KINDS = "biufc"  # bool, signed, unsigned, float, complex: no objects, strings or records
NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
TAGS = {"$tensor": str, "$ndarray": str, "$tuple": list, "$dict": list, "$float": str}  # payloads

# what a damaged archive can raise from zipfile, zlib, struct, json and NumPy's header parser
# (the file itself is opened outside, so a missing or unreadable path stays an OSError)
_DAMAGE = (
    zipfile.BadZipFile,
    OSError,  # a seek to a position that a damaged header computed
    zlib.error,
    struct.error,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    UnicodeDecodeError,
    NotImplementedError,
    RuntimeError,
    MemoryError,
    RecursionError,
    SyntaxError,
)


def save(obj: Any, path: str | PathLike[str]) -> None:
    """Write `obj` to `path` atomically: nested dicts / lists / tuples of Tensors, NumPy arrays
    of numbers or bools, str, int, float, bool and None. Anything else (an object that would
    need pickle to come back) is a TypeError before any file is touched."""
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(obj, "", arrays)
    meta = json.dumps({"format": FORMAT, "version": VERSION, "object": tree}, allow_nan=False)
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(META, meta)
        for name, array in arrays.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def load(path: str | PathLike[str], map_location: str | None = None) -> Any:
    """Read an object written by `save`. Tensors come back on the CPU, or on `map_location`
    ("cpu" or "cuda"); arrays saved as NumPy arrays stay NumPy arrays. A file that is not a
    sound tinynorm checkpoint raises ValueError naming it; a missing file, FileNotFoundError."""
    device = None if map_location is None else backend.check_device(map_location)
    with open(path, "rb") as f:
        try:
            with zipfile.ZipFile(f) as archive:
                meta = json.loads(archive.read(META).decode("utf-8"))
                if not (isinstance(meta, dict) and meta.get("format") == FORMAT):
                    raise ValueError(f"{META} does not describe a tinynorm checkpoint")
                if meta.get("version") != VERSION:
                    raise ValueError(f"format version {meta.get('version')!r} (this reads 1)")
                return _decode(meta.get("object"), lambda name: _read_npy(archive, name), device)
        except _DAMAGE as err:
            reason = err.args[0] if isinstance(err, KeyError) and err.args else err
            raise ValueError(f"{path}: not a readable tinynorm checkpoint: {reason}") from None


def _encode(obj: Any, where: str, arrays: dict[str, np.ndarray]) -> Any:
    """`obj` as a JSON tree; arrays go into `arrays` under a name made from `where`."""
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"$float": str(obj)}
    if isinstance(obj, (np.bool_, np.integer, np.floating)):
        return _encode(obj.item(), where, arrays)
    if isinstance(obj, (Tensor, np.ndarray)) or backend.is_cupy(obj):
        tag = "$tensor" if isinstance(obj, Tensor) else "$ndarray"
        array = np.asarray(backend.to_device(obj.data if tag == "$tensor" else obj, "cpu"))
        if array.dtype.kind not in ARRAY_KINDS:
            raise TypeError(f"cannot save {_what(where)}: arrays of dtype {array.dtype}")
        name = where.strip("/") or "array"
        while name in arrays:
            name += "_"
        arrays[name] = array
        return {tag: name}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{where}/{i}", arrays) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else {"$tuple": items}
    if isinstance(obj, dict):
        for key in obj:
            if not (key is None or isinstance(key, (str, bool, int, float))):
                raise TypeError(f"cannot save {_what(where)}: a {type(key).__name__} key")
        values = {key: _encode(v, f"{where}/{key}", arrays) for key, v in obj.items()}
        plain = all(isinstance(k, str) for k in obj) and not (
            len(obj) == 1 and next(iter(obj)).startswith("$")
        )
        return values if plain else {"$dict": [[_encode(k, "", {}), v] for k, v in values.items()]}
    raise TypeError(
        f"cannot save {_what(where)}: {type(obj).__name__} is not one of Tensor, "
        "ndarray, dict, list, tuple, str, int, float, bool, None (saving it would need pickle)"
    )


def _what(where: str) -> str:
    return f"'{where.strip('/')}'" if where.strip("/") else "the object"


def _decode(tree: Any, read: Callable[[str], np.ndarray], device: str | None) -> Any:
    """The object that `_encode` turned into `tree`, reading arrays with `read(name)`."""
    if tree is None or isinstance(tree, (str, bool, int, float)):
        return tree
    if isinstance(tree, list):
        return [_decode(v, read, device) for v in tree]
    if not isinstance(tree, dict):
        raise ValueError(f"unexpected JSON value {tree!r}")
    if len(tree) != 1 or not next(iter(tree)).startswith("$"):
        return {k: _decode(v, read, device) for k, v in tree.items()}
    ((tag, value),) = tree.items()
    if not isinstance(value, TAGS.get(tag, ())):
        raise ValueError(f"malformed entry {tag!r}")
    if tag == "$tensor":
        t = Tensor(read(value))
        return t if device is None else Tensor(backend.to_device(t.data, device))
    if tag == "$ndarray":
        return read(value)
    if tag == "$tuple":
        return tuple(_decode(v, read, device) for v in value)
    if tag == "$float":
        return NONFINITE[value]
    pairs = [_decode(pair, read, device) for pair in value]
    if not all(isinstance(pair, list) and len(pair) == 2 for pair in pairs):
        raise ValueError("malformed '$dict' entry")
    return dict(pairs)  # an unhashable key is a TypeError, reported as damage


def _read_npy(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """Member `name`.npy as an array, checked before anything is allocated: numbers only
    (a pickled object array is refused), and exactly as many bytes as its header promises."""
    data = archive.read(name + ".npy")  # whole, so the CRC-32 is checked
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"{name}: unsupported .npy version {version}")
    read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
    shape, fortran_order, dtype = read_header(f)
    if dtype.kind not in ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"{name}: arrays of dtype {dtype} are not loaded")
    count = math.prod(shape)
    if count * dtype.itemsize != len(data) - f.tell():
        raise ValueError(f"{name}: {len(data) - f.tell()} bytes of data for shape {shape}")
    array = np.frombuffer(data, dtype, count, offset=f.tell())
    return array.reshape(shape, order="F" if fortran_order else "C").copy()
